/**
 * One CSI operation per volume at a time. The specification lets a plugin
 * answer ABORTED ("operation pending for volume") to a second call on a
 * volume while the first runs, and the CO retries it later; that is what
 * `exclusive` does. `serial` instead queues callers behind each other, for
 * CreateVolume, whose concurrent calls with one name must all end with the
 * one volume.
 */
import { TorusError } from '../../errors/torus-error.js';

export class InFlight {
  private readonly busy = new Set<string>();
  private readonly queues = new Map<string, Promise<unknown>>();

  async exclusive<T>(key: string, what: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy.has(key)) throw new TorusError('TORUS_ERR_CSI_BUSY', `an operation on ${what} is in progress; retry when it has finished`);
    this.busy.add(key);
    try {
      return await fn();
    } finally {
      this.busy.delete(key);
    }
  }

  serial<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.queues.get(key) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(key, tail);
    void tail.then(() => {
      if (this.queues.get(key) === tail) this.queues.delete(key);
    });
    return run;
  }
}
