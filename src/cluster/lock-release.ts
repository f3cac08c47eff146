import type { Logger } from 'pino';
import { isTransientMetadataError, type MetadataSession } from '../metadata/metadata-service.js';
import type { Clock } from '../util/clock.js';
import { rethrowAssertion } from '../util/invariant.js';

/** A lock key on a session's lease (a writer's, a maintainer's or a reader's). */
export interface ReleasableLock {
  release(): Promise<void>;
}

export interface LockReleaseOptions {
  readonly clock: Clock;
  readonly logger: Logger;
  /** The session whose lease holds the lock. */
  readonly session: Pick<MetadataSession, 'leaseDeadline'>;
  /**
   * False once trying again is pointless: the lease holding the lock was
   * replaced (lost, and the lock with it) or the process is stopping (the
   * lease ends with it).
   */
  readonly stillWanted: () => boolean;
  /**
   * Settles when `stillWanted` may have turned false (the process began to
   * stop): a pause between attempts ends then, so a stop does not wait out
   * the pause before it is told to give up.
   */
  readonly interrupted?: Promise<void>;
  /** Pause after the first failed attempt; doubles up to 5 s. */
  readonly retryMs: number;
  /** Log fields naming the lock ({ volume }). */
  readonly fields: Record<string, unknown>;
}

/** Attempts at most, on top of the lease bound (with pauses capped at 5 s, about 5 minutes). */
export const LOCK_RELEASE_ATTEMPTS_MAX = 64;
const RETRY_MAX_MS = 5_000;

/**
 * Releases a lock key, trying again while etcd does not answer. A key left
 * behind on a lease that lives on (this process keeps its session through
 * an etcd restart) would hold the volume for as long as the process runs:
 * every other writer and maintainer refused, a ring transition that needs
 * the volume moved stuck for good. So a failed release is retried until it
 * succeeds, the lease that holds the key can no longer be alive (past its
 * deadline, as far as this process knows, which is never later than etcd's
 * own expiry), or `stillWanted` says stop. Resolves true when released.
 */
export async function releaseLock(lock: ReleasableLock, opts: LockReleaseOptions): Promise<boolean> {
  const log = opts.logger;
  let delay = opts.retryMs;
  for (let attempt = 1; ; attempt++) {
    try {
      await lock.release();
      if (attempt > 1) log.info({ ...opts.fields, attempts: attempt }, 'volume lock released after etcd answered again');
      return true;
    } catch (err) {
      rethrowAssertion(err);
      if (!isTransientMetadataError(err)) {
        log.error({ ...opts.fields, err }, 'releasing the volume lock failed; it ends with the lease');
        return false;
      }
      if (!opts.stillWanted() || opts.session.leaseDeadline() <= opts.clock.monotonic()) {
        log.warn({ ...opts.fields, err }, 'releasing the volume lock failed; the lease holding it ends (or has ended) anyway');
        return false;
      }
      if (attempt >= LOCK_RELEASE_ATTEMPTS_MAX) {
        log.error({ ...opts.fields, err, attempts: attempt }, 'releasing the volume lock failed too many times; it ends with the lease');
        return false;
      }
      if (attempt === 1) log.warn({ ...opts.fields, err, retryMs: delay }, 'releasing the volume lock failed; retrying while etcd is unreachable');
      await pause(opts, delay);
      delay = Math.min(RETRY_MAX_MS, delay * 2);
      // Given up during the pause: not one more attempt, which against an
      // etcd that does not answer costs a whole call timeout of the stop.
      if (!opts.stillWanted()) {
        log.warn({ ...opts.fields, err }, 'releasing the volume lock failed; the lease holding it ends (or has ended) anyway');
        return false;
      }
    }
  }
}

/** Waits `ms`, or less if `opts.interrupted` settles first. */
function pause(opts: LockReleaseOptions, ms: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = opts.clock.setTimeout(resolve, ms);
    opts.interrupted?.then(
      () => {
        timer.cancel();
        resolve();
      },
      () => undefined,
    );
  });
}
