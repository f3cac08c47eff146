import pino, { type Logger } from 'pino';
import { isTorusError, type TorusError } from '../errors/torus-error.js';

/**
 * A broken invariant (TORUS_ERR_ASSERTION, util/assert.ts) is a bug: the
 * process that hit it stops, and its supervisor restarts it. It is never
 * answered as an error (NBD EIO, a peer protocol error reply) nor retried
 * on another replica: the state that broke it is not to be trusted with
 * more requests.
 *
 * Code that catches errors on a request path or in background work routes
 * an assertion failure here instead of answering, dropping or retrying it:
 * leaf catch sites rethrow it (rethrowAssertion, unlessAssertion), the
 * edges (the NBD session, the peer server connection, the background
 * loops of src/cluster/) call the process's InvariantBroken hook.
 */

/** Exit code of a process stopped by a broken invariant: EX_SOFTWARE (sysexits.h, "internal software error"). */
export const EXIT_INVARIANT_BROKEN = 70;

/** Where the edges report a broken invariant, with log fields saying where it was hit. */
export type InvariantBroken = (err: TorusError, context: Record<string, unknown>) => void;

export function isAssertionFailure(err: unknown): err is TorusError {
  return isTorusError(err, 'TORUS_ERR_ASSERTION');
}

/** For catch sites that would drop, retry or rewrap an error: an assertion failure goes on up. */
export function rethrowAssertion(err: unknown): void {
  if (isAssertionFailure(err)) throw err;
}

/** A catch handler for best-effort work: the failure becomes `value`, unless it is an assertion failure. */
export function unlessAssertion<T>(value: T): (err: unknown) => T {
  return (err) => {
    rethrowAssertion(err);
    return value;
  };
}

/** A catch handler for work nobody awaits: the failure is dropped, unless it is an assertion failure (reported). */
export function reportAssertion(report: InvariantBroken, context: Record<string, unknown>): (err: unknown) => void {
  return (err) => {
    if (isAssertionFailure(err)) report(err, context);
  };
}

/**
 * The default of every server and node that is not given a hook (unit
 * tests that build one directly): the error is thrown again outside every
 * promise chain and catch, so it is an uncaught exception. Node stops the
 * process on it and vitest fails the run, so a forgotten wiring still
 * crashes rather than answering EIO. nextTick, not the injected clock: this
 * is no timing, only a way out of the chain the caller runs in.
 */
export const crashOnInvariantBroken: InvariantBroken = (err) => {
  process.nextTick(() => {
    throw err;
  });
};

/**
 * What torusd and torusblk nbdserve wire: one fatal log line with the
 * context fields, written out synchronously, then exit with
 * EXIT_INVARIANT_BROKEN. Nothing is flushed or unlocked on the way out, as
 * for a crash: the peers and the next holder of a volume handle that.
 */
export function exitOnInvariantBroken(logger: Logger, exit: (code: number) => void = (code) => process.exit(code)): InvariantBroken {
  return (err, context) => {
    logger.fatal({ ...context, err, exitCode: EXIT_INVARIANT_BROKEN }, 'an invariant was broken (a bug): stopping the process');
    flushLogSync(logger);
    exit(EXIT_INVARIANT_BROKEN);
  };
}

/** pino writes asynchronously by default; the fatal line must be out before the process is. */
function flushLogSync(logger: Logger): void {
  const stream = (logger as unknown as Record<symbol, { flushSync?: () => void } | undefined>)[pino.symbols.streamSym];
  try {
    stream?.flushSync?.();
  } catch {
    // Not ready or already closed: pino's own exit handler flushes what it can.
  }
}
