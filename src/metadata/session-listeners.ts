import { TorusError } from '../errors/torus-error.js';
import type { SessionEvent } from './metadata-service.js';

/** More listeners than this on one session is a leak, not a use. */
const LISTENERS_MAX = 64;

/** The listeners of one session (etcd or in-memory), and how they are told. */
export class SessionListeners {
  private readonly listeners = new Set<(event: SessionEvent) => void>();

  on(listener: (event: SessionEvent) => void): () => void {
    if (this.listeners.size >= LISTENERS_MAX) throw new TorusError('TORUS_ERR_ASSERTION', `more than ${LISTENERS_MAX} session listeners (a leak)`);
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Every listener hears the event; one that throws does not stop the others. */
  emit(event: SessionEvent, onListenerError: (err: unknown) => void = () => undefined): void {
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch (err) {
        onListenerError(err);
      }
    }
  }
}

export type SessionState = 'healthy' | 'degraded' | 'lost' | 'closed';

/** Calls under a lease that is lost or closed fail with TORUS_ERR_SESSION_LOST. */
export function assertSessionUsable(state: SessionState, id: string, op: string): void {
  if (state === 'lost') throw new TorusError('TORUS_ERR_SESSION_LOST', `${op}: etcd session ${id} has lost its lease`);
  if (state === 'closed') throw new TorusError('TORUS_ERR_SESSION_LOST', `${op}: etcd session ${id} is closed`);
}
