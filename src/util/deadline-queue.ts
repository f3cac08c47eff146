import type { Clock } from '../util/clock.js';

/** Something that must be given up on at a monotonic time of the queue's clock. */
export interface Deadlined {
  readonly deadline: number;
}

/** Dead entries kept before the queue is compacted (and at least half of it dead). */
const COMPACT_DEAD_MIN = 64;

/**
 * The deadlines of many requests on one timer (a peer client's requests,
 * a coordinator's calls to its local replica): a timer (and its closure
 * and cancel handle) per request was a large share of the per-request
 * cost, and requests made together almost always expire in
 * the order they were made, so an insertion from the back keeps the queue
 * sorted at O(1). The timer is armed for the earliest live deadline and
 * moved only when an earlier one arrives.
 *
 * Entries that finished in time are not searched for: the owner says
 * forgot() and the entry is skipped (and eventually compacted away) when
 * its turn comes, so the queue never holds more than about twice the live
 * entries.
 */
export class DeadlineQueue<T extends Deadlined> {
  private items: T[] = [];
  private head = 0;
  private dead = 0;
  private timer: { cancel(): void } | null = null;
  private armedFor = Infinity;

  constructor(
    private readonly clock: Clock,
    /** Still waiting for its answer? Entries that are not are skipped. */
    private readonly isLive: (item: T) => boolean,
    /** The deadline passed: give up on it (it is already out of the queue). */
    private readonly onExpire: (item: T) => void,
  ) {}

  get size(): number {
    return this.items.length - this.head;
  }

  add(item: T): void {
    let i = this.items.length;
    this.items.push(item);
    while (i > this.head && this.items[i - 1]!.deadline > item.deadline) {
      this.items[i] = this.items[i - 1]!;
      i--;
    }
    this.items[i] = item;
    if (item.deadline < this.armedFor) this.arm(item.deadline);
  }

  /** An entry finished before its deadline; it stays until skipped or compacted. */
  forgot(): void {
    this.dead++;
    const size = this.items.length - this.head;
    if (this.dead >= COMPACT_DEAD_MIN && this.dead * 2 > size) this.compact();
  }

  /** Drops every entry and the timer (the owner is closing). */
  clear(): void {
    this.timer?.cancel();
    this.timer = null;
    this.armedFor = Infinity;
    this.items = [];
    this.head = 0;
    this.dead = 0;
  }

  private compact(): void {
    const live: T[] = [];
    for (let i = this.head; i < this.items.length; i++) if (this.isLive(this.items[i]!)) live.push(this.items[i]!);
    this.items = live;
    this.head = 0;
    this.dead = 0;
  }

  private arm(deadline: number): void {
    this.timer?.cancel();
    this.armedFor = deadline;
    const delay = Math.max(0, Math.ceil(deadline - this.clock.monotonic()));
    this.timer = this.clock.setTimeout(this.sweep, delay);
  }

  private readonly sweep = (): void => {
    this.timer = null;
    this.armedFor = Infinity;
    const now = this.clock.monotonic();
    while (this.head < this.items.length) {
      const item = this.items[this.head]!;
      if (!this.isLive(item)) {
        this.items[this.head++] = undefined as unknown as T;
        if (this.dead > 0) this.dead--;
        continue;
      }
      if (item.deadline > now) break;
      this.items[this.head++] = undefined as unknown as T;
      this.onExpire(item);
    }
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
      this.dead = 0;
      return;
    }
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    // onExpire may have added (and armed for) an earlier one.
    const next = this.items[this.head]!.deadline;
    if (next < this.armedFor) this.arm(next);
  };
}
