import { assert } from '../util/assert.js';

/**
 * A coordinator's per-block order: client reads and writes of a block share
 * it; a copy into the block (move, catch-up, repair) takes it alone, so no
 * write is in flight while a copy is read from one replica and installed on
 * another (docs/replication.md, "Ring transitions"). Waiters are served in
 * arrival order, so a stream of writes cannot starve a copy, nor a copy the
 * writes.
 */
interface Slot {
  shared: number;
  exclusive: boolean;
  readonly waiting: { exclusive: boolean; go: () => void }[];
}

/**
 * Idle slots kept at most. A slot stays in the map after its last holder
 * lets go: deleting it and making it again on the next write would rebuild
 * the map's hash table every few dozen writes, old-generation garbage
 * (util/recency.ts says why). Past this many the idle ones go in one sweep.
 */
const IDLE_SLOTS_MAX = 4096;

const isIdle = (s: Slot): boolean => s.shared === 0 && !s.exclusive && s.waiting.length === 0;

export class BlockOrder {
  private readonly slots = new Map<number, Slot>();
  /** Slots in the map that nobody holds or waits for. */
  private idle = 0;

  /** Resolves with a release function once the block may be read or written. */
  shared(index: number): Promise<() => void> {
    const s = this.slot(index);
    if (!s.exclusive && s.waiting.length === 0) {
      s.shared++;
      return Promise.resolve(this.releaser(index, false));
    }
    return new Promise((resolve) => s.waiting.push({ exclusive: false, go: () => resolve(this.releaser(index, false)) }));
  }

  /** Resolves with a release function once nothing else holds the block. */
  exclusive(index: number): Promise<() => void> {
    const s = this.slot(index);
    if (!s.exclusive && s.shared === 0 && s.waiting.length === 0) {
      s.exclusive = true;
      return Promise.resolve(this.releaser(index, true));
    }
    return new Promise((resolve) => s.waiting.push({ exclusive: true, go: () => resolve(this.releaser(index, true)) }));
  }

  /** Blocks someone holds or waits for (for tests and status). */
  busy(): number {
    return this.slots.size - this.idle;
  }

  private slot(index: number): Slot {
    let s = this.slots.get(index);
    if (s === undefined) {
      s = { shared: 0, exclusive: false, waiting: [] };
      this.slots.set(index, s);
    } else if (isIdle(s)) {
      this.idle--; // the caller holds it or waits for it now
    }
    return s;
  }

  private releaser(index: number, exclusive: boolean): () => void {
    let done = false;
    return () => {
      assert(!done, 'a block order is released once');
      done = true;
      const s = this.slots.get(index)!;
      if (exclusive) s.exclusive = false;
      else s.shared--;
      this.wake(index, s);
    };
  }

  private wake(index: number, s: Slot): void {
    while (s.waiting.length > 0 && !s.exclusive) {
      const next = s.waiting[0]!;
      if (next.exclusive) {
        if (s.shared > 0) break;
        s.waiting.shift();
        s.exclusive = true;
        next.go();
        break;
      }
      s.waiting.shift();
      s.shared++;
      next.go();
    }
    if (isIdle(s) && ++this.idle > IDLE_SLOTS_MAX) this.sweep();
  }

  private sweep(): void {
    for (const [index, s] of this.slots) if (isIdle(s)) this.slots.delete(index);
    this.idle = 0;
  }
}
