import { assert } from './assert.js';

/**
 * Runs a job (a sync, a checkpoint) for callers that each need a run that
 * starts after their call: a flush must cover the writes acknowledged
 * before it, a checkpoint the changes made before it. A run in progress
 * may have taken its snapshot before the call, so the call waits for the
 * next run, which every call made meanwhile shares (group commit). One
 * run at a time: two would each take part of the state, and a caller
 * told "done" by one could find the other still writing what it needs.
 *
 * The order of the checks matters. Between the end of a run and the start
 * of the one queued behind it there are microtask turns with no run in
 * progress; a call then must join the queued run, not start one of its
 * own beside it (the disk store once did, and two checkpoints waited on
 * one slot forever: the crash-point test, seed 725).
 */
export class GroupRun {
  private running: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(private readonly job: () => Promise<void>) {}

  /** Resolves (or rejects) with a run that started after this call. */
  run(): Promise<void> {
    if (this.next !== null) return this.next;
    if (this.running === null) return this.start();
    const queued = this.running
      .catch(() => undefined)
      .then(() => {
        this.next = null;
        return this.start();
      });
    this.next = queued;
    return queued;
  }

  /** The run in progress, if any. */
  get current(): Promise<void> | null {
    return this.running;
  }

  private start(): Promise<void> {
    assert(this.running === null, 'one run at a time');
    const run = this.job().finally(() => {
      if (this.running === run) this.running = null;
    });
    this.running = run;
    return run;
  }
}
