import { TorusError } from '../errors/torus-error.js';
import type { MetadataService } from '../metadata/metadata-service.js';
import type { ExportProvider, ExportSummary, Extent, NbdExport } from '../nbd/export.js';
import { formatSize } from '../util/size.js';
import type { OpenMode, OpenVolume, VolumeManager } from '../cluster/volume-manager.js';

/**
 * Serves torus volumes as NBD exports: export name = volume name.
 *
 * CAN_MULTI_CONN holds: every connection to a volume in this process shares
 * one Volume over the same block stores, and a FLUSH flushes those stores
 * whole (the journal's fdatasync covers every write any connection had
 * completed), so a flush on one connection makes all of them durable.
 */
export class VolumeExports implements ExportProvider {
  constructor(
    private readonly metadata: MetadataService,
    private readonly volumes: VolumeManager,
    private readonly mode: OpenMode,
  ) {}

  async list(): Promise<ExportSummary[]> {
    const all = await this.metadata.listVolumes();
    return all.map((v) => ({ name: v.name, description: describe(v.size) }));
  }

  async describe(name: string) {
    const v = await this.lookup(name);
    return { size: v.size, readOnly: this.mode === 'ro', multiConn: true, description: describe(v.size) };
  }

  async open(name: string): Promise<NbdExport> {
    await this.lookup(name);
    const ov = await this.volumes.acquire(name, this.mode);
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
  private released = false;

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
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.volumes.release(this.ov);
  }
}
