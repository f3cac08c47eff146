import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import { isTransientMetadataError, type MetadataService } from '../metadata/metadata-service.js';
import type { ExportProvider, ExportSummary, Extent, NbdExport } from '../nbd/export.js';
import { systemClock, type Clock } from '../util/clock.js';
import { formatSize } from '../util/size.js';
import type { OpenMode, OpenVolume, VolumeManager } from '../cluster/volume-manager.js';

export interface VolumeExportsOptions {
  readonly clock?: Clock;
  /** Logs an open that waits for etcd. */
  readonly logger?: Logger;
  /**
   * How long a lookup or open keeps trying while etcd does not answer (a
   * restart, a leader election, this process re-registering after losing
   * its lease). Default 15 s: well inside the NBD handshake timeout (30 s),
   * and longer than an etcd restart takes.
   */
  readonly openRetryMs?: number;
}

export const OPEN_RETRY_MS_DEFAULT = 15_000;
const RETRY_FIRST_MS = 200;
const RETRY_MAX_MS = 2_000;

/**
 * Serves torus volumes as NBD exports: export name = volume name.
 *
 * CAN_MULTI_CONN holds: every connection to a volume in this process shares
 * one Volume over the same block stores, and a FLUSH flushes those stores
 * whole (the journal's fdatasync covers every write any connection had
 * completed), so a flush on one connection makes all of them durable.
 *
 * Opening needs etcd (the volume record, the lock); carrying on with an open
 * volume does not. A client that connects while etcd restarts would be
 * refused for a blip users cannot see, so a lookup or open that etcd did not
 * answer is tried again, within openRetryMs; what etcd answered (no such
 * volume, held elsewhere) is final at once.
 */
export class VolumeExports implements ExportProvider {
  private readonly clock: Clock;
  private readonly log: Logger | null;
  private readonly openRetryMs: number;

  constructor(
    private readonly metadata: MetadataService,
    private readonly volumes: VolumeManager,
    private readonly mode: OpenMode,
    opts: VolumeExportsOptions = {},
  ) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger?.child({ module: 'exports' }) ?? null;
    this.openRetryMs = opts.openRetryMs ?? OPEN_RETRY_MS_DEFAULT;
  }

  async list(): Promise<ExportSummary[]> {
    const all = await this.retrying('list volumes', null, () => this.metadata.listVolumes());
    return all.map((v) => ({ name: v.name, description: describe(v.size) }));
  }

  async describe(name: string) {
    const v = await this.retrying('look the volume up', name, () => this.lookup(name));
    return { size: v.size, readOnly: this.mode === 'ro', multiConn: true, description: describe(v.size) };
  }

  async open(name: string): Promise<NbdExport> {
    const ov = await this.retrying('open the volume', name, async () => {
      await this.lookup(name);
      return this.volumes.acquire(name, this.mode);
    });
    return new VolumeExport(ov, this.volumes);
  }

  private async lookup(name: string) {
    try {
      return await this.metadata.getVolume(name);
    } catch (err) {
      if (err instanceof TorusError && err.code === 'TORUS_ERR_VOLUME_NOT_FOUND') {
        throw new TorusError('TORUS_ERR_NBD_EXPORT_UNKNOWN', `no volume named "${name}"`);
      }
      throw err;
    }
  }

  /** Runs fn again while it fails for want of etcd (or of our session), until openRetryMs has passed. */
  private async retrying<T>(what: string, volume: string | null, fn: () => Promise<T>): Promise<T> {
    const deadline = this.clock.monotonic() + this.openRetryMs;
    let delay = RETRY_FIRST_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        const r = await fn();
        if (attempt > 1) this.log?.info({ volume, attempts: attempt }, `could ${what} once etcd answered`);
        return r;
      } catch (err) {
        const transient = isTransientMetadataError(err) || isTorusError(err, 'TORUS_ERR_SESSION_LOST');
        if (!transient || this.clock.monotonic() + delay > deadline) throw err;
        if (attempt === 1) this.log?.warn({ volume, err, retryForMs: this.openRetryMs }, `could not ${what}: etcd did not answer; retrying`);
        await new Promise<void>((resolve) => this.clock.setTimeout(resolve, delay));
        delay = Math.min(RETRY_MAX_MS, delay * 2);
      }
    }
  }
}

function describe(size: number): string {
  return `torus block volume, ${formatSize(size)}`;
}

class VolumeExport implements NbdExport {
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly multiConn = true;
  /** The first release's outcome: a later call waits for it and answers the same, never sooner. */
  private released: Promise<void> | null = null;

  constructor(
    private readonly ov: OpenVolume,
    private readonly volumes: VolumeManager,
  ) {
    this.name = ov.name;
    this.size = ov.volume.size;
    this.readOnly = ov.mode === 'ro';
    this.description = describe(this.size);
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.ov.volume.read(offset, length);
  }
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.ov.volume.write(offset, data, fua);
  }
  flush(): Promise<void> {
    return this.ov.volume.flush();
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.ov.volume.zero(offset, length, { punch: true, fua });
  }
  writeZeroes(offset: number, length: number, opts: { noHole: boolean; fua: boolean; fastZero?: boolean }): Promise<void> {
    // Zeroing is fast when it frees whole blocks; with NO_HOLE it writes zero
    // pages, which is no faster than a write, so FAST_ZERO must refuse it.
    if (opts.fastZero && opts.noHole) {
      return Promise.reject(new TorusError('TORUS_ERR_NBD_UNSUPPORTED', 'zeroing without holes is not faster than writing zeroes'));
    }
    return this.ov.volume.zero(offset, length, { punch: !opts.noHole, fua: opts.fua });
  }
  async cache(): Promise<void> {
    // Reads come from the page cache of the peers already; nothing to warm.
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.ov.volume.blockStatus(offset, length);
  }
  release(): Promise<void> {
    // A second call must not report the export released (its writes flushed,
    // its lock let go) while the first is still doing it, nor hide the
    // first's failure.
    return (this.released ??= this.volumes.release(this.ov));
  }
}
