import { TorusError } from '../errors/torus-error.js';

/**
 * Guards an invariant. A failure is a bug, never an operating condition
 * (those are TorusErrors): the process should crash and be restarted.
 */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) {
    throw new TorusError('TORUS_ERR_ASSERTION', `assertion failed: ${message}`);
  }
}
