import type { IKeyValue, Namespace, Watcher } from 'etcd3';
import type { Logger } from 'pino';
import type { Clock } from '../util/clock.js';

/**
 * An etcd watch that never silently stops. The etcd3 client re-attaches a
 * watch after a lost stream and replays from the last revision it saw, but a
 * watch whose history was compacted meanwhile is cancelled by etcd (an
 * 'error' on the watcher) and never comes back, and a replay cut short by a
 * second disconnection can skip events. So on any disconnection or
 * cancellation this drops the watcher, re-reads the watched state
 * (`resync`, which tells the owner), and watches again from the revision of
 * that read: nothing between the read and the new watch is missed, and
 * nothing is delivered twice within one generation.
 */

type Call = <T>(op: string, fn: () => Promise<T>) => Promise<T>;

export interface ResilientWatchDeps {
  readonly ns: Namespace;
  readonly call: Call;
  readonly clock: Clock;
  readonly logger: Logger;
}

export interface ResilientWatchSpec {
  /** For logs: `ring`, `fences`, `volumes`. */
  readonly what: string;
  readonly key?: string;
  readonly prefix?: string;
  /** Watch from this revision first; null: resync first. */
  readonly startRevision: number | null;
  /** Re-reads the watched state, reporting it to the owner unless `initial`, and returns the etcd revision of the read. */
  readonly resync: (initial: boolean) => Promise<number>;
  readonly onPut?: (key: string, value: string, modRevision: number) => void;
  readonly onDelete?: (key: string) => void;
}

/** Retries of a failed resync back off from the first to the last delay. */
export const RESYNC_DELAY_FIRST_MS = 100;
export const RESYNC_DELAY_MAX_MS = 2_000;

export class ResilientWatch {
  private watcher: Watcher | null = null;
  private generation = 0;
  private stopped = false;
  private retry: { cancel(): void } | undefined;
  private delayMs = RESYNC_DELAY_FIRST_MS;
  private readonly log: Logger;

  private constructor(
    private readonly deps: ResilientWatchDeps,
    private readonly spec: ResilientWatchSpec,
  ) {
    this.log = deps.logger.child({ watch: spec.what });
  }

  /** Resolves once etcd has accepted the first watch (bounded like every call). */
  static async open(deps: ResilientWatchDeps, spec: ResilientWatchSpec): Promise<ResilientWatch> {
    const w = new ResilientWatch(deps, spec);
    const from = spec.startRevision ?? (await spec.resync(true)) + 1;
    try {
      await w.attach(from);
    } catch (err) {
      w.stopped = true;
      w.dropWatcher();
      throw err;
    }
    return w;
  }

  /** Creates the watcher from `from`; resolves when it is connected. */
  private attach(from: number): Promise<void> {
    const gen = ++this.generation;
    const b = this.deps.ns.watch();
    const builder = this.spec.key !== undefined ? b.key(this.spec.key) : b.prefix(this.spec.prefix ?? '');
    const watcher = builder.startRevision(String(from)).watcher();
    this.watcher = watcher;
    const current = (): boolean => gen === this.generation && !this.stopped;
    watcher.on('put', (kv: IKeyValue) => {
      if (current()) this.spec.onPut?.(kv.key.toString('utf8'), kv.value.toString('utf8'), Number(kv.mod_revision));
    });
    watcher.on('delete', (kv: IKeyValue) => {
      if (current()) this.spec.onDelete?.(kv.key.toString('utf8'));
    });
    watcher.on('connected', () => {
      if (current()) this.delayMs = RESYNC_DELAY_FIRST_MS;
    });
    watcher.on('disconnected', (err: unknown) => {
      if (!current()) return;
      this.log.warn({ err }, 'watch stream lost; re-reading and watching again');
      this.lose();
    });
    watcher.on('error', (err: unknown) => {
      if (!current()) return;
      // etcd cancels a watch whose history was compacted away.
      this.log.warn({ err }, 'watch cancelled by etcd (compacted history?); re-reading and watching again');
      this.lose();
    });
    return this.deps.call(`watch ${this.spec.what}`, () =>
      new Promise<void>((resolve, reject) => {
        watcher.once('connected', () => resolve());
        watcher.once('error', reject);
      }),
    );
  }

  private dropWatcher(): void {
    const w = this.watcher;
    this.watcher = null;
    // Not awaited: a watcher on a dead stream may never confirm its cancel.
    w?.cancel().catch(() => undefined);
  }

  private lose(): void {
    this.generation++;
    this.dropWatcher();
    this.scheduleResync();
  }

  private scheduleResync(): void {
    if (this.stopped) return;
    this.retry?.cancel();
    const delay = this.delayMs;
    this.delayMs = Math.min(RESYNC_DELAY_MAX_MS, this.delayMs * 2);
    this.retry = this.deps.clock.setTimeout(() => void this.resync(), delay);
  }

  private async resync(): Promise<void> {
    if (this.stopped) return;
    const gen = this.generation;
    try {
      const revision = await this.spec.resync(false);
      if (this.stopped || gen !== this.generation) return;
      await this.attach(revision + 1);
      this.log.info({ revision }, 'watch resumed');
    } catch (err) {
      if (this.stopped) return;
      this.log.warn({ err }, 'could not resume the watch yet; retrying');
      this.generation++;
      this.dropWatcher();
      this.scheduleResync();
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.retry?.cancel();
    const w = this.watcher;
    this.watcher = null;
    if (w) await this.deps.call(`cancel ${this.spec.what} watch`, () => w.cancel()).catch(() => undefined);
  }
}
