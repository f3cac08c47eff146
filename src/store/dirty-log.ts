import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { decodeBlockRef, encodeBlockRef, type BlockRef } from '../model/block-ref.js';
import { crc32c } from '../util/crc32c.js';
import { nodeStoreIo, type StoreIo } from './store-io.js';

/**
 * The dirty log: which blocks may hold pages written since the last
 * checkpoint. Before the first write to a block in an epoch, a record naming
 * the block is made durable here; a checkpoint makes the CRC tables of the
 * epoch's blocks durable and deletes the epoch's file. After a crash, only
 * blocks named in a leftover file can hold pages whose CRC on disk is stale
 * (unflushed or torn writes), so only those get their CRCs recomputed.
 *
 * One file per epoch, `dirty/<epoch, 8 hex>.log`, of 32-byte records:
 *   0 u32 magic 'TDL1'   4 u32 epoch   8 ref (16 bytes)   24 u32 0   28 u32 crc32c(0..27)
 * A torn record at the tail is ignored: the write it guarded never started.
 */
const RECORD_BYTES = 32;
const MAGIC = 0x54444c31;
/**
 * The file grows by zero-filled chunks ahead of its records: an append then
 * overwrites allocated space, and its fdatasync needs no file-system metadata
 * commit (appending past the end would need one every time). Zeroes after the
 * last record end replay like a torn tail does.
 */
const PREALLOCATE_BYTES = 256 * 1024;
const ZEROES = Buffer.alloc(PREALLOCATE_BYTES);

interface EpochFile {
  readonly epoch: number;
  readonly file: string;
  fd: number;
  size: number;
  /** Bytes allocated (zero-filled) so far; size <= allocated. */
  allocated: number;
  queue: { rec: Buffer; resolve(): void; reject(err: unknown): void }[];
  running: boolean;
}

export class DirtyLog {
  private readonly files = new Map<number, EpochFile>();
  private readonly opening = new Map<number, Promise<EpochFile>>();
  private failed: Error | null = null;

  private constructor(
    private readonly dir: string,
    private readonly log: Logger,
    private readonly io: StoreIo,
  ) {}

  /**
   * Opens the folder and returns the blocks named by leftover files (an
   * unclean stop) with those files' epochs; the caller repairs the blocks and
   * then calls discard().
   */
  static async open(dir: string, logger: Logger, io: StoreIo = nodeStoreIo): Promise<{ log: DirtyLog; dirty: BlockRef[]; leftovers: number[] }> {
    await io.mkdirs(dir);
    // Its name in the store's folder must be durable before a record in it
    // counts (a first start that crashed before anything else synced that
    // folder lost every record).
    await io.fsyncDir(path.dirname(dir));
    const names = (await io.readdir(dir)).filter((n) => /^[0-9a-f]{8}\.log$/.test(n)).sort();
    const dirty = new Map<string, BlockRef>();
    const leftovers: number[] = [];
    for (const name of names) {
      const epoch = parseInt(name.slice(0, 8), 16);
      leftovers.push(epoch);
      const data = await io.readFile(path.join(dir, name));
      for (let at = 0; at + RECORD_BYTES <= data.length; at += RECORD_BYTES) {
        const r = data.subarray(at, at + RECORD_BYTES);
        if (r.readUInt32BE(0) !== MAGIC || crc32c(r.subarray(0, 28)) !== r.readUInt32BE(28)) break;
        try {
          const ref = decodeBlockRef(r, 8);
          dirty.set(`${ref.volumeId}/${ref.generation}/${ref.index}`, ref);
        } catch {
          break;
        }
      }
    }
    return { log: new DirtyLog(dir, logger.child({ module: 'dirty-log' }), io), dirty: [...dirty.values()], leftovers };
  }

  /** Deletes the files of these epochs (after their blocks were repaired or checkpointed). */
  async discard(epochs: readonly number[]): Promise<void> {
    for (const epoch of epochs) {
      const f = this.files.get(epoch);
      if (f) {
        while (f.running || f.queue.length > 0) await new Promise((r) => setImmediate(r));
        this.files.delete(epoch);
        await this.io.close(f.fd);
      }
      await this.io.unlink(this.fileOf(epoch)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    if (epochs.length > 0) await this.io.fsyncDir(this.dir);
  }

  /** Resolves once a record naming `ref` is durable in the file of `epoch`. */
  async mark(ref: BlockRef, epoch: number): Promise<void> {
    if (this.failed) throw this.failed;
    const f = await this.epochFile(epoch);
    const rec = Buffer.alloc(RECORD_BYTES);
    rec.writeUInt32BE(MAGIC, 0);
    rec.writeUInt32BE(epoch, 4);
    encodeBlockRef(ref, rec, 8);
    rec.writeUInt32BE(crc32c(rec.subarray(0, 28)), 28);
    await new Promise<void>((resolve, reject) => {
      f.queue.push({ rec, resolve, reject });
      if (!f.running) void this.drain(f);
    });
  }

  /** Creates the file of an epoch ahead of use (so marks do not wait on it). */
  async prepare(epoch: number): Promise<void> {
    await this.epochFile(epoch);
  }

  async close(): Promise<void> {
    for (const f of this.files.values()) {
      while (f.running) await new Promise((r) => setImmediate(r));
      await this.io.close(f.fd).catch(() => undefined);
    }
    this.files.clear();
  }

  private fileOf(epoch: number): string {
    return path.join(this.dir, `${epoch.toString(16).padStart(8, '0')}.log`);
  }

  private epochFile(epoch: number): Promise<EpochFile> {
    const f = this.files.get(epoch);
    if (f) return Promise.resolve(f);
    let p = this.opening.get(epoch);
    if (!p) {
      p = (async () => {
        const file = this.fileOf(epoch);
        const fd = await this.io.open(file, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY);
        // The file's name must survive a crash before any record in it counts.
        await this.io.fsyncDir(this.dir);
        await this.io.write(fd, ZEROES, 0);
        await this.io.fdatasync(fd);
        const ef: EpochFile = { epoch, file, fd, size: 0, allocated: PREALLOCATE_BYTES, queue: [], running: false };
        this.files.set(epoch, ef);
        this.opening.delete(epoch);
        return ef;
      })();
      this.opening.set(epoch, p);
      p.catch(() => this.opening.delete(epoch));
    }
    return p;
  }

  /** Group commit: everything queued while one fdatasync runs goes in the next. */
  private async drain(f: EpochFile): Promise<void> {
    f.running = true;
    try {
      while (f.queue.length > 0) {
        const batch = f.queue.splice(0, 4096);
        try {
          while (f.size + batch.length * RECORD_BYTES > f.allocated) {
            await this.io.write(f.fd, ZEROES, f.allocated);
            f.allocated += PREALLOCATE_BYTES;
          }
          await this.io.writev(f.fd, batch.map((b) => b.rec), f.size);
          f.size += batch.length * RECORD_BYTES;
          await this.io.fdatasync(f.fd);
        } catch (err) {
          const e = new TorusError('TORUS_ERR_STORE_IO', `dirty log write failed: ${(err as Error).message}`, { cause: err });
          this.failed = e;
          this.log.error({ err: e, file: f.file }, 'dirty log failed; the store refuses writes');
          for (const b of batch) b.reject(e);
          for (const b of f.queue.splice(0)) b.reject(e);
          return;
        }
        for (const b of batch) b.resolve();
      }
    } finally {
      f.running = false;
    }
  }
}
