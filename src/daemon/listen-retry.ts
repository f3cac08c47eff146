import type { Logger } from 'pino';
import type { Clock } from '../util/clock.js';
import { sleep } from '../util/timeout.js';

/**
 * How long a listener whose address is in use is tried again at start-up,
 * and how often. Longer than a peer's failed handshake with itself takes
 * to close (below), shorter than a kernel attachment's restart budget.
 */
export const LISTEN_IN_USE_WAIT_MS = 30_000;
export const LISTEN_RETRY_MS = 500;

/** Whether a listen failed because its address is in use (the error itself, or the cause a TorusError wraps). */
export function addressInUse(err: unknown): boolean {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  return e?.code === 'EADDRINUSE' || e?.cause?.code === 'EADDRINUSE';
}

/**
 * Binds a fixed port at start-up, trying again while its address is in use.
 *
 * The default peer port (40000) lies inside Linux's ephemeral range (32768-
 * 60999). While torusd is down, any outgoing connection on the node may be
 * given that port as its local one, and a peer on the same host that dials
 * the dead one may even connect to itself there (TCP's simultaneous open):
 * the restarted torusd's listen then fails with EADDRINUSE until that
 * connection ends. Exiting at once turns a collision of a few seconds into
 * a restart that never comes, and a kernel-attached volume fails with EIO
 * when its restart budget runs out (seen once in the VM suite: the restart
 * after kill -9 exited with EADDRINUSE on 127.0.0.1:40000). So a listen that
 * finds its address in use is tried again every `everyMs` for up to
 * `waitMs`, with a warning; any other failure, or one past that wait, is
 * returned as it is.
 */
export async function listenRetrying<T>(
  what: string,
  listen: () => Promise<T>,
  opts: { clock: Clock; log: Logger; waitMs?: number; everyMs?: number },
): Promise<T> {
  const waitMs = opts.waitMs ?? LISTEN_IN_USE_WAIT_MS;
  const everyMs = opts.everyMs ?? LISTEN_RETRY_MS;
  const started = opts.clock.monotonic();
  for (let attempt = 1; ; attempt++) {
    try {
      const bound = await listen();
      if (attempt > 1) opts.log.info({ listener: what, attempts: attempt, waitedMs: Math.round(opts.clock.monotonic() - started) }, 'listening after the address was freed');
      return bound;
    } catch (err) {
      const waited = opts.clock.monotonic() - started;
      if (!addressInUse(err) || waited + everyMs > waitMs) throw err;
      if (attempt === 1) opts.log.warn({ err, listener: what, retryForMs: waitMs }, 'address in use (another socket holds the port); trying again');
      await sleep(opts.clock, everyMs);
    }
  }
}
