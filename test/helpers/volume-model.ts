/**
 * What a volume must hold, kept by the test beside the real one: every
 * acknowledged write and trim updates the model, and a read of the whole
 * volume is compared with it block by block. A mismatch says whether the
 * block read back an older acknowledged state (a stale read, guarantee 4)
 * or bytes it never held.
 */
import { createHash } from 'node:crypto';
import type { NbdTestClient } from './nbd-test-client.js';

/** A small seeded generator (xorshift32): offsets and contents replay from the seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return x;
  }
  int(n: number): number {
    return this.next() % n;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.next(), i);
    for (; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}

const hash = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

export class VolumeModel {
  readonly bytes: Buffer;
  /** Every state each block has been in (hashes), oldest first. */
  private readonly history = new Map<number, string[]>();

  constructor(
    readonly size: number,
    readonly blockSize: number,
  ) {
    this.bytes = Buffer.alloc(size);
  }

  get blocks(): number {
    return Math.ceil(this.size / this.blockSize);
  }

  private remember(offset: number, length: number): void {
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + length - 1) / this.blockSize);
    for (let i = first; i <= last; i++) {
      let h = this.history.get(i);
      if (h === undefined) this.history.set(i, (h = [hash(Buffer.alloc(this.blockSize))]));
      h.push(hash(this.block(i)));
    }
  }

  block(i: number): Buffer {
    return this.bytes.subarray(i * this.blockSize, Math.min(this.size, (i + 1) * this.blockSize));
  }

  /** Writes through the client and records it once acknowledged. */
  async write(c: NbdTestClient, offset: number, data: Buffer): Promise<void> {
    await c.write(offset, data);
    this.applyWrite(offset, data);
  }

  applyWrite(offset: number, data: Buffer): void {
    data.copy(this.bytes, offset);
    this.remember(offset, data.length);
  }

  /** TRIM through the client (fails unless the server says OK) and records zeroes. */
  async trim(c: NbdTestClient, offset: number, length: number): Promise<void> {
    const r = await c.trim(offset, length);
    if (r.error !== 0) throw new Error(`trim ${offset}+${length} failed with ${r.error}`);
    this.applyZero(offset, length);
  }

  applyZero(offset: number, length: number): void {
    this.bytes.fill(0, offset, offset + length);
    this.remember(offset, length);
  }

  /**
   * Reads the whole volume (chunk bytes at a time) and returns what differs
   * from the model, one line per block (empty when it all matches).
   */
  async diff(c: NbdTestClient, chunk = 1024 * 1024, limit = 20, inflight = 8): Promise<string[]> {
    const out: string[] = [];
    const offsets: number[] = [];
    for (let at = 0; at < this.size; at += chunk) offsets.push(at);
    // A few reads in flight at once, compared in order.
    for (let i = 0; i < offsets.length && out.length < limit; i += inflight) {
      const batch = offsets.slice(i, i + inflight);
      const got = await Promise.all(batch.map((at) => c.read(at, Math.min(chunk, this.size - at))));
      batch.forEach((at, k) => {
        const g = got[k]!;
        if (g.equals(this.bytes.subarray(at, at + g.length))) return;
        for (let b = at; b < at + g.length && out.length < limit; b += this.blockSize) {
          const idx = Math.floor(b / this.blockSize);
          const len = Math.min(this.blockSize, at + g.length - b);
          const part = g.subarray(b - at, b - at + len);
          const want = this.bytes.subarray(b, b + len);
          if (!part.equals(want)) out.push(this.describe(idx, part, want, b));
        }
      });
    }
    return out;
  }

  private describe(i: number, got: Buffer, want: Buffer, offset: number): string {
    let first = 0;
    while (first < got.length && got[first] === want[first]) first++;
    const h = hash(got);
    const states = this.history.get(i) ?? [hash(Buffer.alloc(this.blockSize))];
    const older = got.length === this.blockSize ? states.slice(0, -1).lastIndexOf(h) : -1;
    const kind = older >= 0 ? `an OLDER state (${states.length - 1 - older} change(s) back): a stale read` : 'bytes it never held';
    return `block ${i}: first difference at volume offset ${offset + first}; read back ${kind}`;
  }
}
