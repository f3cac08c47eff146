import { assert } from '../util/assert.js';
import { IdleSweep } from '../util/idle-sweep.js';

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

const isIdle = (s: Slot): boolean => s.shared === 0 && !s.exclusive && s.waiting.length === 0;

export class BlockOrder {
  /** A slot stays after its last holder lets go (util/idle-sweep.ts). */
  private readonly slots = new IdleSweep<number, Slot>(isIdle);

  /** Resolves with a release function once the block may be read or written. */
  shared(index: number): Promise<() => void> {
    const s = this.slot(index);
    if (!s.exclusive && s.waiting.length === 0) {
      s.shared++;
      return Promise.resolve(this.releaser(index, false));
    }
    return new Promise((resolve) => s.waiting.push({ exclusive: false, go: () => resolve(this.releaser(index, false)) }));
  }

  /** The release function now when the block may be read or written at once (as shared() would resolve), else null. */
  tryShared(index: number): (() => void) | null {
    const s = this.slot(index);
    // Held or waited for, so not idle: slot() left the sweep's count alone.
    if (s.exclusive || s.waiting.length > 0) return null;
    s.shared++;
    return this.releaser(index, false);
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
    return this.slots.busy;
  }

  private slot(index: number): Slot {
    let s = this.slots.entries.get(index);
    if (s === undefined) {
      s = { shared: 0, exclusive: false, waiting: [] };
      this.slots.entries.set(index, s);
    } else if (isIdle(s)) {
      this.slots.woke(); // the caller holds it or waits for it now
    }
    return s;
  }

  private releaser(index: number, exclusive: boolean): () => void {
    let done = false;
    return () => {
      assert(!done, 'a block order is released once');
      done = true;
      const s = this.slots.entries.get(index)!;
      if (exclusive) s.exclusive = false;
      else s.shared--;
      this.wake(s);
    };
  }

  private wake(s: Slot): void {
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
    if (isIdle(s)) this.slots.slept();
  }
}
