import { createHash, type Hash } from 'node:crypto';

/**
 * What happened in a run, as one running hash (a replay must produce the
 * same hash, event for event) and, with --verbose, as lines. Events are
 * stamped with virtual time, never wall time.
 */
export class EventLog {
  private readonly hash: Hash = createHash('sha256');
  private count = 0;
  /** The last lines, for a failure report. */
  private readonly tail: string[] = [];

  constructor(
    private readonly now: () => number,
    private readonly verbose: boolean,
    private readonly tailMax = 40,
  ) {}

  add(line: string): void {
    const stamped = `${this.now().toFixed(3)} ${line}`;
    this.hash.update(stamped);
    this.hash.update('\n');
    this.count++;
    if (this.verbose) process.stdout.write(`${stamped}\n`);
    this.tail.push(stamped);
    if (this.tail.length > this.tailMax) this.tail.shift();
  }

  get events(): number {
    return this.count;
  }

  lastLines(): readonly string[] {
    return this.tail;
  }

  digest(): string {
    return this.hash.copy().digest('hex').slice(0, 16);
  }
}
