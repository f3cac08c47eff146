import type { Clock } from '../util/clock.js';
import { crashOnInvariantBroken, reportAssertion, type InvariantBroken } from '../util/invariant.js';

/**
 * Periodic work on the injected clock, all cancelled at once when the node
 * stops or is halted. A tick starts after the previous one finished, so a
 * slow pass never overlaps the next. A tick that fails is done (the work
 * logs its own failures), unless it broke an invariant: that goes to
 * `invariantBroken` (util/invariant.ts).
 */
export class Timers {
  private readonly handles = new Set<{ cancel(): void }>();
  private cancelled = false;
  private readonly failed: (err: unknown) => void;

  constructor(
    private readonly clock: Clock,
    invariantBroken: InvariantBroken = crashOnInvariantBroken,
  ) {
    this.failed = reportAssertion(invariantBroken, { module: 'node', where: 'periodic work' });
  }

  every(ms: number, fn: () => Promise<void>): void {
    let handle: { cancel(): void } | null = null;
    const slot = { cancel: () => handle?.cancel() };
    this.handles.add(slot);
    const tick = () => {
      void fn()
        .catch(this.failed)
        .finally(() => {
          if (!this.cancelled) handle = this.clock.setTimeout(tick, ms);
        });
    };
    handle = this.clock.setTimeout(tick, ms);
  }

  /**
   * Like every(minMs), for work that is often idle: a tick that resolves
   * true ("found nothing to do") doubles the wait before the next one, up to
   * maxMs; a tick that did something brings it back to minMs. wake() makes
   * the next tick due within minMs again (at once if `now`), for events that
   * may have made work (a ring change, a peer that answers again).
   */
  adaptive(minMs: number, maxMs: number, fn: () => Promise<boolean>): { wake(now?: boolean): void } {
    let delay = minMs;
    let handle: { cancel(): void } | null = null;
    let dueAt = 0;
    let running = false;
    let woken = false;
    const slot = { cancel: () => handle?.cancel() };
    this.handles.add(slot);
    const schedule = (ms: number) => {
      handle?.cancel();
      dueAt = this.clock.monotonic() + ms;
      handle = this.clock.setTimeout(tick, ms);
    };
    const tick = () => {
      handle = null;
      running = true;
      woken = false;
      void fn()
        .catch((err: unknown) => {
          this.failed(err);
          return false;
        })
        .then((idle) => {
          running = false;
          delay = idle && !woken ? Math.min(maxMs, delay * 2) : minMs;
          if (!this.cancelled) schedule(delay);
        });
    };
    schedule(minMs);
    return {
      wake: (now = false) => {
        if (this.cancelled) return;
        delay = minMs;
        if (running) {
          // The pass under way may have looked before the event: the next is not backed off.
          woken = true;
          return;
        }
        const want = now ? 0 : minMs;
        if (dueAt - this.clock.monotonic() > want) schedule(want);
      },
    };
  }

  cancelAll(): void {
    this.cancelled = true;
    for (const h of this.handles) h.cancel();
    this.handles.clear();
  }
}
