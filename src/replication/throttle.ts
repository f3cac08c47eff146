import { assert } from '../util/assert.js';
import type { Clock } from '../util/clock.js';

/**
 * A token bucket on bytes copied for moves, catch-up, repair and scrub, so
 * that background copies leave the disks and the network to client I/O
 * (docs/replication.md, "Maintenance"). take() waits on the injected clock.
 * The bucket holds at most one second's worth of bytes, so a quiet period
 * does not allow a burst.
 */
export class Throttle {
  private tokens: number;
  private last: number;
  private copied = 0;
  private readonly window: { at: number; bytes: number }[] = [];

  constructor(
    private readonly clock: Clock,
    private bytesPerSec: number,
  ) {
    assertRate(bytesPerSec);
    this.tokens = bytesPerSec;
    this.last = clock.monotonic();
  }

  setRate(bytesPerSec: number): void {
    assertRate(bytesPerSec);
    this.bytesPerSec = bytesPerSec;
  }

  async take(bytes: number): Promise<void> {
    for (;;) {
      this.refill();
      // A request larger than the bucket goes once the bucket is full.
      if (this.tokens >= Math.min(bytes, this.bytesPerSec)) {
        this.tokens -= bytes;
        this.copied += bytes;
        this.window.push({ at: this.clock.monotonic(), bytes });
        return;
      }
      const waitMs = Math.ceil(((Math.min(bytes, this.bytesPerSec) - this.tokens) / this.bytesPerSec) * 1000);
      await new Promise<void>((r) => this.clock.setTimeout(r, Math.max(1, waitMs)));
    }
  }

  /** Bytes copied in the last 10 s, per second (the REB/REP column). */
  rate(): number {
    const now = this.clock.monotonic();
    while (this.window.length > 0 && now - this.window[0]!.at > 10_000) this.window.shift();
    return this.window.reduce((s, w) => s + w.bytes, 0) / 10;
  }

  totalBytes(): number {
    return this.copied;
  }

  private refill(): void {
    const now = this.clock.monotonic();
    this.tokens = Math.min(this.bytesPerSec, this.tokens + ((now - this.last) / 1000) * this.bytesPerSec);
    this.last = now;
  }
}

/** A rate of 0 would let one copy through and hold every later one for good (config refuses it: --rebalance-rate). */
function assertRate(bytesPerSec: number): void {
  assert(Number.isFinite(bytesPerSec) && bytesPerSec > 0, 'the copy rate is a positive number of bytes per second');
}
