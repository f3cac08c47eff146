import type { Logger } from 'pino';
import type { Clock } from '../util/clock.js';

/** One warning per remote address per window: a client retrying with a wrong secret must not flood the log. */
export const REFUSAL_LOG_WINDOW_MS = 60_000;
/** Addresses remembered at once; beyond it the oldest is forgotten (and may log again early). */
export const REFUSAL_LOG_ADDRESSES_MAX = 1024;

interface Entry {
  loggedAt: number;
  suppressed: number;
}

/**
 * Logs refused peer connections (wrong secret, another cluster, an old
 * protocol version, bytes that are not the protocol) at warn, at most once
 * per remote address per window; the refusals in between are counted and
 * reported with the next warning. Everything is also logged at debug.
 */
export class RefusalLog {
  /** Insertion order is age order: a re-logged address is moved to the end. */
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly log: Logger,
    private readonly clock: Clock,
    private readonly windowMs = REFUSAL_LOG_WINDOW_MS,
    private readonly addressesMax = REFUSAL_LOG_ADDRESSES_MAX,
  ) {}

  /** A connection from `address` (a host, without port) was refused for `err`. */
  refused(address: string, err: unknown, fields: Record<string, unknown> = {}): void {
    const now = this.clock.monotonic();
    const entry = this.entries.get(address);
    if (entry !== undefined && now - entry.loggedAt < this.windowMs) {
      entry.suppressed++;
      this.log.debug({ ...fields, err, address }, 'peer connection refused');
      return;
    }
    const suppressed = entry?.suppressed ?? 0;
    this.entries.delete(address);
    this.entries.set(address, { loggedAt: now, suppressed: 0 });
    if (this.entries.size > this.addressesMax) this.entries.delete(this.entries.keys().next().value as string);
    this.log.warn({ ...fields, err, address, suppressed, windowMs: this.windowMs }, 'peer connection refused');
  }
}
