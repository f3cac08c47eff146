/**
 * A map whose entries stay when they go idle, until there are too many idle
 * ones; then they all go in one sweep. Deleting an entry each time it goes
 * idle and adding it back on its next use (a per-block queue, a per-block
 * lock) would rebuild a long-lived map's table every few dozen uses, and in
 * the old generation (util/recency.ts says why that matters).
 *
 * The owner says when an entry goes idle (slept) and when an idle one is in
 * use again (woke); `isIdle` tells the sweep which entries may go.
 */
export class IdleSweep<K, V> {
  readonly entries = new Map<K, V>();
  private idle = 0;

  constructor(
    private readonly isIdle: (value: V) => boolean,
    private readonly idleMax = IDLE_KEPT_MAX,
  ) {}

  /** An idle entry is in use again. */
  woke(): void {
    this.idle--;
  }

  /** An entry went idle: kept, unless that makes more than idleMax. */
  slept(): void {
    if (++this.idle <= this.idleMax) return;
    for (const [key, value] of this.entries) if (this.isIdle(value)) this.entries.delete(key);
    this.idle = 0;
  }

  /** Entries in use. */
  get busy(): number {
    return this.entries.size - this.idle;
  }
}

/** Idle entries kept at most by default. */
export const IDLE_KEPT_MAX = 4096;
