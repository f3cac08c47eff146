import { assert } from '../util/assert.js';

/**
 * Bytes received from a socket, kept as the list of chunks they arrived in.
 * Frames are cut out of it without concatenating everything: a frame inside
 * one chunk is a zero-copy view, one spanning chunks is copied once.
 */
export class ChunkQueue {
  private chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The first n bytes, not consumed. A view when they lie in one chunk. */
  peek(n: number): Buffer {
    assert(n >= 0 && n <= this.total, 'peek within the buffered bytes');
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return Buffer.alloc(0);
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let copied = 0;
    let at = this.head;
    for (const chunk of this.chunks) {
      copied += chunk.copy(out, copied, at, Math.min(chunk.length, at + (n - copied)));
      at = 0;
      if (copied === n) break;
    }
    return out;
  }

  /** Removes and returns the first n bytes. */
  take(n: number): Buffer {
    const out = this.peek(n);
    this.skip(n);
    return out;
  }

  skip(n: number): void {
    assert(n >= 0 && n <= this.total, 'skip within the buffered bytes');
    this.total -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      const left = first.length - this.head;
      if (left > n) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.total = 0;
  }
}
