import type { Clock } from '../util/clock.js';

/**
 * Periodic work on the injected clock, all cancelled at once when the node
 * stops or is halted. A tick starts after the previous one finished, so a
 * slow pass never overlaps the next.
 */
export class Timers {
  private readonly handles = new Set<{ cancel(): void }>();
  private cancelled = false;

  constructor(private readonly clock: Clock) {}

  every(ms: number, fn: () => Promise<void>): void {
    let handle: { cancel(): void } | null = null;
    const slot = { cancel: () => handle?.cancel() };
    this.handles.add(slot);
    const tick = () => {
      void fn()
        .catch(() => undefined)
        .finally(() => {
          if (!this.cancelled) handle = this.clock.setTimeout(tick, ms);
        });
    };
    handle = this.clock.setTimeout(tick, ms);
  }

  cancelAll(): void {
    this.cancelled = true;
    for (const h of this.handles) h.cancel();
    this.handles.clear();
  }
}
