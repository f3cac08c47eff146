import { TorusError } from '../errors/torus-error.js';
import type { Clock } from './clock.js';

/**
 * Bounds a promise by the injected clock: rejects with TORUS_ERR_TIMEOUT
 * after `ms`. The work itself goes on (a request on the wire cannot be
 * taken back); its outcome is ignored.
 */
export function withTimeout<T>(p: Promise<T>, ms: number, clock: Clock, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = clock.setTimeout(() => {
      if (settled) return;
      settled = true;
      reject(timeoutError(what, ms));
    }, ms);
    p.then(
      (v) => {
        if (settled) return;
        settled = true;
        timer.cancel();
        resolve(v);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        timer.cancel();
        reject(err);
      },
    );
  });
}

/** The error a call that did not answer in time is given up with. */
export function timeoutError(what: string, ms: number): TorusError {
  return new TorusError('TORUS_ERR_TIMEOUT', `${what} did not answer within ${ms} ms`, { details: { timeoutMs: ms } });
}

/** A promise that resolves after `ms` on the injected clock. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms));
}
