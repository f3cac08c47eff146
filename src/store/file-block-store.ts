import fs from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { blockRef, blockRefKey, type BlockRef } from '../model/block-ref.js';
import { assert } from '../util/assert.js';
import { systemClock, type Clock } from '../util/clock.js';
import { crc32cPages } from '../util/crc32c.js';
import { blockFileBytes, decodeHeader, encodeHeader, encodeTable, headerBytes, newCrcTable, PAGE_BYTES, pageCount, TABLE_OFFSET } from './block-file.js';
import type { BlockStore, StoreUsage, WriteOptions, ZeroOptions } from './block-store.js';
import { DirtyLog } from './dirty-log.js';
import { closeFd, fdatasync, fsyncDir, ftruncate, openFd, preadCached, preadFull, pwriteCached, pwriteFull, syncFileSystem } from './fs-async.js';

/**
 * The block store of one peer, on its local disk: one file per block, a
 * CRC32C per 4 KiB page in the file's header, data written in place.
 *
 * Durability: a write lands in the page cache and is acknowledged; FLUSH
 * fdatasyncs every block file written since the last flush and the folders
 * where files were created or removed; FUA does the same for one block.
 *
 * Checksums across crashes: the CRC table lives in memory while the store
 * runs and reaches the file at checkpoints. Before the first write to a
 * block in a checkpoint epoch, the dirty log (dirty-log.ts) durably names
 * the block. A crash can leave stale CRCs only on blocks so named, and
 * start-up recomputes exactly those from their data (an unflushed write may
 * be lost or torn, as on any disk, but never reads as a checksum error).
 * Every other page is checked against a CRC that was made durable with it.
 *
 * Space: capacity is charged per allocated block (header + block size). A
 * write that needs a new block beyond the cap fails with
 * TORUS_ERR_STORE_NO_SPACE before anything is written.
 */

export interface FileBlockStoreOptions {
  /** The store's own folder (torusd uses <data-dir>/store). */
  readonly dir: string;
  readonly blockSize: number;
  /** Bytes the store may use in all (the --size cap). */
  readonly capacity: number;
  readonly logger: Logger;
  readonly clock?: Clock;
  /**
   * How often CRC tables of written blocks are made durable (ends an epoch).
   * Default 60 s: by then the kernel has written most pages back (its
   * dirty_expire is 30 s), so the checkpoint's fdatasyncs find little to do.
   */
  readonly checkpointIntervalMs?: number;
  /**
   * An epoch ends early once this many blocks were written in it: after a
   * crash, start-up reads and rehashes at most this many blocks. Default 8192.
   */
  readonly epochBlocksMax?: number;
  /** Block files kept open at most (lowered by itself when the process hits EMFILE). */
  readonly fdMax?: number;
  /** Called on every CRC mismatch (torusd counts them in a metric). */
  readonly onCrcFailure?: (ref: BlockRef, page: number) => void;
}

interface Entry {
  readonly ref: BlockRef;
  readonly key: string;
  readonly file: string;
  /** The block file exists. */
  onDisk: boolean;
  /** Counted against capacity. */
  allocated: boolean;
  fd: number | null;
  crc: Uint32Array | null;
  /** Epoch whose dirty-log record for this block is durable (0: none). */
  markedEpoch: number;
  marking: Promise<void> | null;
  markingEpoch: number;
  readers: number;
  writing: boolean;
  /** Writers waiting for the lock: new readers queue behind them. */
  writersWaiting: number;
  waiters: (() => void)[];
  /** Writes admitted but not finished (they keep the entry in the map). */
  pending: number;
}

const STORE_META = 'store.json';
const SYNC_CONCURRENCY = 8;
/** From this many files and folders to sync, one syncfs replaces them. */
const SYNCFS_MIN_ITEMS = 3;

export class FileBlockStore implements BlockStore {
  readonly blockSize: number;
  private readonly opts: FileBlockStoreOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly blocksDir: string;
  private readonly entries = new Map<string, Entry>();
  private readonly fences = new Map<number, number>();
  private readonly hdrBytes: number;
  private readonly fileBytes: number;
  private readonly blockSlots: number;
  private fdMax: number;
  /** Entries holding an open fd, least recently used first (Map keeps insertion order). */
  private readonly fdLru = new Map<Entry, true>();
  private dirtyLog!: DirtyLog;
  private epoch = 1;
  /** Blocks named in the dirty log per epoch (what a checkpoint makes durable). */
  private readonly epochBlocks = new Map<number, Set<Entry>>();
  /** Writes in progress per epoch; a checkpoint waits for its epoch's to finish. */
  private readonly epochWrites = new Map<number, number>();
  private epochDrained: (() => void) | null = null;
  /** Block files written since the last flush, and folders changed since. */
  private flushFiles = new Set<Entry>();
  private flushDirs = new Set<string>();
  private syncRunning: Promise<void> | null = null;
  private syncNext: Promise<void> | null = null;
  private readonly knownDirs = new Set<string>();
  private allocatedCount = 0;
  private checkpointing: Promise<void> | null = null;
  /** The store folder, held open as the handle for syncfs. */
  private dirFd: number | null = null;
  private checkpointTimer: { cancel(): void } | null = null;
  private failed: TorusError | null = null;
  private closing = false;
  private closed = false;

  private constructor(opts: FileBlockStoreOptions) {
    assert(opts.blockSize >= PAGE_BYTES && (opts.blockSize & (opts.blockSize - 1)) === 0, 'block size is a power of two of at least one page');
    this.opts = opts;
    this.blockSize = opts.blockSize;
    this.log = opts.logger.child({ module: 'store' });
    this.clock = opts.clock ?? systemClock;
    this.blocksDir = path.join(opts.dir, 'blocks');
    this.hdrBytes = headerBytes(opts.blockSize);
    this.fileBytes = blockFileBytes(opts.blockSize);
    this.blockSlots = Math.max(0, Math.floor(opts.capacity / this.fileBytes));
    this.fdMax = opts.fdMax ?? 4096;
  }

  /** Opens (or creates) the store, repairing checksums after an unclean stop. */
  static async open(opts: FileBlockStoreOptions): Promise<FileBlockStore> {
    const store = new FileBlockStore(opts);
    await store.start();
    return store;
  }

  // ---------------------------------------------------------------- public API

  async read(ref: BlockRef, offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    if (this.closed) throw new TorusError('TORUS_ERR_STORE_CLOSED', 'block store is closed');
    const e = this.entries.get(blockRefKey(ref));
    if (!e) return Buffer.alloc(length);
    // Fast paths avoid awaiting what is already at hand: each await is a
    // microtask turn on the hot path of every read.
    if (e.writing || e.writersWaiting > 0) await this.lockRead(e);
    else e.readers++;
    try {
      if (!e.onDisk) return Buffer.alloc(length);
      const p0 = Math.floor(offset / PAGE_BYTES);
      const p1 = Math.ceil((offset + length) / PAGE_BYTES);
      const base = p0 * PAGE_BYTES;
      const region = Buffer.allocUnsafe((p1 - p0) * PAGE_BYTES);
      const fd = e.fd !== null ? this.touchFd(e) : await this.fdOf(e);
      const table = e.crc ?? (await this.tableOf(e));
      const pending = preadCached(fd, region, 0, region.length, this.hdrBytes + base);
      if (pending !== null) await pending;
      const crcs = new Uint32Array(p1 - p0);
      crc32cPages(region, PAGE_BYTES, crcs);
      for (let p = p0; p < p1; p++) {
        if (crcs[p - p0] !== table[p]) {
          this.opts.onCrcFailure?.(ref, p);
          this.log.error({ block: e.key, page: p, file: e.file }, 'block page failed its checksum');
          throw new TorusError('TORUS_ERR_STORE_CRC_MISMATCH', `block ${e.key} page ${p} failed its CRC32C check`, { details: { block: e.key, page: p } });
        }
      }
      return region.subarray(offset - base, offset - base + length);
    } finally {
      this.unlockRead(e);
    }
  }

  async write(ref: BlockRef, offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    await this.put(ref, offset, data.length, data, opts, true);
  }

  async zero(ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.checkRange(offset, length);
    if (length === 0) return;
    this.checkWritable();
    this.checkFence(ref.volumeId, opts.fence);
    const e = this.entries.get(blockRefKey(ref));
    if (opts.punch) {
      // A hole already reads as zeroes.
      if (!e || !e.allocated) return opts.fua ? this.flush() : undefined;
      if (offset === 0 && length === this.blockSize) {
        await this.punch(e);
        if (opts.fua) await this.flush();
        return;
      }
      await this.put(ref, offset, length, null, opts, false);
      return;
    }
    // NO_HOLE: the range must stay (or become) allocated.
    await this.put(ref, offset, length, null, opts, true);
  }

  /**
   * Resolves once every write acknowledged before the call is durable.
   * Group commit: a sync that is already running may have taken its file
   * list before this call's writes, so the call waits for the next sync,
   * which every flush arriving meanwhile shares.
   */
  flush(): Promise<void> {
    try {
      this.checkWritable();
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.syncRunning === null) return this.startSync();
    if (this.syncNext === null) {
      this.syncNext = this.syncRunning
        .catch(() => undefined)
        .then(() => {
          this.syncNext = null;
          return this.startSync();
        });
    }
    return this.syncNext;
  }

  private startSync(): Promise<void> {
    const run = this.syncNow().finally(() => {
      if (this.syncRunning === run) this.syncRunning = null;
    });
    this.syncRunning = run;
    return run;
  }

  async allocated(refs: readonly BlockRef[]): Promise<boolean[]> {
    return refs.map((r) => this.entries.get(blockRefKey(r))?.allocated ?? false);
  }

  async deleteVolume(volumeId: number): Promise<void> {
    this.checkWritable();
    for (const e of [...this.entries.values()]) {
      if (e.ref.volumeId === volumeId && e.allocated) await this.punch(e);
    }
    const dir = path.join(this.blocksDir, volumeId.toString(16));
    await rm(dir, { recursive: true, force: true });
    for (const d of [...this.knownDirs]) if (d.startsWith(dir + path.sep)) this.knownDirs.delete(d);
    this.flushDirs.add(this.blocksDir);
    this.fences.delete(volumeId);
    await this.flush();
  }

  usage(): StoreUsage {
    return { capacity: this.opts.capacity, used: this.allocatedCount * this.fileBytes, blocks: this.allocatedCount };
  }

  /** Volumes that have blocks here (for garbage collection of deleted volumes). */
  volumeIds(): number[] {
    const ids = new Set<number>();
    for (const e of this.entries.values()) if (e.allocated) ids.add(e.ref.volumeId);
    return [...ids];
  }

  /** Blocks this store can hold at most, given its cap. */
  capacityBlocks(): number {
    return this.blockSlots;
  }

  /** Flushes and checkpoints everything; the next open needs no repair. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.checkpointTimer?.cancel();
    if (!this.failed) {
      await this.syncNow();
      await this.checkpoint();
      // No writes can start now: the current epoch's log holds nothing to repair.
      await this.dirtyLog.discard([this.epoch]);
    }
    await this.dirtyLog.close();
    if (this.dirFd !== null) await closeFd(this.dirFd).catch(() => undefined);
    this.dirFd = null;
    for (const e of [...this.fdLru.keys()]) {
      const fd = e.fd!;
      this.forgetFd(e);
      await closeFd(fd).catch(() => undefined);
    }
    this.closed = true;
  }

  /**
   * Test hook: stops as a killed process would, without flushing or
   * checkpointing; the next open must repair from the dirty log alone.
   */
  async abandonForTest(): Promise<void> {
    this.closing = true;
    this.closed = true;
    this.checkpointTimer?.cancel();
    this.failed = new TorusError('TORUS_ERR_STORE_CLOSED', 'abandoned');
    await this.checkpointing?.catch(() => undefined);
    for (const e of this.fdLru.keys()) if (e.fd !== null) fs.close(e.fd, () => undefined);
    await this.dirtyLog.close();
  }

  // ---------------------------------------------------------------- writes

  /** Writes `data` (or zeroes when null) at offset in a block, in place. */
  private async put(ref: BlockRef, offset: number, length: number, data: Buffer | null, opts: WriteOptions, allocates: boolean): Promise<void> {
    this.checkWritable();
    this.checkFence(ref.volumeId, opts.fence);
    const e = this.entryFor(ref);
    let reserved = false;
    if (allocates && !e.allocated) {
      if (this.allocatedCount >= this.blockSlots) {
        this.dropIfIdle(e);
        throw new TorusError('TORUS_ERR_STORE_NO_SPACE', `the store is full: ${this.allocatedCount} of ${this.blockSlots} blocks of ${this.blockSize} bytes are in use (--size ${this.opts.capacity})`);
      }
      e.allocated = true;
      this.allocatedCount++;
      reserved = true;
    }
    const epoch = this.epoch;
    this.epochWrites.set(epoch, (this.epochWrites.get(epoch) ?? 0) + 1);
    e.pending++;
    try {
      if (e.markedEpoch !== epoch) await this.markDirty(e, epoch);
      if (e.writing || e.readers > 0) await this.lockWrite(e);
      else e.writing = true;
      try {
        if (!e.onDisk) await this.createFile(e);
        await this.writePages(e, offset, length, data);
      } finally {
        this.unlockWrite(e);
      }
    } catch (err) {
      if (reserved && !e.onDisk && e.allocated) {
        e.allocated = false;
        this.allocatedCount--;
      }
      throw this.ioError(err, 'block write failed');
    } finally {
      e.pending--;
      const left = this.epochWrites.get(epoch)! - 1;
      this.epochWrites.set(epoch, left);
      if (left === 0 && this.epochDrained) this.epochDrained();
      this.dropIfIdle(e);
    }
    if (opts.fua) await this.flush();
  }

  /** The dirty-log record must be durable before the block file changes. */
  private async markDirty(e: Entry, epoch: number): Promise<void> {
    if (e.markedEpoch === epoch) return;
    if (e.marking === null || e.markingEpoch !== epoch) {
      e.markingEpoch = epoch;
      e.marking = this.dirtyLog.mark(e.ref, epoch).then(() => {
        e.markedEpoch = Math.max(e.markedEpoch, epoch);
        let set = this.epochBlocks.get(epoch);
        if (!set) this.epochBlocks.set(epoch, (set = new Set()));
        set.add(e);
        if (set.size >= (this.opts.epochBlocksMax ?? 8192) && epoch === this.epoch) void this.checkpoint().catch(() => undefined);
      });
    }
    await e.marking;
  }

  private async writePages(e: Entry, offset: number, length: number, data: Buffer | null): Promise<void> {
    const fd = e.fd !== null ? this.touchFd(e) : await this.fdOf(e);
    const table = e.crc ?? (await this.tableOf(e));
    const p0 = Math.floor(offset / PAGE_BYTES);
    const p1 = Math.ceil((offset + length) / PAGE_BYTES);
    const base = p0 * PAGE_BYTES;
    const aligned = offset === base && length === (p1 - p0) * PAGE_BYTES;
    let region: Buffer;
    if (aligned && data !== null) {
      region = data; // whole pages: write the caller's buffer as it is
    } else {
      region = Buffer.allocUnsafe((p1 - p0) * PAGE_BYTES);
      if (offset !== base) await preadFull(fd, region, 0, PAGE_BYTES, this.hdrBytes + base);
      if ((offset + length) % PAGE_BYTES !== 0 && (p1 - 1 > p0 || offset === base)) {
        const at = (p1 - 1 - p0) * PAGE_BYTES;
        await preadFull(fd, region, at, PAGE_BYTES, this.hdrBytes + base + at);
      }
      if (data !== null) data.copy(region, offset - base);
      else region.fill(0, offset - base, offset - base + length);
    }
    const crcs = new Uint32Array(p1 - p0);
    crc32cPages(region, PAGE_BYTES, crcs);
    try {
      const pending = pwriteCached(fd, region, this.hdrBytes + base);
      if (pending !== null) await pending;
    } catch (err) {
      // The pages may hold part of the write now: take their CRCs from what
      // the file holds, so they do not read as corrupt later.
      await this.rehashPages(e, fd, p0, p1).catch(() => undefined);
      throw err;
    }
    table.set(crcs, p0);
    this.flushFiles.add(e);
  }

  private async rehashPages(e: Entry, fd: number, p0: number, p1: number): Promise<void> {
    const buf = Buffer.alloc((p1 - p0) * PAGE_BYTES);
    await preadFull(fd, buf, 0, buf.length, this.hdrBytes + p0 * PAGE_BYTES);
    const table = await this.tableOf(e);
    const crcs = new Uint32Array(p1 - p0);
    crc32cPages(buf, PAGE_BYTES, crcs);
    table.set(crcs, p0);
  }

  private async createFile(e: Entry): Promise<void> {
    const dir = path.dirname(e.file);
    if (!this.knownDirs.has(dir)) {
      await mkdir(dir, { recursive: true });
      // New folders need their parents synced too (volume and generation levels).
      this.flushDirs.add(path.dirname(dir));
      this.flushDirs.add(path.dirname(path.dirname(dir)));
      this.knownDirs.add(dir);
    }
    const fd = await this.openWithRoom(e.file, fs.constants.O_CREAT | fs.constants.O_RDWR);
    this.rememberFd(e, fd);
    await ftruncate(fd, this.fileBytes);
    const table = newCrcTable(this.blockSize);
    await pwriteFull(fd, encodeHeader(e.ref, this.blockSize, table), 0);
    e.crc = table;
    e.onDisk = true;
    this.flushDirs.add(dir);
    this.flushFiles.add(e);
  }

  /** Frees a whole block: the file goes; the folder change is made durable by the next flush. */
  private async punch(e: Entry): Promise<void> {
    await this.lockWrite(e);
    try {
      if (e.fd !== null) {
        const fd = e.fd;
        this.forgetFd(e);
        await closeFd(fd);
      }
      if (e.onDisk) {
        await unlink(e.file).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
        e.onDisk = false;
        this.flushDirs.add(path.dirname(e.file));
      }
      e.crc = null;
      this.flushFiles.delete(e);
      if (e.allocated) {
        e.allocated = false;
        this.allocatedCount--;
      }
    } catch (err) {
      throw this.ioError(err, 'freeing a block failed');
    } finally {
      this.unlockWrite(e);
      this.dropIfIdle(e);
    }
  }

  private checkFence(volumeId: number, fence: number | undefined): void {
    if (fence === undefined) return;
    const seen = this.fences.get(volumeId) ?? 0;
    if (fence < seen) {
      throw new TorusError('TORUS_ERR_VOLUME_FENCED', `write to volume ${volumeId} refused: it carries lock token ${fence} but token ${seen} has been seen (a newer writer holds the volume)`);
    }
    if (fence > seen) this.fences.set(volumeId, fence);
  }

  // ---------------------------------------------------------------- flush and checkpoints

  private async syncNow(): Promise<void> {
    const files = [...this.flushFiles];
    this.flushFiles = new Set();
    const dirs = [...this.flushDirs];
    this.flushDirs = new Set();
    // Several files to sync: one syncfs of the data dir's file system costs
    // one journal commit and one device cache flush, where an fdatasync per
    // file costs one each. It also flushes other dirty data on that file
    // system, which on a dedicated data disk is only ours.
    if (files.length + dirs.length >= SYNCFS_MIN_ITEMS && this.dirFd !== null) {
      const pending = syncFileSystem(this.dirFd);
      if (pending !== null) {
        try {
          await pending;
          return;
        } catch (err) {
          this.setFailed(err, 'flush failed: the data dir could not be made durable');
          throw this.failed;
        }
      }
    }
    try {
      await this.forEachLimited(files, async (e) => {
        await this.lockRead(e);
        try {
          if (e.onDisk) await fdatasync(await this.fdOf(e));
        } finally {
          this.unlockRead(e);
        }
      });
      for (const d of dirs) {
        await fsyncDir(d).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
      }
    } catch (err) {
      // After a failed fdatasync the kernel may have dropped dirty pages:
      // nothing acknowledged since the last good flush can be trusted.
      this.setFailed(err, 'flush failed: block files could not be made durable');
      throw this.failed;
    }
  }

  /**
   * Ends the current epoch: its blocks' CRC tables become durable, then its
   * dirty-log file is deleted. Writes go on in the next epoch meanwhile.
   */
  async checkpoint(): Promise<void> {
    if (this.checkpointing) return this.checkpointing;
    this.checkpointing = this.runCheckpoint().finally(() => {
      this.checkpointing = null;
    });
    return this.checkpointing;
  }

  private async runCheckpoint(): Promise<void> {
    const old = this.epoch;
    const blocks = this.epochBlocks.get(old);
    if (!blocks || blocks.size === 0) {
      if ((this.epochWrites.get(old) ?? 0) === 0) return;
    }
    await this.dirtyLog.prepare(old + 1);
    this.epoch = old + 1;
    while ((this.epochWrites.get(old) ?? 0) > 0) {
      await new Promise<void>((r) => (this.epochDrained = r));
    }
    this.epochDrained = null;
    this.epochWrites.delete(old);
    const entries = [...(this.epochBlocks.get(old) ?? [])];
    try {
      await this.forEachLimited(entries, async (e) => {
        await this.lockRead(e);
        try {
          if (!e.onDisk || e.crc === null) return;
          const fd = await this.fdOf(e);
          await pwriteFull(fd, encodeTable(e.crc), TABLE_OFFSET);
          await fdatasync(fd);
        } finally {
          this.unlockRead(e);
        }
      });
      // Files created in the epoch must be reachable before their record goes.
      await this.syncNow();
      await this.dirtyLog.discard([old]);
    } catch (err) {
      this.setFailed(err, 'checkpoint failed: block checksums could not be made durable');
      throw this.failed;
    }
    this.epochBlocks.delete(old);
    this.log.debug({ epoch: old, blocks: entries.length }, 'checkpoint done');
  }

  private scheduleCheckpoints(): void {
    const interval = this.opts.checkpointIntervalMs ?? 60_000;
    const tick = () => {
      if (this.closing || this.closed || this.failed) return;
      void this.checkpoint().catch(() => undefined);
      this.checkpointTimer = this.clock.setTimeout(tick, interval);
    };
    this.checkpointTimer = this.clock.setTimeout(tick, interval);
  }

  private async forEachLimited<T>(items: T[], fn: (item: T) => Promise<void>): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < items.length) await fn(items[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(SYNC_CONCURRENCY, items.length) }, worker));
  }

  // ---------------------------------------------------------------- entries, fds, locks

  private entryFor(ref: BlockRef): Entry {
    const key = blockRefKey(ref);
    let e = this.entries.get(key);
    if (!e) {
      e = {
        ref,
        key,
        file: path.join(this.blocksDir, ref.volumeId.toString(16), ref.generation.toString(16), ref.index.toString(16)),
        onDisk: false,
        allocated: false,
        fd: null,
        crc: null,
        markedEpoch: 0,
        marking: null,
        markingEpoch: 0,
        readers: 0,
        writing: false,
        writersWaiting: 0,
        waiters: [],
        pending: 0,
      };
      this.entries.set(key, e);
    }
    return e;
  }

  /** Forgets an entry that holds nothing, so the map tracks only live blocks. */
  private dropIfIdle(e: Entry): void {
    if (!e.onDisk && !e.allocated && e.pending === 0 && e.readers === 0 && !e.writing) {
      this.entries.delete(e.key);
      for (const set of this.epochBlocks.values()) set.delete(e);
    }
  }

  private async lockRead(e: Entry): Promise<void> {
    while (e.writing || e.writersWaiting > 0) await new Promise<void>((r) => e.waiters.push(r));
    e.readers++;
  }

  private unlockRead(e: Entry): void {
    e.readers--;
    if (e.readers === 0) this.wake(e);
  }

  /** One writer per block, and no readers while it writes: a read never sees new data with an old CRC. */
  private async lockWrite(e: Entry): Promise<void> {
    if (e.writing || e.readers > 0) {
      e.writersWaiting++;
      try {
        while (e.writing || e.readers > 0) await new Promise<void>((r) => e.waiters.push(r));
      } finally {
        e.writersWaiting--;
      }
    }
    e.writing = true;
  }

  private unlockWrite(e: Entry): void {
    e.writing = false;
    this.wake(e);
  }

  private wake(e: Entry): void {
    const w = e.waiters;
    e.waiters = [];
    for (const f of w) f();
  }

  private async fdOf(e: Entry): Promise<number> {
    if (e.fd === null) {
      const fd = await this.openWithRoom(e.file, fs.constants.O_RDWR);
      if (e.fd === null) {
        this.rememberFd(e, fd);
      } else {
        await closeFd(fd);
      }
      return e.fd!;
    }
    return this.touchFd(e);
  }

  /** An open fd, marked most recently used (moved to the end of the LRU). */
  private touchFd(e: Entry): number {
    this.fdLru.delete(e);
    this.fdLru.set(e, true);
    return e.fd!;
  }

  private async tableOf(e: Entry): Promise<Uint32Array> {
    if (e.crc === null) {
      const fd = await this.fdOf(e);
      const h = Buffer.alloc(this.hdrBytes);
      await preadFull(fd, h, 0, h.length, 0);
      const table = decodeHeader(h, e.ref, this.blockSize, e.file);
      if (e.crc === null) e.crc = table;
    }
    return e.crc!;
  }

  private rememberFd(e: Entry, fd: number): void {
    e.fd = fd;
    this.fdLru.set(e, true);
    if (this.fdLru.size > this.fdMax) this.evictFds(Math.floor(this.fdMax * 0.9));
  }

  private forgetFd(e: Entry): void {
    e.fd = null;
    this.fdLru.delete(e);
  }

  /** Opens a block file; on EMFILE closes idle files, lowers fdMax, and tries once more. */
  private async openWithRoom(file: string, flags: number): Promise<number> {
    try {
      return await openFd(file, flags);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EMFILE' || this.fdLru.size < 2) throw err;
      this.fdMax = Math.max(16, Math.floor(this.fdLru.size / 2));
      this.log.warn({ fdMax: this.fdMax }, 'too many open files; keeping fewer block files open');
      this.evictFds(this.fdMax);
      return openFd(file, flags);
    }
  }

  /** Closes least recently used idle block files until at most `target` stay open. */
  private evictFds(target: number): void {
    for (const x of this.fdLru.keys()) {
      if (this.fdLru.size <= target) break;
      if (x.readers > 0 || x.writing || x.fd === null) continue;
      const fd = x.fd;
      this.forgetFd(x);
      // fsync is per inode on Linux: a flush reopens the file and still
      // flushes what was written through this descriptor.
      fs.close(fd, () => undefined);
    }
  }

  // ---------------------------------------------------------------- start-up and repair

  private async start(): Promise<void> {
    await mkdir(this.blocksDir, { recursive: true });
    this.dirFd = await openFd(this.opts.dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    await this.checkMeta();
    await this.scanBlocks();
    const { log, dirty, leftovers } = await DirtyLog.open(path.join(this.opts.dir, 'dirty'), this.opts.logger);
    this.dirtyLog = log;
    let repaired = 0;
    for (const ref of dirty) {
      const e = this.entries.get(blockRefKey(ref));
      if (!e?.onDisk) continue;
      await this.repair(e);
      repaired++;
    }
    if (leftovers.length > 0) {
      await log.discard(leftovers);
      this.log.info({ blocks: repaired, epochs: leftovers.length }, 'checksums of blocks written before an unclean stop recomputed');
    }
    this.epoch = (leftovers.length > 0 ? Math.max(...leftovers) : 0) + 1;
    this.log.info({ dir: this.opts.dir, blockSize: this.blockSize, capacity: this.opts.capacity, blocks: this.allocatedCount, blockSlots: this.blockSlots }, 'block store open');
    this.scheduleCheckpoints();
  }

  /**
   * Recomputes a block's CRC table from its data and makes it durable. Only
   * for blocks the dirty log names: their pages may hold unflushed or torn
   * writes whose CRCs never reached the file.
   */
  private async repair(e: Entry): Promise<void> {
    const fd = await this.fdOf(e);
    const data = Buffer.alloc(this.blockSize);
    await preadFull(fd, data, 0, data.length, this.hdrBytes);
    const table = new Uint32Array(pageCount(this.blockSize));
    crc32cPages(data, PAGE_BYTES, table);
    // The header may be missing or torn too (a file created just before the crash).
    await ftruncate(fd, this.fileBytes);
    await pwriteFull(fd, encodeHeader(e.ref, this.blockSize, table), 0);
    await fdatasync(fd);
    e.crc = table;
  }

  private async checkMeta(): Promise<void> {
    const file = path.join(this.opts.dir, STORE_META);
    let meta: { schema: number; blockSize: number } | null = null;
    try {
      meta = JSON.parse(await readFile(file, 'utf8')) as { schema: number; blockSize: number };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new TorusError('TORUS_ERR_STORE_CORRUPT', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
      }
    }
    if (meta === null) {
      const tmp = `${file}.tmp`;
      await writeFile(tmp, JSON.stringify({ schema: 1, blockSize: this.blockSize }) + '\n', { flush: true });
      await rename(tmp, file);
      await fsyncDir(this.opts.dir);
      return;
    }
    if (meta.blockSize !== this.blockSize) {
      throw new TorusError('TORUS_ERR_STORE_CORRUPT', `the data dir holds blocks of ${meta.blockSize} bytes but the cluster uses ${this.blockSize}; use another --data-dir or remove ${this.opts.dir}`);
    }
  }

  private async scanBlocks(): Promise<void> {
    const hex = /^[0-9a-f]+$/;
    for (const v of await readdir(this.blocksDir)) {
      if (!hex.test(v)) continue;
      const vdir = path.join(this.blocksDir, v);
      for (const g of await readdir(vdir)) {
        if (!hex.test(g)) continue;
        const gdir = path.join(vdir, g);
        this.knownDirs.add(gdir);
        for (const i of await readdir(gdir)) {
          if (!hex.test(i)) continue;
          const e = this.entryFor(blockRef(parseInt(v, 16), parseInt(g, 16), parseInt(i, 16)));
          e.onDisk = true;
          e.allocated = true;
          this.allocatedCount++;
        }
      }
    }
  }

  // ---------------------------------------------------------------- checks

  private checkRange(offset: number, length: number): void {
    assert(Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.blockSize, 'range lies within one block');
  }

  private checkWritable(): void {
    if (this.failed) throw this.failed;
    if (this.closing) throw new TorusError('TORUS_ERR_STORE_CLOSED', 'block store is closing');
  }

  private ioError(err: unknown, msg: string): TorusError {
    if (err instanceof TorusError) return err;
    const code = (err as NodeJS.ErrnoException)?.code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return new TorusError('TORUS_ERR_STORE_NO_SPACE', `${msg}: the disk under the data dir is full`, { cause: err });
    return new TorusError('TORUS_ERR_STORE_IO', `${msg}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }

  private setFailed(err: unknown, msg: string): void {
    if (this.failed) return;
    this.failed = err instanceof TorusError ? err : this.ioError(err, msg);
    this.log.error({ err: this.failed }, 'block store failed; writes are refused until restart');
  }
}
