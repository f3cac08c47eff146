/**
 * An in-memory ExportProvider: named sparse disks held in RAM. It is the
 * twin of the volume-backed provider for tests (this package's and other
 * people's): same contract, same errors, plus hooks to slow down or fail
 * operations and counters to check what the server did.
 */
import { TorusError } from '../errors/torus-error.js';
import { assert } from '../util/assert.js';
import type { Extent, ExportProvider, ExportSummary, NbdExport } from './export.js';
import { STATE_HOLE, STATE_ZERO } from './protocol.js';

export interface MemoryExportSpec {
  readonly name: string;
  /** Bytes. */
  readonly size: number;
  readonly description?: string;
  readonly readOnly?: boolean;
  /** Default true: one shared buffer is coherent across connections. */
  readonly multiConn?: boolean;
  /**
   * Only one connection at a time may open it; a second open fails with
   * TORUS_ERR_VOLUME_IN_USE naming the holder, like a locked volume.
   */
  readonly exclusive?: boolean;
  /** Allocation granularity in bytes (default 64 KiB); what base:allocation reports. */
  readonly chunkBytes?: number;
}

export type MemoryOp = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes' | 'cache' | 'blockStatus';

/**
 * Runs before every operation on a disk; may wait (to reorder completions)
 * or throw (to fail the operation).
 */
export type MemoryInterceptor = (op: MemoryOp, offset: number, length: number) => Promise<void> | void;

export interface MemoryDiskStats {
  reads: number;
  writes: number;
  flushes: number;
  trims: number;
  zeroes: number;
  caches: number;
  blockStatuses: number;
  fuaWrites: number;
}

const DEFAULT_CHUNK_BYTES = 64 * 1024;

function outOfRange(offset: number, length: number, size: number): TorusError {
  return new TorusError('TORUS_ERR_IO_OUT_OF_RANGE', `range ${offset}+${length} lies outside the ${size}-byte export`, {
    details: { offset, length, size },
  });
}

/** The storage behind one export, shared by every connection that opens it. */
export class MemoryDisk {
  readonly name: string;
  readonly size: number;
  readonly description: string;
  readonly readOnly: boolean;
  readonly multiConn: boolean;
  readonly exclusive: boolean;
  readonly chunkBytes: number;
  readonly stats: MemoryDiskStats = { reads: 0, writes: 0, flushes: 0, trims: 0, zeroes: 0, caches: 0, blockStatuses: 0, fuaWrites: 0 };
  interceptor: MemoryInterceptor | null = null;
  /** Connections that have it open now. */
  openCount = 0;
  /** Remote of the connection holding an exclusive disk. */
  holder: string | null = null;
  private readonly chunks = new Map<number, Buffer>();

  constructor(spec: MemoryExportSpec) {
    if (!Number.isSafeInteger(spec.size) || spec.size < 0) {
      throw new TorusError('TORUS_ERR_SIZE_INVALID', `memory export size must be a non-negative integer, got ${spec.size}`);
    }
    const chunkBytes = spec.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0) {
      throw new TorusError('TORUS_ERR_SIZE_INVALID', `memory export chunkBytes must be a positive integer, got ${chunkBytes}`);
    }
    this.name = spec.name;
    this.size = spec.size;
    this.description = spec.description ?? '';
    this.readOnly = spec.readOnly ?? false;
    this.multiConn = spec.multiConn ?? true;
    this.exclusive = spec.exclusive ?? false;
    this.chunkBytes = chunkBytes;
  }

  /** Bytes held in allocated chunks. */
  get allocatedBytes(): number {
    let n = 0;
    for (const c of this.chunks.values()) n += c.length;
    return n;
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw outOfRange(offset, length, this.size);
    }
  }

  private chunkLength(index: number): number {
    return Math.min(this.chunkBytes, this.size - index * this.chunkBytes);
  }

  /** Reads bytes straight from memory (no hooks, no counters): for test assertions. */
  peek(offset: number, length: number): Buffer {
    this.check(offset, length);
    const out = Buffer.alloc(length);
    let pos = offset;
    while (pos < offset + length) {
      const index = Math.floor(pos / this.chunkBytes);
      const within = pos - index * this.chunkBytes;
      const len = Math.min(this.chunkLength(index) - within, offset + length - pos);
      const c = this.chunks.get(index);
      if (c !== undefined) c.copy(out, pos - offset, within, within + len);
      pos += len;
    }
    return out;
  }

  /** Writes bytes straight into memory (no hooks, no read-only check): for test setup. */
  poke(offset: number, data: Buffer): void {
    this.check(offset, data.length);
    let pos = offset;
    const end = offset + data.length;
    while (pos < end) {
      const index = Math.floor(pos / this.chunkBytes);
      const within = pos - index * this.chunkBytes;
      const len = Math.min(this.chunkLength(index) - within, end - pos);
      let c = this.chunks.get(index);
      if (c === undefined) {
        c = Buffer.alloc(this.chunkLength(index));
        this.chunks.set(index, c);
      }
      data.copy(c, within, pos - offset, pos - offset + len);
      pos += len;
    }
  }

  /** Makes a range read as zeroes; whole chunks become holes unless `allocate`. */
  zero(offset: number, length: number, allocate: boolean): void {
    this.check(offset, length);
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const index = Math.floor(pos / this.chunkBytes);
      const within = pos - index * this.chunkBytes;
      const chunkLen = this.chunkLength(index);
      const len = Math.min(chunkLen - within, end - pos);
      const c = this.chunks.get(index);
      if (len === chunkLen && !allocate) this.chunks.delete(index);
      else if (c !== undefined) c.fill(0, within, within + len);
      else if (allocate) this.chunks.set(index, Buffer.alloc(chunkLen));
      pos += len;
    }
  }

  /** Allocation map from offset, clipped to [offset, offset+length). */
  extents(offset: number, length: number): Extent[] {
    this.check(offset, length);
    const out: Extent[] = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const index = Math.floor(pos / this.chunkBytes);
      const within = pos - index * this.chunkBytes;
      const len = Math.min(this.chunkLength(index) - within, end - pos);
      const flags = this.chunks.has(index) ? 0 : STATE_HOLE | STATE_ZERO;
      const last = out[out.length - 1];
      if (last !== undefined && last.flags === flags) out[out.length - 1] = { length: last.length + len, flags };
      else out.push({ length: len, flags });
      pos += len;
    }
    return out;
  }

  async intercept(op: MemoryOp, offset: number, length: number): Promise<void> {
    if (this.interceptor !== null) await this.interceptor(op, offset, length);
  }
}

/** One connection's handle on a MemoryDisk. */
class MemoryExport implements NbdExport {
  private released = false;

  constructor(
    private readonly disk: MemoryDisk,
    private readonly onRelease: () => void,
  ) {}

  get name(): string {
    return this.disk.name;
  }
  get description(): string {
    return this.disk.description;
  }
  get size(): number {
    return this.disk.size;
  }
  get readOnly(): boolean {
    return this.disk.readOnly;
  }
  get multiConn(): boolean {
    return this.disk.multiConn;
  }

  private refuseWrite(): void {
    if (this.disk.readOnly) throw new TorusError('TORUS_ERR_VOLUME_READ_ONLY', `export ${this.disk.name} is read-only`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    await this.disk.intercept('read', offset, length);
    this.disk.stats.reads++;
    return this.disk.peek(offset, length);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.refuseWrite();
    await this.disk.intercept('write', offset, data.length);
    this.disk.stats.writes++;
    if (fua) this.disk.stats.fuaWrites++;
    this.disk.poke(offset, data);
  }

  async flush(): Promise<void> {
    await this.disk.intercept('flush', 0, 0);
    this.disk.stats.flushes++;
  }

  async trim(offset: number, length: number, _fua: boolean): Promise<void> {
    this.refuseWrite();
    await this.disk.intercept('trim', offset, length);
    this.disk.stats.trims++;
    this.disk.zero(offset, length, false);
  }

  async writeZeroes(offset: number, length: number, opts: { noHole: boolean; fua: boolean }): Promise<void> {
    this.refuseWrite();
    await this.disk.intercept('writeZeroes', offset, length);
    this.disk.stats.zeroes++;
    this.disk.zero(offset, length, opts.noHole);
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.disk.intercept('cache', offset, length);
    this.disk.stats.caches++;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    await this.disk.intercept('blockStatus', offset, length);
    this.disk.stats.blockStatuses++;
    return this.disk.extents(offset, length);
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.onRelease();
  }
}

export interface MemoryExportProviderOptions {
  /** Export served for the empty name ("default export"). */
  readonly defaultExport?: string;
}

export class MemoryExportProvider implements ExportProvider {
  private readonly disks = new Map<string, MemoryDisk>();
  private readonly defaultExport: string | undefined;
  /** Total opens and releases, to check that every connection released. */
  opens = 0;
  releases = 0;

  constructor(specs: readonly MemoryExportSpec[] = [], opts: MemoryExportProviderOptions = {}) {
    this.defaultExport = opts.defaultExport;
    for (const s of specs) this.add(s);
  }

  add(spec: MemoryExportSpec): MemoryDisk {
    if (this.disks.has(spec.name)) throw new TorusError('TORUS_ERR_VOLUME_EXISTS', `memory export ${spec.name} already exists`);
    const disk = new MemoryDisk(spec);
    this.disks.set(spec.name, disk);
    return disk;
  }

  remove(name: string): void {
    this.disks.delete(name);
  }

  /** The disk behind an export, for assertions and hooks. */
  disk(name: string): MemoryDisk {
    const d = this.disks.get(name);
    if (d === undefined) throw new TorusError('TORUS_ERR_NBD_EXPORT_UNKNOWN', `no memory export named ${JSON.stringify(name)}`);
    return d;
  }

  private resolve(name: string): MemoryDisk {
    const real = name === '' && this.defaultExport !== undefined ? this.defaultExport : name;
    return this.disk(real);
  }

  async list(): Promise<ExportSummary[]> {
    return [...this.disks.values()].map((d) => ({ name: d.name, description: d.description }));
  }

  async describe(name: string): Promise<{ size: number; readOnly: boolean; multiConn: boolean; description: string }> {
    const d = this.resolve(name);
    return { size: d.size, readOnly: d.readOnly, multiConn: d.multiConn, description: d.description };
  }

  async open(name: string, client: { remote: string }): Promise<NbdExport> {
    const d = this.resolve(name);
    if (d.exclusive && !d.readOnly && d.holder !== null) {
      throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `export ${d.name} is in use by ${d.holder}`, { details: { holder: d.holder } });
    }
    if (d.exclusive && !d.readOnly) d.holder = client.remote;
    d.openCount++;
    this.opens++;
    return new MemoryExport(d, () => {
      assert(d.openCount > 0, 'memory export released more often than opened');
      d.openCount--;
      this.releases++;
      if (d.exclusive && d.holder === client.remote) d.holder = null;
    });
  }
}
