import { assert } from '../util/assert.js';
import type { Clock } from '../util/clock.js';

/**
 * Lock calls of one session that got no answer. Such a call may have taken
 * effect in etcd all the same (the request arrived, the reply was lost),
 * leaving a lock under the session's lease that no VolumeLock in this
 * process holds: nothing would ever use or let go of it, and it would keep
 * every other process out of the volume for as long as the lease lives,
 * which for a running torusd is until it stops (simulation seed 3757: a
 * volume no peer could open after an etcd outage that lost replies).
 *
 * The session remembers what each such call wrote (the key and the exact
 * value) and lets go of the key once it finds etcd holding exactly that
 * under its lease. The value names one attempt (holder, token, time), so a
 * lock taken since, even under the same key, is never touched. Letting go
 * is a plain delete, as for a lock never used: the next holder then treats
 * its predecessor as not let go cleanly, which costs it stale records for
 * peers that miss its token, never a change.
 */
export const UNANSWERED_LOCKS_MAX = 64;

/**
 * How long an attempt that etcd does not hold is still looked for: a
 * request can be applied after its caller stopped waiting for it.
 */
export const UNANSWERED_LOOK_MS = 60_000;

export interface UnansweredLock {
  readonly key: string;
  readonly value: string;
}

export class UnansweredLocks {
  private readonly pending = new Map<string, UnansweredLock & { readonly since: number }>();

  constructor(private readonly clock: Clock) {}

  get size(): number {
    return this.pending.size;
  }

  /** A lock call that wrote `value` at `key` got no answer. */
  add(key: string, value: string): void {
    const id = `${key}\n${value}`;
    this.pending.delete(id);
    // Oldest first out: each entry took a lost reply, so a full list means
    // a long outage, and the oldest have been looked for the longest.
    if (this.pending.size >= UNANSWERED_LOCKS_MAX) this.pending.delete(this.pending.keys().next().value!);
    this.pending.set(id, { key, value, since: this.clock.monotonic() });
    assert(this.pending.size <= UNANSWERED_LOCKS_MAX, 'unanswered lock calls are bounded');
  }

  list(): UnansweredLock[] {
    return [...this.pending.values()].map(({ key, value }) => ({ key, value }));
  }

  /**
   * After a look at etcd: `letGo` when etcd held the attempt's value under
   * the lease and it was deleted now. An attempt not found is looked for
   * again until UNANSWERED_LOOK_MS after it was made.
   */
  settle(lock: UnansweredLock, letGo: boolean): void {
    const id = `${lock.key}\n${lock.value}`;
    const entry = this.pending.get(id);
    if (entry === undefined) return;
    if (letGo || this.clock.monotonic() - entry.since >= UNANSWERED_LOOK_MS) this.pending.delete(id);
  }

  /** The lease is gone, and every key under it with it. */
  clear(): void {
    this.pending.clear();
  }
}
