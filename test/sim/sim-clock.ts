import type { Clock } from '../../src/util/clock.js';
import { assert } from '../../src/util/assert.js';

/**
 * Virtual time for the whole simulated cluster. Nothing here touches a real
 * timer: time moves only when the runner pops the next timer, so a run is a
 * pure function of its seed.
 *
 * Timers belong to a process (a simulated torusd, the workload client, the
 * etcd twin). That is how a crash and a SIGSTOP are modelled without the
 * code under test knowing:
 * - a dead process's timers never fire and new ones are ignored (SIGKILL:
 *   its code simply stops running);
 * - a frozen process's timers that fall due are held, in order, and run
 *   when it is thawed (SIGSTOP/SIGCONT: time went on without it);
 * - a suspended process (a VM paused by its hypervisor) is frozen and its
 *   own clocks stop too: on resume it reads the time it was suspended at
 *   plus what has passed since, and its timers fall due that much later.
 *   Only the fences the other peers keep stop what it then sends.
 */
export class SimClock {
  /** The wall clock at virtual time 0: fixed, so that ISO dates in records replay too. */
  static readonly EPOCH_MS = Date.UTC(2030, 0, 1);

  private nowMs = 0;
  private seq = 0;
  private readonly heap = new TimerHeap();

  /** Virtual milliseconds since the start of the run. */
  monotonic(): number {
    return this.nowMs;
  }

  now(): number {
    return SimClock.EPOCH_MS + this.nowMs;
  }

  /** Timers waiting (cancelled ones included until they reach the top). */
  pending(): number {
    return this.heap.size();
  }

  /** Due time of the next live timer, or null when nothing is scheduled. */
  nextAt(): number | null {
    const top = this.heap.peekLive();
    return top === undefined ? null : top.at;
  }

  /**
   * Schedules `fn` at now + ms for `owner`. Ties run in insertion order,
   * which is what makes same-instant events deterministic.
   */
  schedule(owner: SimProcess, ms: number, fn: () => void): { cancel(): void } {
    assert(Number.isFinite(ms), 'timer delay is a finite number of ms');
    const t: Timer = { at: this.nowMs + Math.max(0, ms), seq: this.seq++, fn, owner, live: true, cancelled: false };
    this.heap.push(t);
    return {
      cancel: () => {
        t.live = false;
        t.cancelled = true;
      },
    };
  }

  /**
   * Pops the next live timer, moves time to it and runs it (or holds it for
   * a frozen owner). Returns false when nothing is scheduled. The caller
   * lets microtasks settle before the next call.
   */
  runNext(): boolean {
    const t = this.heap.popLive();
    if (t === undefined) return false;
    assert(t.at >= this.nowMs, 'virtual time never goes backwards');
    this.nowMs = t.at;
    t.live = false;
    // A timer held while its owner is frozen may still be cancelled before the thaw.
    t.owner.fire(() => {
      if (!t.cancelled) t.fn();
    }, t.at);
    return true;
  }

  /** Moves every pending timer of `owner` `ms` later (its clock stood still that long). */
  delayOwned(owner: SimProcess, ms: number): void {
    this.heap.shift((t) => t.owner === owner, ms);
  }

  /** Moves time forward with nothing to run (the next timer lies beyond `at`). */
  advanceTo(at: number): void {
    const next = this.nextAt();
    assert(at >= this.nowMs && (next === null || next >= at), 'time moves forward, never past a due timer');
    this.nowMs = at;
  }

  /** A Clock for code running inside `owner`. */
  clockFor(owner: SimProcess): Clock {
    return {
      now: () => this.now() - owner.clockLagMs(),
      monotonic: () => this.monotonic() - owner.clockLagMs(),
      setTimeout: (fn, ms) => this.schedule(owner, ms, fn),
    };
  }
}

export type ProcessState = 'running' | 'frozen' | 'dead';

/** Work that reached a frozen process: a timer that fell due (at: when), or a message (at: null). */
interface Held {
  readonly at: number | null;
  readonly fn: () => void;
}

/**
 * One simulated OS process. Everything it does asynchronously starts from
 * one of its timers (its own, or a message delivery scheduled for it), so
 * stopping its timers stops the process.
 */
export class SimProcess {
  private stateNow: ProcessState = 'running';
  private held: Held[] = [];
  /** When the current suspension began (virtual ms), or null when not suspended. */
  private suspendedAt: number | null = null;
  /** How far this process's clocks are behind the cluster's, from past suspensions. */
  private lagMs = 0;
  /** Called when the process dies, so that pending work elsewhere can see its connection reset. */
  private readonly onDeath: (() => void)[] = [];

  constructor(
    readonly name: string,
    private readonly clock: SimClock,
  ) {}

  get state(): ProcessState {
    return this.stateNow;
  }

  get alive(): boolean {
    return this.stateNow !== 'dead';
  }

  /** Runs fn at the current instant as this process (a delivery, a client call). */
  post(fn: () => void): void {
    this.clock.schedule(this, 0, fn);
  }

  /** Whether its clocks ever stopped (see clockLagMs). */
  get suspendedOnce(): boolean {
    return this.suspendedAt !== null || this.lagMs > 0;
  }

  /** How far behind the cluster's time this process's own clocks read. */
  clockLagMs(): number {
    return this.lagMs + (this.suspendedAt === null ? 0 : this.clock.monotonic() - this.suspendedAt);
  }

  /** Runs `fn` (a message, or a timer due at `at`) now, or holds it while frozen. */
  fire(fn: () => void, at: number | null = null): void {
    if (this.stateNow === 'dead') return;
    if (this.stateNow === 'frozen') {
      this.held.push({ at, fn });
      return;
    }
    fn();
  }

  /** SIGSTOP; with `suspend`, the process's clocks stop too (a paused VM). */
  freeze(opts: { suspend?: boolean } = {}): void {
    assert(this.stateNow === 'running', 'only a running process can be frozen');
    this.stateNow = 'frozen';
    if (opts.suspend === true) this.suspendedAt = this.clock.monotonic();
  }

  /**
   * Runs what was held, in the order it arrived: at the current instant
   * after a SIGSTOP. After a suspension, messages are taken at once (the
   * host kept them) but timers run by the process's own clock: each held
   * one as long after the resume as it fell due after the suspension
   * began, and every pending one moved later by the suspension's length.
   */
  thaw(): void {
    assert(this.stateNow === 'frozen', 'only a frozen process can be thawed');
    this.stateNow = 'running';
    const held = this.held;
    this.held = [];
    const since = this.suspendedAt;
    if (since === null) {
      for (const h of held) this.post(h.fn);
      return;
    }
    const pausedMs = this.clock.monotonic() - since;
    this.suspendedAt = null;
    this.lagMs += pausedMs;
    this.clock.delayOwned(this, pausedMs);
    for (const h of held) this.clock.schedule(this, h.at === null ? 0 : h.at - since, h.fn);
  }

  /** SIGKILL: nothing of this process runs again. */
  kill(): void {
    if (this.stateNow === 'dead') return;
    this.stateNow = 'dead';
    this.held = [];
    this.suspendedAt = null;
    for (const fn of this.onDeath.splice(0)) fn();
  }

  whenDead(fn: () => void): void {
    if (this.stateNow === 'dead') fn();
    else this.onDeath.push(fn);
  }
}

interface Timer {
  at: number;
  readonly seq: number;
  readonly fn: () => void;
  readonly owner: SimProcess;
  /** Still in the heap and not cancelled. */
  live: boolean;
  cancelled: boolean;
}

/** A binary min-heap on (at, seq). */
class TimerHeap {
  private readonly a: Timer[] = [];

  size(): number {
    return this.a.length;
  }

  push(t: Timer): void {
    const a = this.a;
    a.push(t);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(a[i]!, a[p]!)) break;
      const t = a[i]!;
      a[i] = a[p]!;
      a[p] = t;
      i = p;
    }
  }

  /** Moves the timers `which` picks `ms` later, keeping the heap in order. */
  shift(which: (t: Timer) => boolean, ms: number): void {
    const a = this.a;
    let moved = false;
    for (const t of a) {
      if (t.live && which(t)) {
        t.at += ms;
        moved = true;
      }
    }
    if (!moved) return;
    const all = a.splice(0);
    for (const t of all) this.push(t);
  }

  peekLive(): Timer | undefined {
    while (this.a.length > 0 && !this.a[0]!.live) this.pop();
    return this.a[0];
  }

  popLive(): Timer | undefined {
    const t = this.peekLive();
    if (t !== undefined) this.pop();
    return t;
  }

  private pop(): Timer | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last !== undefined) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && less(a[l]!, a[m]!)) m = l;
        if (r < a.length && less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        const t = a[i]!;
        a[i] = a[m]!;
        a[m] = t;
        i = m;
      }
    }
    return top;
  }
}

function less(x: Timer, y: Timer): boolean {
  return x.at < y.at || (x.at === y.at && x.seq < y.seq);
}

/**
 * Lets every microtask queued so far (and those they queue) run. Only the
 * runner calls this, between timers: simulated code never sees a real timer.
 */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export type RunResult = 'done' | 'idle' | 'deadline';

/**
 * Drives the simulation: runs timers one at a time, letting microtasks
 * settle after each, until `done()` holds, nothing is scheduled, or the next
 * timer lies beyond `deadlineMs` (virtual, absolute; time is then moved to
 * the deadline).
 */
export async function runUntil(clock: SimClock, done: () => boolean, deadlineMs: number): Promise<RunResult> {
  await settle();
  for (;;) {
    if (done()) return 'done';
    const next = clock.nextAt();
    if (next === null) return 'idle';
    if (next > deadlineMs) {
      clock.advanceTo(deadlineMs);
      return 'deadline';
    }
    clock.runNext();
    await settle();
  }
}
