import { assert } from '../util/assert.js';

/**
 * Bytes of READ and WRITE requests that all connections of one NBD server
 * hold at once: a WRITE from the moment its header is parsed (before its
 * payload is read from the socket) until it is answered, a READ until its
 * data has been handed to the kernel. A connection whose next request does
 * not fit leaves the request's payload in the socket (the kernel's buffers
 * and then TCP flow control hold the client back) until enough comes back.
 *
 * Without it the bound was per connection (inflightBytesMax each): 16
 * connections of 32 MiB writes held 1.5 GiB while a replica stalled. With
 * it, what the NBD layer holds stays at max(max, the largest request) however
 * many connections there are (README, "Memory").
 *
 * One request always fits when nothing is held, so a request larger than
 * the budget (up to payloadBytesMax) is served, alone. Waiters are served in
 * order: a large request is not starved by a stream of small ones.
 */
export class ByteBudget {
  private used = 0;
  private readonly waiters: { bytes: number; grant: () => void }[] = [];

  constructor(readonly max: number) {
    assert(max > 0, 'a byte budget is positive');
  }

  get usedBytes(): number {
    return this.used;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  private fits(bytes: number): boolean {
    return this.used === 0 || this.used + bytes <= this.max;
  }

  /** Takes `bytes` now if they fit and no one is waiting; false otherwise (nothing taken). */
  tryTake(bytes: number): boolean {
    if (this.waiters.length > 0 || !this.fits(bytes)) return false;
    this.used += bytes;
    return true;
  }

  /**
   * Queues for `bytes`; `grant` runs once they are taken (from a give()).
   * Returns a cancel function: after it, grant never runs.
   */
  wait(bytes: number, grant: () => void): () => void {
    const w = { bytes, grant };
    this.waiters.push(w);
    return () => {
      const i = this.waiters.indexOf(w);
      if (i >= 0) {
        this.waiters.splice(i, 1);
        // The head may have been what held the others back.
        if (i === 0) this.drain();
      }
    };
  }

  give(bytes: number): void {
    assert(bytes <= this.used, 'a byte budget gets back no more than was taken');
    this.used -= bytes;
    this.drain();
  }

  private drain(): void {
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.bytes)) {
      const w = this.waiters.shift()!;
      this.used += w.bytes;
      w.grant();
    }
  }
}
