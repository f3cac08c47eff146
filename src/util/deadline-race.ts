import type { Clock } from './clock.js';
import { DeadlineQueue } from './deadline-queue.js';
import { timeoutError } from './timeout.js';

interface Race {
  readonly deadline: number;
  readonly ms: number;
  readonly call: string;
  readonly peer: string;
  done: boolean;
  readonly reject: (err: unknown) => void;
}

/**
 * withTimeout (util/timeout.ts) for many calls at once, on one timer:
 * each call is given up on with TORUS_ERR_TIMEOUT once `ms` pass on the
 * injected clock, and the work itself goes on. A coordinator bounds every
 * change it sends its local replica this way; a timer, its closures and
 * the error's text built per call were a good part of what each write
 * allocated. Its timer stays armed for the earliest deadline queued,
 * answered or not, so it runs at most once per `ms` after the last call.
 */
export class DeadlineRace {
  private readonly clock: Clock;
  private readonly queue: DeadlineQueue<Race>;

  constructor(clock: Clock) {
    this.clock = clock;
    this.queue = new DeadlineQueue<Race>(
      clock,
      (r) => !r.done,
      (r) => {
        r.done = true;
        r.reject(timeoutError(`${r.call} on peer ${r.peer}`, r.ms));
      },
    );
  }

  /** `p`, or TORUS_ERR_TIMEOUT after `ms`; the call and the peer it went to name it in the error (built only then). */
  run<T>(p: Promise<T>, ms: number, call: string, peer: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const race: Race = { deadline: this.clock.monotonic() + ms, ms, call, peer, done: false, reject };
      this.queue.add(race);
      p.then(
        (v) => {
          if (race.done) return;
          race.done = true;
          this.queue.forgot();
          resolve(v);
        },
        (err: unknown) => {
          if (race.done) return;
          race.done = true;
          this.queue.forgot();
          reject(err);
        },
      );
    });
  }
}
