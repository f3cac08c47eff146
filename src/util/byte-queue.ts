import { assert } from './assert.js';

/**
 * Bytes received but not yet parsed, kept as the chunks the socket handed
 * over (the NBD and peer protocol parsers both read from one). Taking a
 * range that lies inside one chunk is a zero-copy slice; only ranges that
 * straddle chunks are copied (once).
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  /** Offset of the first unread byte inside chunks[head]. */
  private headOffset = 0;
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The first n bytes, not consumed; a view when they lie in one chunk. */
  peek(n: number): Buffer {
    assert(n >= 0 && n <= this.total, 'peek within the queued bytes');
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[this.head]!;
    if (n <= first.length - this.headOffset) return first.subarray(this.headOffset, this.headOffset + n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let at = this.headOffset;
    for (let i = this.head; filled < n; i++) {
      const c = this.chunks[i]!;
      filled += c.copy(out, filled, at, Math.min(c.length, at + (n - filled)));
      at = 0;
    }
    return out;
  }

  /** Removes and returns exactly n bytes; the caller checks `length` first. */
  take(n: number): Buffer {
    assert(n >= 0 && n <= this.total, 'take within the queued bytes');
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[this.head]!;
    const avail = first.length - this.headOffset;
    if (n <= avail) {
      const out = first.subarray(this.headOffset, this.headOffset + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[this.head]!;
      const len = Math.min(c.length - this.headOffset, n - filled);
      c.copy(out, filled, this.headOffset, this.headOffset + len);
      filled += len;
      this.advance(len);
    }
    return out;
  }

  /**
   * Moves up to n bytes into dest at destOffset (consumed from the queue);
   * returns how many were moved. Fills a payload's final buffer without an
   * intermediate allocation.
   */
  copyTo(dest: Uint8Array, destOffset: number, n: number): number {
    assert(n >= 0 && destOffset >= 0 && destOffset + n <= dest.length, 'copy within the destination');
    let moved = 0;
    while (moved < n && this.total > 0) {
      const c = this.chunks[this.head]!;
      const len = Math.min(c.length - this.headOffset, n - moved);
      c.copy(dest, destOffset + moved, this.headOffset, this.headOffset + len);
      moved += len;
      this.advance(len);
    }
    return moved;
  }

  /**
   * Replaces every queued chunk by one copy of the unread bytes: for a
   * caller that reuses the buffers it pushed (a socket reading into one
   * buffer again and again).
   */
  detach(): void {
    if (this.total === 0) return;
    const rest = Buffer.allocUnsafe(this.total);
    this.copyTo(rest, 0, rest.length);
    this.clear();
    this.push(rest);
  }

  /** Drops up to n bytes without copying them; returns how many were dropped. */
  skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.total > 0) {
      const c = this.chunks[this.head]!;
      const len = Math.min(c.length - this.headOffset, n - dropped);
      this.advance(len);
      dropped += len;
    }
    return dropped;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.headOffset = 0;
    this.total = 0;
  }

  private advance(n: number): void {
    this.headOffset += n;
    this.total -= n;
    if (this.headOffset === this.chunks[this.head]!.length) {
      this.chunks[this.head] = undefined as unknown as Buffer; // let the chunk be collected
      this.head++;
      this.headOffset = 0;
      if (this.head === this.chunks.length) {
        this.chunks = [];
        this.head = 0;
      } else if (this.head > 64) {
        this.chunks = this.chunks.slice(this.head);
        this.head = 0;
      }
    }
  }
}
