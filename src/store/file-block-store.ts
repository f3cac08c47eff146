import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { ABSENT_HEAD, ABSENT_META, absentHead, absentMeta, type BlockHead, type BlockMeta, type BlockState, type ListedBlock } from '../model/block-meta.js';
import { blockRef, blockRefKey, type BlockRef } from '../model/block-ref.js';
import { isVersion, VERSION_ABSENT, VERSION_LEGACY, type Version } from '../model/version.js';
import { assert } from '../util/assert.js';
import { BufferPool, releaseBuffer, retainBuffer } from '../util/buffer-pool.js';
import { systemClock, type Clock } from '../util/clock.js';
import { GroupRun } from '../util/group-run.js';
import { Recency } from '../util/recency.js';
import { crc32cCombineRange, crc32cPages } from '../util/crc32c.js';
import { VERSION as RELEASE } from '../version.js';
import { blockFileBytes, decodeHeader, encodeHeader, headerBytes, newCrcTable, PAGE_BYTES, pageCount, tableDigest, type BlockHeader } from './block-file.js';
import type { StoreUsage } from './block-store.js';
import { DirtyLog } from './dirty-log.js';
import { COLD_WRITE_PIECE_BYTES } from './fs-async.js';
import type { LocalBlockStore, SummedRead } from './local-store.js';
import { ReadBatcher } from './read-batch.js';
import { RefIndex } from './ref-index.js';
import { nodeStoreIo, writeFileDurably, type StoreIo } from './store-io.js';
import { loadSuspects, saveSuspects } from './suspect-file.js';
import { TableCache } from './table-cache.js';

/**
 * The block store of one peer, on its local disk: one file per block, a
 * CRC32C per 4 KiB page and the block's state and version in the file's
 * header (block-file.ts), data written in place.
 *
 * Durability: a write lands in the page cache and is acknowledged; FLUSH
 * fdatasyncs every block file written since the last flush and the folders
 * where files were created or removed; FUA does the same for one block.
 *
 * Checksums and versions across crashes: the CRC table and the version live
 * in memory while the store runs and reach the file at checkpoints (and
 * whenever the whole header is written anyway: file creation, tombstones,
 * installs, FUA). Before the first change to a block in a checkpoint epoch,
 * the dirty log (dirty-log.ts) durably names the block. A crash can leave a
 * stale header only on blocks so named: start-up recomputes their CRCs from
 * their data (an unflushed write may be lost or torn, as on any disk, but
 * never reads as a checksum error) and reports them **suspect**: their
 * header's version may be older than their bytes, so they are not trusted
 * until a coordinator confirms or replaces them (docs/replication.md,
 * "Versions"). Suspect blocks are kept in suspects.json (suspect-file.ts)
 * until then, across restarts. Every other page is checked against a CRC
 * that was made durable with it.
 *
 * Tombstones (state zero): the header alone, the data truncated away. They
 * are not charged against the cap: a header is at most one 4 KiB page for
 * blocks up to 4 MiB, tombstones are bounded by the volumes' sizes, and a
 * TRIM (which makes them) must never fail for want of space.
 *
 * Space: capacity is charged per data block (header + block size). A
 * change that needs a new data block beyond the cap fails with
 * TORUS_ERR_STORE_NO_SPACE before anything is written.
 *
 * Start-up reads the header of every block (meta() answers from memory):
 * one read of a header page per block.
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
   * crash, start-up reads and rehashes at most this many blocks (and that
   * many come back suspect). Default 8192.
   */
  readonly epochBlocksMax?: number;
  /** Block files kept open at most (lowered by itself when the process hits EMFILE). */
  readonly fdMax?: number;
  /**
   * CRC tables kept in memory at most, beyond those of blocks changed since
   * the last checkpoint (table-cache.ts). Default: as many as fit in 8 MiB
   * (8192 for 1 MiB blocks), at least 256.
   */
  readonly crcTablesMax?: number;
  /** Called on every CRC mismatch (torusd counts them in a metric). */
  readonly onCrcFailure?: (ref: BlockRef, page: number) => void;
  /**
   * Where read regions come from: read() returns a view of a pooled buffer,
   * which the caller may hand back with releaseBuffer() once done with it.
   */
  readonly pool?: BufferPool;
  /**
   * The file-system calls (store-io.ts): node's by default; tests pass a
   * model disk that loses what was not synced at a crash.
   */
  readonly io?: StoreIo;
}

interface Entry {
  readonly ref: BlockRef;
  readonly key: string;
  readonly file: string;
  /** The block file exists (a data block or a tombstone). */
  onDisk: boolean;
  /** What meta() reports. Outside a change in progress, data and zero hold exactly when onDisk. */
  state: BlockState;
  version: Version;
  suspect: boolean;
  /** In the ordered index (it holds a block or is suspect). */
  indexed: boolean;
  /** Counted against capacity: a data block, or a change holds a reservation for one. */
  allocated: boolean;
  /** Changes in progress that reserved room for this block to become data. */
  reservations: number;
  fd: number | null;
  /** The CRC table, when in memory (the table cache decides how long). */
  crc: Uint32Array | null;
  /** Used since the table cache's last sweep. */
  tableUsed: boolean;
  /** The digest of the CRC table, cached; null when it must be computed from `crc` again. */
  digest: number | null;
  /** Epoch whose dirty-log record for this block is durable (0: none). */
  markedEpoch: number;
  marking: Promise<void> | null;
  markingEpoch: number;
  readers: number;
  writing: boolean;
  /** Writers waiting for the lock: new readers queue behind them. */
  writersWaiting: number;
  waiters: (() => void)[];
  /** Changes admitted but not finished (they keep the entry in the map). */
  pending: number;
  /**
   * Its data pages may not be in the page cache yet: writes go in pieces
   * (fs-async.ts COLD_WRITE_PIECE_BYTES) so that the kernel caches them in
   * small folios. True until a write of the whole block; a process that
   * starts has none of them cached.
   */
  coldPages: boolean;
  /**
   * A change failed part way and its CRCs could not be taken again from
   * the file (the disk failed that read too): the table in memory may not
   * describe the pages. Reads and scrubs refuse (TORUS_ERR_STORE_IO, not a
   * checksum failure: nothing rotted), a change and a checkpoint take the
   * CRCs from the file first, and a new table (install, a block made data
   * or a tombstone, a drop) clears it. The block is suspect meanwhile.
   */
  checksumsUnknown: boolean;
}

const STORE_META = 'store.json';
const SUSPECTS = 'suspects.json';
/**
 * store.json schema. 1: torus 0.1.0 (block file format 1). 2: block file
 * format 2 (state and version), suspects.json. A schema-1 dir is upgraded
 * in place: its block files read as format 1 and are rewritten as format 2
 * when their header is next written.
 */
const STORE_SCHEMA = 2;
const SYNC_CONCURRENCY = 8;
/**
 * Dirty-log records made ahead (premark) that wait unclaimed in one epoch, at
 * most: twice the coordinator's lead (EXPECT_AHEAD_BLOCKS, 256), so a
 * sequential writer's hints are never cut short.
 */
export const PREMARK_MAX = 512;
/** Header reads in flight at start-up. */
const OPEN_READ_CONCURRENCY = 32;
/** From this many files and folders to sync, one syncfs replaces them. */
const SYNCFS_MIN_ITEMS = 3;
/** Memory for CRC tables not tied to a change in progress (FileBlockStoreOptions.crcTablesMax). */
const TABLE_CACHE_BYTES = 8 * 1024 * 1024;

export class FileBlockStore implements LocalBlockStore {
  readonly blockSize: number;
  private readonly opts: FileBlockStoreOptions;
  private readonly pool: BufferPool;
  private readonly io: StoreIo;
  private readonly batch: ReadBatcher;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly blocksDir: string;
  private readonly entries = new Map<string, Entry>();
  private readonly index = new RefIndex<Entry>();
  private readonly hdrBytes: number;
  private readonly fileBytes: number;
  private readonly blockSlots: number;
  private fdMax: number;
  /** Entries with an open fd, in use order (util/recency.ts: no table rebuild per use). */
  private readonly fdLru = new Recency<Entry>();
  /** Which blocks keep their CRC table in memory. */
  private readonly tables: TableCache<Entry>;
  private dirtyLog!: DirtyLog;
  private epoch = 1;
  /**
   * Dirty-log records made ahead of writes (premark), per epoch, by block
   * key: a write to such a block in that epoch waits for this record instead
   * of one of its own. Claimed ones leave; the rest go with the epoch.
   */
  private readonly premarked = new Map<number, Map<string, Promise<void>>>();
  /** Blocks named in the dirty log per epoch (what a checkpoint makes durable). */
  private readonly epochBlocks = new Map<number, Set<Entry>>();
  /** Changes in progress per epoch; a checkpoint waits for its epoch's to finish. */
  private readonly epochWrites = new Map<number, number>();
  private epochDrained: (() => void) | null = null;
  /** Block files written since the last flush, and folders changed since. */
  private flushFiles = new Set<Entry>();
  private flushDirs = new Set<string>();
  /**
   * Syncs, one at a time (flush, checkpoints and close share them): a sync
   * that started before a caller's changes does not cover them, and one
   * that found the lists taken by another still running would return
   * before that one made them durable.
   */
  private readonly syncs = new GroupRun(() => this.syncNow());
  private readonly knownDirs = new Set<string>();
  private allocatedCount = 0;
  private readonly checkpoints = new GroupRun(() => this.runCheckpoint());
  /** suspects.json as last written (to skip rewriting it unchanged). */
  private suspectsSaved = '';
  private suspectsSaving: Promise<void> = Promise.resolve();
  /** The store folder, held open as the handle for syncfs. */
  private dirFd: number | null = null;
  private checkpointTimer: { cancel(): void } | null = null;
  private failed: TorusError | null = null;
  private closing = false;
  private closed = false;
  /**
   * The page CRCs a read computes, checked against the block's table and
   * then forgotten: one array for the store's life, as checkPages runs
   * without a pause. A fresh array per read cost a malloc each (and, for a
   * table small enough to live in V8's heap, its move out for the native
   * call: util/crc32c.ts).
   */
  private readonly checkCrcs: Uint32Array;

  private constructor(opts: FileBlockStoreOptions) {
    assert(opts.blockSize >= PAGE_BYTES && (opts.blockSize & (opts.blockSize - 1)) === 0, 'block size is a power of two of at least one page');
    this.opts = opts;
    this.io = opts.io ?? nodeStoreIo;
    this.batch = new ReadBatcher(
      this.io.batchesReads ? undefined : null,
      (errno) => this.log.warn({ errno }, 'the kernel refused io_uring (seccomp, kernel.io_uring_disabled or too old): page-cache reads go one system call each'),
      this.io.readCached.bind(this.io),
    );
    this.pool = opts.pool ?? new BufferPool();
    this.blockSize = opts.blockSize;
    this.log = opts.logger.child({ module: 'store' });
    this.clock = opts.clock ?? systemClock;
    this.blocksDir = path.join(opts.dir, 'blocks');
    this.hdrBytes = headerBytes(opts.blockSize);
    this.fileBytes = blockFileBytes(opts.blockSize);
    this.blockSlots = Math.max(0, Math.floor(opts.capacity / this.fileBytes));
    this.fdMax = opts.fdMax ?? 4096;
    const tableBytes = 4 * pageCount(opts.blockSize);
    this.checkCrcs = new Uint32Array(pageCount(opts.blockSize));
    this.tables = new TableCache<Entry>(
      opts.crcTablesMax ?? Math.max(256, Math.floor(TABLE_CACHE_BYTES / tableBytes)),
      (e) => this.tableDroppable(e),
      (e) => {
        // Kept: meta() answers from memory, and LIST asks it of every block.
        if (e.state === 'data' && e.digest === null) e.digest = tableDigest(e.crc!);
      },
    );
  }

  /**
   * A table may leave memory when the block's header on disk holds it: no
   * change is running or waiting on the block, and none made since the
   * last checkpoint (each such block is in an epoch's set until its header
   * is durable).
   */
  private tableDroppable(e: Entry): boolean {
    if (e.pending > 0 || e.writing || e.readers > 0) return false;
    for (const set of this.epochBlocks.values()) if (set.has(e)) return false;
    return true;
  }

  /** CRC tables in memory now (for tests). */
  tablesHeld(): number {
    return this.tables.size;
  }

  /** Opens (or creates) the store, repairing checksums after an unclean stop. */
  static async open(opts: FileBlockStoreOptions): Promise<FileBlockStore> {
    const store = new FileBlockStore(opts);
    await store.start();
    return store;
  }

  // ---------------------------------------------------------------- LocalBlockStore: reads

  meta(ref: BlockRef): BlockMeta {
    const e = this.entries.get(blockRefKey(ref));
    return e === undefined ? ABSENT_META : this.metaOf(e);
  }

  head(ref: BlockRef): BlockHead {
    const e = this.entries.get(blockRefKey(ref));
    if (e === undefined) return ABSENT_HEAD;
    if (readsAbsent(e)) return absentHead(e.suspect);
    return { state: e.state, version: e.version, suspect: e.suspect };
  }

  read(ref: BlockRef, offset: number, length: number): Promise<Buffer> {
    return this.readChecked(ref, offset, length, null);
  }

  async readSummed(ref: BlockRef, offset: number, length: number): Promise<SummedRead> {
    const sum: { crc32c: number | null } = { crc32c: null };
    const data = await this.readChecked(ref, offset, length, sum);
    return { data, crc32c: sum.crc32c };
  }

  /** Reads and checks the pages; `sum` (when given) gets the bytes' CRC-32C if they are whole pages, from the table they were checked against. */
  private async readChecked(ref: BlockRef, offset: number, length: number, sum: { crc32c: number | null } | null): Promise<Buffer> {
    this.checkRange(offset, length);
    if (this.closed) throw new TorusError('TORUS_ERR_STORE_CLOSED', 'block store is closed');
    const e = this.entries.get(blockRefKey(ref));
    if (!e) return this.zeroes(length);
    // Fast paths avoid awaiting what is already at hand: each await is a
    // microtask turn on the hot path of every read.
    if (e.writing || e.writersWaiting > 0) await this.lockRead(e);
    else e.readers++;
    let region: Buffer | null = null;
    try {
      if (e.state !== 'data' || length === 0) return this.zeroes(length);
      if (e.checksumsUnknown) throw this.checksumsUnknownError(e);
      const p0 = Math.floor(offset / PAGE_BYTES);
      const p1 = Math.ceil((offset + length) / PAGE_BYTES);
      const base = p0 * PAGE_BYTES;
      const fd = e.fd !== null ? this.touchFd(e) : await this.fdOf(e);
      const table = this.tables.use(e) ?? (await this.tableOf(e));
      region = this.pool.acquire((p1 - p0) * PAGE_BYTES);
      const pending = this.batch.read(fd, region, 0, region.length, this.hdrBytes + base);
      if (pending !== null) await pending;
      this.checkPages(e, region, p0, p1, table);
      if (sum !== null && offset === base && length === region.length) sum.crc32c = crc32cCombineRange(table, p0, p1, PAGE_BYTES);
      const out = region.subarray(offset - base, offset - base + length);
      region = null;
      return out;
    } catch (err) {
      // The store's own codes only (a checksum failure is one already).
      throw this.ioError(err, 'block read failed');
    } finally {
      // Not handed out (a failed read or check): back to the pool. A pread
      // still running cannot be: the await above saw it finish or fail.
      if (region !== null) releaseBuffer(region);
      this.unlockRead(e);
    }
  }

  /** Zeroes for a block or range that holds none, from the pool like any read. */
  private zeroes(length: number): Buffer {
    return this.pool.acquire(length).fill(0);
  }

  async verify(ref: BlockRef): Promise<BlockMeta> {
    if (this.closed) throw new TorusError('TORUS_ERR_STORE_CLOSED', 'block store is closed');
    const e = this.entries.get(blockRefKey(ref));
    if (!e) return ABSENT_META;
    await this.lockRead(e);
    try {
      if (e.state === 'data') {
        if (e.checksumsUnknown) throw this.checksumsUnknownError(e);
        const fd = await this.fdOf(e);
        const table = this.tables.use(e) ?? (await this.tableOf(e));
        // From the pool, like a read's region: garbage collection asks the
        // owners to verify every leftover's block, and a fresh block-sized
        // Buffer per call piled up as external memory (peak RSS 156-160
        // MiB on the owners after a join, in the bench's rebuild phase).
        const data = this.pool.acquire(this.blockSize);
        try {
          await this.io.read(fd, data, 0, data.length, this.hdrBytes);
          this.checkPages(e, data, 0, pageCount(this.blockSize), table);
        } finally {
          releaseBuffer(data);
        }
      }
      return this.metaOf(e);
    } catch (err) {
      throw this.ioError(err, 'verifying a block failed');
    } finally {
      this.unlockRead(e);
    }
  }

  list(opts: { readonly volumeId?: number; readonly after?: BlockRef | null; readonly limit: number }): ListedBlock[] {
    return this.index.list(opts).map((e) => ({ ref: e.ref, ...this.metaOf(e) }));
  }

  suspects(): BlockRef[] {
    return this.index.list({ limit: Number.MAX_SAFE_INTEGER }, (e) => e.suspect).map((e) => e.ref);
  }

  /** Volumes that have blocks here, tombstones and suspect blocks included (for garbage collection). */
  volumeIds(): number[] {
    return this.index.volumeIds();
  }

  usage(): StoreUsage {
    return { capacity: this.opts.capacity, used: this.allocatedCount * this.fileBytes, blocks: this.allocatedCount };
  }

  /** Data blocks this store can hold at most, given its cap. */
  capacityBlocks(): number {
    return this.blockSlots;
  }

  // ---------------------------------------------------------------- LocalBlockStore: changes

  async write(ref: BlockRef, offset: number, data: Buffer, version: Version, opts: { readonly fua: boolean; readonly pageCrcs?: Uint32Array }): Promise<void> {
    this.checkRange(offset, data.length);
    this.checkVersion(version);
    const e = this.entryFor(ref);
    // Our own reference for as long as the write runs: a caller that gave up
    // (a timeout above us) may release its own while a pwrite still reads it.
    retainBuffer(data);
    try {
      await this.change(e, { reserve: true, fua: opts.fua, version }, 'block write failed', async () => {
        if (e.state !== 'data') await this.makeData(e, version);
        await this.writePages(e, offset, data.length, data, opts.pageCrcs ?? null);
        e.version = version;
        if (opts.fua) await this.writeHeader(e);
      });
    } finally {
      releaseBuffer(data);
    }
  }

  async zero(ref: BlockRef, offset: number, length: number, version: Version, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void> {
    this.checkRange(offset, length);
    this.checkVersion(version);
    const whole = offset === 0 && length === this.blockSize;
    const e = this.entryFor(ref);
    // Without punch (NBD NO_HOLE) the range must end up allocated, so that
    // later writes to it cannot fail for space: that may need a new block.
    await this.change(e, { reserve: !opts.punch, fua: opts.fua, version }, 'block zero failed', async () => {
      // Decided under the block's lock, on the state the change applies to.
      if (opts.punch && (whole || e.state !== 'data')) {
        // A whole-block punch frees the data; a partial punch of a block
        // that holds none leaves it holding none. Either way a tombstone.
        await this.makeTombstone(e, version);
        return;
      }
      await this.makeData(e, version);
      await this.writePages(e, offset, length, null);
      e.version = version;
      if (opts.fua) await this.writeHeader(e);
    });
  }

  /**
   * Written in place under the dirty log, like every other change, rather
   * than to a temp file renamed over the block: crash-safe the same way (a
   * crash mid-install leaves the block named by the dirty log, so it comes
   * back suspect with repaired CRCs, never trusted half-written), with no
   * extra fsync per install when fua is off and no second copy of the block
   * charged against the disk while it is written.
   */
  async install(ref: BlockRef, data: Buffer | null, version: Version, opts: { readonly fua: boolean }): Promise<void> {
    this.checkVersion(version);
    assert(data === null || data.length === this.blockSize, 'an installed block is blockSize bytes');
    const e = this.entryFor(ref);
    // Our own reference while the install runs, as for a write: the copy's
    // reader gives its buffer back once the call returns or times out.
    if (data !== null) retainBuffer(data);
    try {
      await this.installNow(e, data, version, opts);
    } finally {
      if (data !== null) releaseBuffer(data);
    }
  }

  private async installNow(e: Entry, data: Buffer | null, version: Version, opts: { readonly fua: boolean }): Promise<void> {
    await this.change(e, { reserve: data !== null, fua: opts.fua, version }, 'block install failed', async () => {
      if (data === null) {
        await this.makeTombstone(e, version);
      } else {
        const table = new Uint32Array(pageCount(this.blockSize));
        crc32cPages(data, PAGE_BYTES, table);
        const fd = e.onDisk ? await this.fdOf(e) : await this.createFile(e);
        // Extends a tombstone's file back to a whole block (sparse zeroes).
        await this.io.ftruncate(fd, this.fileBytes);
        // The data in pieces (as any write into pages that may not be
        // cached: fs-async.ts COLD_WRITE_PIECE_BYTES), then the header. In
        // that order a write that fails part way (a full disk) leaves no
        // header whose CRC table the pages do not match: the file keeps
        // the header it had, which the block's memory still describes (or
        // none, for a new file: unreadable, so repaired at the next
        // start). Header first, a failed install into a new block left a
        // valid header over part of its data, and the block failed its
        // checksums after a restart (the crash-point test with disk faults).
        const wrote = this.io.writeCached(fd, data, this.hdrBytes, COLD_WRITE_PIECE_BYTES);
        if (wrote !== null) await wrote;
        const header = this.io.writeCached(fd, encodeHeader(e.ref, this.blockSize, { state: 'data', version, table }), 0);
        if (header !== null) await header;
        e.coldPages = false;
        this.tables.hold(e, table);
        e.checksumsUnknown = false;
        e.digest = null;
        e.state = 'data';
        e.version = version;
        this.recount(e);
        this.reindex(e);
        this.flushFiles.add(e);
      }
      e.suspect = false;
    });
  }

  async confirm(ref: BlockRef, version: Version): Promise<void> {
    const e = this.entries.get(blockRefKey(ref));
    if (e === undefined || (e.state === 'absent' && !e.onDisk)) {
      // Confirming that a block is absent: nothing to write.
      assert(version === VERSION_ABSENT, 'an absent block is confirmed at VERSION_ABSENT');
      if (e !== undefined) {
        e.suspect = false;
        this.reindex(e);
        this.dropIfIdle(e);
      }
      return;
    }
    this.checkVersion(version);
    // A change like any other: the dirty log names the block before its
    // version moves, so the new version reaches the header at the epoch's
    // checkpoint, and a crash before that brings the block back suspect.
    await this.change(e, { reserve: false, fua: false, version }, 'confirming a block failed', async () => {
      if (e.state === 'absent') return;
      e.version = version;
      e.suspect = false;
    });
  }

  markSuspect(ref: BlockRef): void {
    const e = this.entryFor(ref);
    e.suspect = true;
    this.reindex(e);
  }

  async drop(ref: BlockRef): Promise<void> {
    const e = this.entries.get(blockRefKey(ref));
    if (e === undefined) return;
    if (!e.onDisk && e.state === 'absent') {
      e.suspect = false;
      this.reindex(e);
      this.dropIfIdle(e);
      return;
    }
    // Named in the dirty log first: if the unlink does not survive a crash,
    // the file that comes back is suspect, not a trusted old copy.
    await this.change(e, { reserve: false, fua: false, version: null }, 'dropping a block failed', async () => {
      await this.removeFile(e);
      e.suspect = false;
    });
  }

  /**
   * Resolves once every change acknowledged before the call is durable.
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
    return this.syncs.run();
  }

  /** Durable before it resolves: the volume's folder is removed and the removal synced. */
  async deleteVolume(volumeId: number): Promise<void> {
    this.checkWritable();
    for (const e of [...this.entries.values()]) {
      if (e.ref.volumeId !== volumeId) continue;
      await this.lockWrite(e);
      try {
        if (e.fd !== null) {
          const fd = e.fd;
          this.forgetFd(e);
          await this.io.close(fd).catch(() => undefined);
        }
        this.flushFiles.delete(e);
        this.setAbsent(e);
        e.suspect = false;
      } finally {
        this.unlockWrite(e);
        this.reindex(e);
        this.dropIfIdle(e);
      }
    }
    const dir = path.join(this.blocksDir, volumeId.toString(16));
    try {
      await this.io.removeTree(dir);
    } catch (err) {
      throw this.ioError(err, `removing ${dir} failed`);
    }
    for (const d of [...this.knownDirs]) if (d.startsWith(dir + path.sep)) this.knownDirs.delete(d);
    this.flushDirs.add(this.blocksDir);
    await this.flush();
    try {
      await this.saveSuspectsIfChanged();
    } catch (err) {
      this.setFailed(err, 'the suspect list could not be made durable');
      throw this.failed;
    }
  }

  /** Flushes and checkpoints everything; the next open needs no repair. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.checkpointTimer?.cancel();
    // A failure is reported after the files are closed: the store is closed
    // either way. A store that had failed made nothing durable since: its
    // close says so (it once resolved as if all were done).
    let failure: TorusError | null = this.failed;
    if (!this.failed) {
      try {
        await this.syncs.run();
        await this.checkpoint();
        // No writes can start now: the current epoch's log holds nothing to repair.
        await this.dirtyLog.discard([this.epoch]);
      } catch (err) {
        // The log stays (or part of it): the next start repairs what it names.
        failure = this.ioError(err, 'closing the store failed: it could not all be made durable');
      }
    }
    await this.dirtyLog.close();
    if (this.dirFd !== null) await this.io.close(this.dirFd).catch(() => undefined);
    this.dirFd = null;
    for (const e of [...this.fdLru.keys()]) {
      const fd = e.fd!;
      this.forgetFd(e);
      await this.io.close(fd).catch(() => undefined);
    }
    this.closed = true;
    if (failure !== null) throw failure;
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
    await this.checkpoints.current?.catch(() => undefined);
    for (const e of this.fdLru.keys()) if (e.fd !== null) this.io.closeLater(e.fd);
    await this.dirtyLog.close();
  }

  // ---------------------------------------------------------------- changes: mechanism

  /**
   * Runs one change of a block: room reserved first (NO_SPACE before
   * anything is written), the block named in the dirty log, then `body`
   * under the block's write lock; with fua, a flush after.
   */
  private async change(e: Entry, opts: { readonly reserve: boolean; readonly fua: boolean; readonly version: Version | null }, what: string, body: () => Promise<void>): Promise<void> {
    try {
      this.checkWritable();
    } catch (err) {
      this.dropIfIdle(e); // a refused change leaves no entry behind
      throw err;
    }
    let reserved = false;
    if (opts.reserve && !e.allocated) {
      if (this.allocatedCount >= this.blockSlots) {
        this.dropIfIdle(e);
        throw new TorusError('TORUS_ERR_STORE_NO_SPACE', `the store is full: ${this.allocatedCount} of ${this.blockSlots} blocks of ${this.blockSize} bytes are in use (--size ${this.opts.capacity})`);
      }
    }
    if (opts.reserve) {
      e.reservations++;
      reserved = true;
      this.recount(e);
    }
    const epoch = this.epoch;
    this.epochWrites.set(epoch, (this.epochWrites.get(epoch) ?? 0) + 1);
    e.pending++;
    try {
      if (e.markedEpoch !== epoch) await this.markDirty(e, epoch);
      if (e.writing || e.readers > 0) await this.lockWrite(e);
      else e.writing = true;
      try {
        await body();
      } catch (err) {
        await this.afterFailedChange(e, opts.version, err);
        throw err;
      } finally {
        this.unlockWrite(e);
      }
    } catch (err) {
      throw this.ioError(err, what);
    } finally {
      if (reserved) {
        e.reservations--;
        this.recount(e);
      }
      e.pending--;
      const left = this.epochWrites.get(epoch)! - 1;
      this.epochWrites.set(epoch, left);
      if (left === 0 && this.epochDrained) this.epochDrained();
      this.reindex(e);
      this.dropIfIdle(e);
    }
    if (opts.fua) await this.flush();
  }

  /**
   * A change that failed part way (a full or failing disk) may have left
   * part of its bytes, or a header naming its version over older data: the
   * block is suspect from then on (a coordinator confirms or replaces it
   * before it is trusted again; the suspect list keeps it so across a
   * restart), it takes the version its header names if it had none yet (a
   * first write: a checkpoint would otherwise write a header without a
   * version, and the process would stop on that assertion), and its CRCs
   * are taken from what the file holds, so that it reads without checksum
   * errors. Not after a checksum failure: that block is suspect already,
   * and fresh CRCs would hide its bad page. Found by the crash-point test
   * with disk faults.
   */
  private async afterFailedChange(e: Entry, version: Version | null, err: unknown): Promise<void> {
    e.suspect = true;
    this.reindex(e);
    if (e.state !== 'absent' && e.version === VERSION_ABSENT && version !== null) e.version = version;
    if (err instanceof TorusError && err.code === 'TORUS_ERR_STORE_CRC_MISMATCH') return;
    if (e.state === 'data' && e.onDisk) {
      e.checksumsUnknown = true;
      await this.rehashWhole(e).catch(() => undefined);
    }
  }

  /** Takes every page's CRC from what the file holds (after a change failed part way). */
  private async rehashWhole(e: Entry): Promise<void> {
    await this.rehashPages(e, await this.fdOf(e), 0, pageCount(this.blockSize));
    e.checksumsUnknown = false;
  }

  private checksumsUnknownError(e: Entry): TorusError {
    return new TorusError('TORUS_ERR_STORE_IO', `block ${e.key}: a change failed part way and its checksums could not be read back from the disk; it is suspect until replaced`, { details: { block: e.key } });
  }

  /**
   * Names blocks this store does not hold in the dirty log now, without
   * waiting: the writes a sequential writer is about to make to them then
   * find their record durable (or on its way) and skip a commit of their
   * own. A block named and never written is only suspect after a crash,
   * like one whose write did not survive it. At most PREMARK_MAX records
   * wait unclaimed per epoch; a hint beyond that is dropped.
   */
  premark(refs: readonly BlockRef[]): void {
    if (this.failed !== null || this.closed) return;
    const epoch = this.epoch;
    let ahead = this.premarked.get(epoch);
    for (const ref of refs) {
      if (ahead !== undefined && ahead.size >= PREMARK_MAX) return;
      const key = blockRefKey(ref);
      if (ahead?.has(key)) continue;
      const e = this.entries.get(key);
      if (e !== undefined && (e.onDisk || e.markedEpoch === epoch || e.markingEpoch === epoch)) continue;
      if (ahead === undefined) this.premarked.set(epoch, (ahead = new Map()));
      const record = this.dirtyLog.mark(ref, epoch);
      // A failure reaches the write that claims the record (and the dirty
      // log refuses every later one); unclaimed, it is nobody's.
      record.catch(() => undefined);
      ahead.set(key, record);
    }
  }

  /** The dirty-log record must be durable before the block file changes. */
  private async markDirty(e: Entry, epoch: number): Promise<void> {
    if (e.markedEpoch === epoch) return;
    if (e.marking === null || e.markingEpoch !== epoch) {
      e.markingEpoch = epoch;
      const ahead = this.premarked.get(epoch);
      const premarked = ahead?.get(e.key);
      if (premarked !== undefined) ahead!.delete(e.key);
      e.marking = (premarked ?? this.dirtyLog.mark(e.ref, epoch)).then(() => {
        e.markedEpoch = Math.max(e.markedEpoch, epoch);
        let set = this.epochBlocks.get(epoch);
        if (!set) this.epochBlocks.set(epoch, (set = new Set()));
        set.add(e);
        if (set.size >= (this.opts.epochBlocksMax ?? 8192) && epoch === this.epoch) void this.checkpoint().catch(() => undefined);
      });
    }
    await e.marking;
  }

  /** Makes the block a data block (new file, or a tombstone grown back); its version is the caller's to set. */
  private async makeData(e: Entry, version: Version): Promise<void> {
    if (e.state === 'data') return;
    const table = newCrcTable(this.blockSize);
    const fd = e.onDisk ? await this.fdOf(e) : await this.createFile(e);
    // The data pages must read as zeroes, as the fresh table says. A file
    // already there is normally a tombstone (its header alone: cutting it
    // changes nothing), but one left by an install that failed part way
    // holds some of its bytes: extended in place they failed their
    // checksums at the next write (found by the crash-point test with
    // disk faults).
    if (e.onDisk) await this.io.ftruncate(fd, this.hdrBytes);
    await this.io.ftruncate(fd, this.fileBytes);
    // Headers are small: written on the loop thread like small data writes (fs-async.ts pwriteCached).
    const wrote = this.io.writeCached(fd, encodeHeader(e.ref, this.blockSize, { state: 'data', version, table }), 0);
    if (wrote !== null) await wrote;
    this.tables.hold(e, table);
    e.checksumsUnknown = false;
    e.digest = null;
    e.state = 'data';
    // Fresh file pages: none cached (a tombstone's only page is its header).
    e.coldPages = true;
    this.recount(e);
    this.reindex(e);
    this.flushFiles.add(e);
  }

  /** Leaves a header-only file in state zero: reads as zeroes, frees the data, keeps the version. */
  private async makeTombstone(e: Entry, version: Version): Promise<void> {
    const fd = e.onDisk ? await this.fdOf(e) : await this.createFile(e);
    const header = encodeHeader(e.ref, this.blockSize, { state: 'zero', version, table: newCrcTable(this.blockSize) });
    // Header first: a crash between the two leaves a file that says zero
    // (and is repaired to a tombstone), not a data block with a stale table.
    const wrote = this.io.writeCached(fd, header, 0);
    if (wrote !== null) await wrote;
    await this.io.ftruncate(fd, this.hdrBytes);
    this.tables.release(e);
    e.checksumsUnknown = false;
    e.digest = null;
    e.state = 'zero';
    e.version = version;
    this.recount(e);
    this.reindex(e);
    this.flushFiles.add(e);
  }

  /** Writes the whole header from memory (state, version, CRC table). */
  private async writeHeader(e: Entry): Promise<void> {
    assert(e.state !== 'absent' && e.onDisk, 'a header is written for a block on disk');
    const fd = await this.fdOf(e);
    const table = e.state === 'data' ? (this.tables.use(e) ?? (await this.tableOf(e))) : newCrcTable(this.blockSize);
    const wrote = this.io.writeCached(fd, encodeHeader(e.ref, this.blockSize, { state: e.state, version: e.version, table }), 0);
    if (wrote !== null) await wrote;
    this.flushFiles.add(e);
  }

  /**
   * Writes `data` (or zeroes when null) at offset in a data block, in place.
   * `known`: the CRCs of data's pages, taken instead of summing them when
   * data is exactly the pages written.
   */
  private async writePages(e: Entry, offset: number, length: number, data: Buffer | null, known: Uint32Array | null = null): Promise<void> {
    assert(e.state === 'data', 'pages are written into a data block');
    if (length === 0) return;
    // Under the block's write lock: take the CRCs from the file before checking edge pages against them.
    if (e.checksumsUnknown) await this.rehashWhole(e);
    const fd = e.fd !== null ? this.touchFd(e) : await this.fdOf(e);
    const table = this.tables.use(e) ?? (await this.tableOf(e));
    const p0 = Math.floor(offset / PAGE_BYTES);
    const p1 = Math.ceil((offset + length) / PAGE_BYTES);
    const base = p0 * PAGE_BYTES;
    const aligned = offset === base && length === (p1 - p0) * PAGE_BYTES;
    let region: Buffer;
    let own: Buffer | null = null;
    if (aligned && data !== null) {
      region = data; // whole pages: write the caller's buffer as it is
    } else {
      region = own = this.pool.acquire((p1 - p0) * PAGE_BYTES);
      // The edge pages keep bytes of what they held: those are checked
      // first, or a fresh CRC over the merged page would hide a corrupt
      // one for good (the copy is marked suspect and repaired instead).
      try {
        if (offset !== base) {
          const read = this.io.readCached(fd, region, 0, PAGE_BYTES, this.hdrBytes + base);
          if (read !== null) await read;
          this.checkPages(e, region.subarray(0, PAGE_BYTES), p0, p0 + 1, table);
        }
        if ((offset + length) % PAGE_BYTES !== 0 && (p1 - 1 > p0 || offset === base)) {
          const at = (p1 - 1 - p0) * PAGE_BYTES;
          const read = this.io.readCached(fd, region, at, PAGE_BYTES, this.hdrBytes + base + at);
          if (read !== null) await read;
          this.checkPages(e, region.subarray(at, at + PAGE_BYTES), p1 - 1, p1, table);
        }
      } catch (err) {
        releaseBuffer(own);
        throw err;
      }
      if (data !== null) data.copy(region, offset - base);
      else region.fill(0, offset - base, offset - base + length);
    }
    let crcs: Uint32Array;
    if (known !== null && region === data && known.length === p1 - p0) {
      crcs = known;
    } else {
      crcs = new Uint32Array(p1 - p0);
      crc32cPages(region, PAGE_BYTES, crcs);
    }
    try {
      const pending = this.io.writeCached(fd, region, this.hdrBytes + base, e.coldPages ? COLD_WRITE_PIECE_BYTES : null);
      if (pending !== null) await pending;
      if (p0 === 0 && p1 === pageCount(this.blockSize)) e.coldPages = false;
    } catch (err) {
      // The pages may hold part of the write now: take their CRCs from what
      // the file holds, so they do not read as corrupt later.
      await this.rehashPages(e, fd, p0, p1).catch(() => undefined);
      throw err;
    } finally {
      if (own !== null) releaseBuffer(own);
    }
    table.set(crcs, p0);
    e.digest = null;
    this.flushFiles.add(e);
  }

  private async rehashPages(e: Entry, fd: number, p0: number, p1: number): Promise<void> {
    const buf = Buffer.alloc((p1 - p0) * PAGE_BYTES);
    await this.io.read(fd, buf, 0, buf.length, this.hdrBytes + p0 * PAGE_BYTES);
    const table = await this.tableOf(e);
    const crcs = new Uint32Array(p1 - p0);
    crc32cPages(buf, PAGE_BYTES, crcs);
    table.set(crcs, p0);
    e.digest = null;
  }

  /** Creates the block's file, empty; the caller sizes it and writes its header. */
  private async createFile(e: Entry): Promise<number> {
    const dir = path.dirname(e.file);
    if (!this.knownDirs.has(dir)) {
      await this.io.mkdirs(dir);
      // New folders need their parents synced too (volume and generation levels).
      this.flushDirs.add(path.dirname(dir));
      this.flushDirs.add(path.dirname(path.dirname(dir)));
      this.knownDirs.add(dir);
    }
    const fd = await this.openWithRoom(e.file, fs.constants.O_CREAT | fs.constants.O_RDWR);
    this.rememberFd(e, fd);
    e.onDisk = true;
    this.flushDirs.add(dir);
    this.flushFiles.add(e);
    return fd;
  }

  /** Deletes the block's file; the folder change is made durable by the next flush. */
  private async removeFile(e: Entry): Promise<void> {
    if (e.fd !== null) {
      const fd = e.fd;
      this.forgetFd(e);
      await this.io.close(fd);
    }
    if (e.onDisk) {
      await this.io.unlink(e.file).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
      this.flushDirs.add(path.dirname(e.file));
    }
    this.flushFiles.delete(e);
    this.setAbsent(e);
  }

  private setAbsent(e: Entry): void {
    e.onDisk = false;
    e.state = 'absent';
    e.version = VERSION_ABSENT;
    this.tables.release(e);
    e.checksumsUnknown = false;
    e.digest = null;
    this.recount(e);
    this.reindex(e);
  }

  // ---------------------------------------------------------------- flush and checkpoints

  private async syncNow(): Promise<void> {
    // After a failed sync nothing since the last good one is trusted: a
    // sync queued behind the failed one must fail too, not report durable
    // what the failed one took off the lists (the folder of a new file, or
    // pages the kernel may have dropped). Found by the crash-point test
    // with disk faults (seed 12439: a FUA install acknowledged, its file's
    // name lost in the crash).
    if (this.failed !== null) throw this.failed;
    const files = [...this.flushFiles];
    this.flushFiles = new Set();
    const dirs = [...this.flushDirs];
    this.flushDirs = new Set();
    // Several files to sync: one syncfs of the data dir's file system costs
    // one journal commit and one device cache flush, where an fdatasync per
    // file costs one each. It also flushes other dirty data on that file
    // system, which on a dedicated data disk is only ours.
    if (files.length + dirs.length >= SYNCFS_MIN_ITEMS && this.dirFd !== null) {
      const pending = this.io.syncfs(this.dirFd);
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
      await this.forEachLimited(files, SYNC_CONCURRENCY, async (e) => {
        await this.lockRead(e);
        try {
          if (e.onDisk) await this.io.fdatasync(await this.fdOf(e));
        } finally {
          this.unlockRead(e);
        }
      });
      for (const d of dirs) {
        await this.io.fsyncDir(d).catch((err: NodeJS.ErrnoException) => {
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
   * Ends the current epoch: its blocks' headers (CRC table, state, version)
   * become durable, then the suspect list, then its dirty-log file is
   * deleted. Changes go on in the next epoch meanwhile. Resolves once every
   * change made before the call is checkpointed: a checkpoint already
   * running ends an earlier epoch, so the call waits for the next one,
   * which every call meanwhile shares. (Returning the running one let
   * close() discard the log of the epoch that running checkpoint had
   * started, with that epoch's CRC tables never written: a clean stop
   * during a checkpoint left blocks that failed their checksums on the
   * next start. Found by the crash-point test, seed 313.)
   */
  checkpoint(): Promise<void> {
    return this.checkpoints.run();
  }

  private async runCheckpoint(): Promise<void> {
    // After a failed one: nothing more is made durable until a restart.
    if (this.failed !== null) throw this.failed;
    const old = this.epoch;
    const blocks = this.epochBlocks.get(old);
    if ((!blocks || blocks.size === 0) && (this.epochWrites.get(old) ?? 0) === 0) {
      await this.saveSuspectsIfChanged().catch((err: unknown) => {
        this.setFailed(err, 'checkpoint failed: the suspect list could not be made durable');
        throw this.failed;
      });
      return;
    }
    try {
      await this.dirtyLog.prepare(old + 1);
    } catch (err) {
      // Nothing changed yet: the epoch goes on, and a later checkpoint tries again.
      throw this.ioError(err, 'checkpoint failed: the next epoch\'s dirty log could not be made');
    }
    this.epoch = old + 1;
    while ((this.epochWrites.get(old) ?? 0) > 0) {
      await new Promise<void>((r) => (this.epochDrained = r));
    }
    this.epochDrained = null;
    this.epochWrites.delete(old);
    const entries = [...(this.epochBlocks.get(old) ?? [])];
    try {
      await this.forEachLimited(entries, SYNC_CONCURRENCY, async (e) => {
        await this.lockRead(e);
        try {
          if (!e.onDisk || e.state === 'absent') return;
          // The whole header: it also upgrades a format-1 file to format 2.
          const fd = await this.fdOf(e);
          // A table that may not describe the pages must not reach the header (the log that names the block goes next).
          if (e.checksumsUnknown) await this.rehashWhole(e);
          const table = e.state === 'data' ? (this.tables.use(e) ?? (await this.tableOf(e))) : newCrcTable(this.blockSize);
          await this.io.write(fd, encodeHeader(e.ref, this.blockSize, { state: e.state, version: e.version, table }), 0);
          await this.io.fdatasync(fd);
        } finally {
          this.unlockRead(e);
        }
      });
      // Files created in the epoch must be reachable before their record goes.
      await this.syncs.run();
      // Blocks confirmed, installed or dropped in this epoch leave the list
      // now; those changed since are named in the next epoch's log.
      await this.saveSuspectsIfChanged();
      await this.dirtyLog.discard([old]);
    } catch (err) {
      this.setFailed(err, 'checkpoint failed: block checksums could not be made durable');
      throw this.failed;
    }
    this.epochBlocks.delete(old);
    // Records made ahead and never claimed went with the epoch's file.
    this.premarked.delete(old);
    // The epoch's tables are on disk now: they may leave memory.
    if (this.tables.size > this.tables.max) this.tables.sweep();
    this.log.debug({ epoch: old, blocks: entries.length }, 'checkpoint done');
  }

  /** Saves run one at a time (they share a temp file), each with the list as it is when it starts. */
  private saveSuspectsIfChanged(): Promise<void> {
    const run = this.suspectsSaving.catch(() => undefined).then(async () => {
      const refs = this.suspects();
      const text = JSON.stringify(refs.map((r) => [r.volumeId, r.generation, r.index]));
      if (text === this.suspectsSaved) return;
      await saveSuspects(path.join(this.opts.dir, SUSPECTS), refs, this.io);
      this.suspectsSaved = text;
    });
    this.suspectsSaving = run;
    return run;
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

  private async forEachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < items.length) await fn(items[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
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
        state: 'absent',
        version: VERSION_ABSENT,
        suspect: false,
        indexed: false,
        allocated: false,
        reservations: 0,
        fd: null,
        crc: null,
        tableUsed: false,
        digest: null,
        markedEpoch: 0,
        marking: null,
        markingEpoch: 0,
        readers: 0,
        writing: false,
        writersWaiting: 0,
        waiters: [],
        pending: 0,
        coldPages: true,
        checksumsUnknown: false,
      };
      this.entries.set(key, e);
    }
    return e;
  }

  private metaOf(e: Entry): BlockMeta {
    if (readsAbsent(e)) return absentMeta(e.suspect);
    if (e.state === 'zero') return { state: 'zero', version: e.version, suspect: e.suspect, digest: 0 };
    if (e.digest === null) {
      assert(e.crc !== null, 'a data block whose digest is not cached has its CRC table in memory');
      e.digest = tableDigest(e.crc);
    }
    return { state: 'data', version: e.version, suspect: e.suspect, digest: e.digest };
  }

  /** Keeps `allocated` (and the count against the cap) in step with the state and reservations. */
  private recount(e: Entry): void {
    const want = e.state === 'data' || e.reservations > 0;
    if (want === e.allocated) return;
    e.allocated = want;
    this.allocatedCount += want ? 1 : -1;
  }

  /**
   * Keeps the ordered index in step: it lists blocks held here and suspect
   * ones. Called as soon as a state changes, so a scan never misses a block
   * that meta() already reports.
   */
  private reindex(e: Entry): void {
    const want = e.state !== 'absent' || e.suspect;
    if (want === e.indexed) return;
    if (want) this.index.add(e);
    else this.index.remove(e.ref);
    e.indexed = want;
  }

  /** Forgets an entry that holds nothing, so the map tracks only live blocks. */
  private dropIfIdle(e: Entry): void {
    if (!e.onDisk && e.state === 'absent' && !e.suspect && !e.allocated && e.pending === 0 && e.readers === 0 && !e.writing) {
      assert(!e.indexed && e.fd === null, 'a forgotten block is neither listed nor open');
      this.tables.release(e);
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
        await this.io.close(fd);
      }
      return e.fd!;
    }
    return this.touchFd(e);
  }

  /** An open fd, marked most recently used. */
  private touchFd(e: Entry): number {
    this.fdLru.use(e);
    return e.fd!;
  }

  /** The block's CRC table, read back from its header when not in memory. */
  private async tableOf(e: Entry): Promise<Uint32Array> {
    if (e.crc === null) {
      const fd = await this.fdOf(e);
      const h = this.pool.acquire(this.hdrBytes);
      try {
        await this.io.read(fd, h, 0, h.length, 0);
        const { table } = decodeHeader(h, e.ref, this.blockSize, e.file);
        if (e.crc === null) this.tables.hold(e, table);
      } finally {
        releaseBuffer(h);
      }
    }
    return this.tables.use(e)!;
  }

  private rememberFd(e: Entry, fd: number): void {
    e.fd = fd;
    this.fdLru.use(e);
    if (this.fdLru.size > this.fdMax) this.evictFds(Math.floor(this.fdMax * 0.9));
  }

  private forgetFd(e: Entry): void {
    e.fd = null;
    this.fdLru.forget(e);
  }

  /** Opens a block file; on EMFILE closes idle files, lowers fdMax, and tries once more. */
  private async openWithRoom(file: string, flags: number): Promise<number> {
    try {
      return await this.io.openNoAtime(file, flags);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EMFILE' || this.fdLru.size < 2) throw err;
      this.fdMax = Math.max(16, Math.floor(this.fdLru.size / 2));
      this.log.warn({ fdMax: this.fdMax }, 'too many open files; keeping fewer block files open');
      this.evictFds(this.fdMax);
      return this.io.openNoAtime(file, flags);
    }
  }

  /** Closes least recently used idle block files until at most `target` stay open. */
  private evictFds(target: number): void {
    for (const x of this.fdLru.oldestFirst()) {
      if (this.fdLru.size <= target) break;
      if (x.readers > 0 || x.writing || x.fd === null) continue;
      const fd = x.fd;
      this.forgetFd(x);
      // fsync is per inode on Linux: a flush reopens the file and still
      // flushes what was written through this descriptor.
      this.io.closeLater(fd);
    }
  }

  // ---------------------------------------------------------------- start-up and repair

  private async start(): Promise<void> {
    await this.io.mkdirs(this.blocksDir);
    // The folders made just now (the store's, its blocks folder) must
    // survive a crash before anything in them counts: an fsync makes the
    // names in a folder durable, not the folder's own name in its parent.
    await this.io.fsyncDir(this.opts.dir);
    await this.io.fsyncDir(path.dirname(this.opts.dir));
    this.dirFd = await this.io.open(this.opts.dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    await this.checkMeta();
    await this.scanBlocks();
    const { log, dirty, leftovers } = await DirtyLog.open(path.join(this.opts.dir, 'dirty'), this.opts.logger, this.io);
    this.dirtyLog = log;
    const suspectFile = path.join(this.opts.dir, SUSPECTS);
    const kept = await loadSuspects(suspectFile, this.io);
    const dirtyKeys = new Set(dirty.map(blockRefKey));
    const badHeaders: Entry[] = [];
    await this.forEachLimited([...this.entries.values()], OPEN_READ_CONCURRENCY, async (e) => {
      if (dirtyKeys.has(e.key)) return; // repaired below
      if (!(await this.loadHeader(e))) badHeaders.push(e);
    });
    let repaired = 0;
    for (const ref of dirty) {
      const e = this.entryFor(ref);
      // A block named in the dirty log may hold bytes newer than its header's version, or have lost them.
      e.suspect = true;
      if (!e.onDisk) continue;
      await this.repair(e);
      repaired++;
    }
    for (const e of badHeaders) {
      this.log.error({ block: e.key, file: e.file }, 'block header unreadable; checksums recomputed from the data, the block is suspect');
      await this.repair(e);
      e.suspect = true;
    }
    for (const ref of kept) this.entryFor(ref).suspect = true;
    for (const e of [...this.entries.values()]) {
      this.recount(e);
      this.reindex(e);
      this.dropIfIdle(e);
    }
    this.suspectsSaved = JSON.stringify(kept.map((r) => [r.volumeId, r.generation, r.index]));
    // The suspect list must be durable before the dirty log that named them goes.
    await this.saveSuspectsIfChanged();
    if (leftovers.length > 0) {
      await log.discard(leftovers);
      this.log.info({ blocks: repaired, epochs: leftovers.length }, 'checksums of blocks written before an unclean stop recomputed; the blocks are suspect');
    }
    this.epoch = (leftovers.length > 0 ? Math.max(...leftovers) : 0) + 1;
    if (this.allocatedCount > this.blockSlots) this.log.warn({ blocks: this.allocatedCount, blockSlots: this.blockSlots }, 'the store holds more blocks than its cap allows; new blocks are refused');
    this.log.info({ dir: this.opts.dir, blockSize: this.blockSize, capacity: this.opts.capacity, blocks: this.allocatedCount, blockSlots: this.blockSlots, suspects: this.suspects().length }, 'block store open');
    this.scheduleCheckpoints();
  }

  /** Reads a block's header into its entry (state, version, digest); false if it cannot be decoded. */
  private async loadHeader(e: Entry): Promise<boolean> {
    const h = Buffer.alloc(this.hdrBytes);
    const fd = await this.io.openNoAtime(e.file, fs.constants.O_RDONLY);
    try {
      await this.io.read(fd, h, 0, h.length, 0);
    } finally {
      await this.io.close(fd);
    }
    let header: BlockHeader;
    try {
      header = decodeHeader(h, e.ref, this.blockSize, e.file);
    } catch (err) {
      if (err instanceof TorusError && err.code === 'TORUS_ERR_STORE_CORRUPT') return false;
      throw err;
    }
    e.state = header.state;
    e.version = header.version;
    // The digest is kept, not the table: a table per block in memory would
    // cost 4 KiB per 4 MiB block; it is read again on the block's next I/O.
    e.digest = header.state === 'data' ? tableDigest(header.table) : null;
    return true;
  }

  /**
   * Makes a block consistent with itself after an unclean stop: the state
   * and version its header holds (VERSION_LEGACY and data when the header
   * is unreadable), and CRCs recomputed from the data. Only for blocks the
   * dirty log names, or whose header is unreadable: their pages may hold
   * unflushed or torn writes whose CRCs never reached the file. The caller
   * marks the block suspect.
   */
  private async repair(e: Entry): Promise<void> {
    const fd = await this.fdOf(e);
    const h = Buffer.alloc(this.hdrBytes);
    await this.io.read(fd, h, 0, h.length, 0);
    let header: BlockHeader | null = null;
    try {
      header = decodeHeader(h, e.ref, this.blockSize, e.file);
    } catch {
      header = null; // missing or torn: a file created just before the crash
    }
    const version = header?.version ?? VERSION_LEGACY;
    if (header?.state === 'zero') {
      await this.io.write(fd, encodeHeader(e.ref, this.blockSize, { state: 'zero', version, table: newCrcTable(this.blockSize) }), 0);
      await this.io.ftruncate(fd, this.hdrBytes);
      await this.io.fdatasync(fd);
      e.state = 'zero';
      this.tables.release(e);
    } else {
      const data = Buffer.alloc(this.blockSize);
      await this.io.read(fd, data, 0, data.length, this.hdrBytes);
      const table = new Uint32Array(pageCount(this.blockSize));
      crc32cPages(data, PAGE_BYTES, table);
      await this.io.ftruncate(fd, this.fileBytes);
      await this.io.write(fd, encodeHeader(e.ref, this.blockSize, { state: 'data', version, table }), 0);
      await this.io.fdatasync(fd);
      e.state = 'data';
      this.tables.hold(e, table);
    }
    e.version = version;
    e.digest = null;
  }

  private async checkMeta(): Promise<void> {
    const file = path.join(this.opts.dir, STORE_META);
    let text: string | null = null;
    try {
      text = (await this.io.readFile(file)).toString('utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new TorusError('TORUS_ERR_STORE_CORRUPT', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
      }
    }
    const write = () => writeFileDurably(file, JSON.stringify({ schema: STORE_SCHEMA, blockSize: this.blockSize }) + '\n', this.io);
    if (text === null) {
      await write();
      return;
    }
    let meta: { schema?: unknown; blockSize?: unknown };
    try {
      meta = JSON.parse(text) as { schema?: unknown; blockSize?: unknown };
    } catch (err) {
      throw new TorusError('TORUS_ERR_STORE_CORRUPT', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
    if (typeof meta !== 'object' || meta === null || !Number.isInteger(meta.schema) || !Number.isInteger(meta.blockSize)) {
      throw new TorusError('TORUS_ERR_STORE_CORRUPT', `${file} is not a store description ({schema, blockSize})`);
    }
    const schema = meta.schema as number;
    if (schema > STORE_SCHEMA) {
      throw new TorusError(
        'TORUS_ERR_DATA_DIR_NEWER',
        `${file} has store schema ${schema}, written by a newer torus release; torus ${RELEASE} knows store schemas up to ${STORE_SCHEMA}`,
        { details: { file, schema, known: STORE_SCHEMA } },
      );
    }
    if (meta.blockSize !== this.blockSize) {
      throw new TorusError('TORUS_ERR_STORE_CORRUPT', `the data dir holds blocks of ${String(meta.blockSize)} bytes but the cluster uses ${this.blockSize}; use another --data-dir or remove ${this.opts.dir}`);
    }
    if (schema < STORE_SCHEMA) {
      await write();
      this.log.info({ file, from: schema, to: STORE_SCHEMA }, 'store schema upgraded; block files are upgraded as they are next written');
    }
  }

  private async scanBlocks(): Promise<void> {
    const hex = /^[0-9a-f]+$/;
    for (const v of await this.io.readdir(this.blocksDir)) {
      if (!hex.test(v)) continue;
      const vdir = path.join(this.blocksDir, v);
      for (const g of await this.io.readdir(vdir)) {
        if (!hex.test(g)) continue;
        const gdir = path.join(vdir, g);
        this.knownDirs.add(gdir);
        for (const i of await this.io.readdir(gdir)) {
          if (!hex.test(i)) continue;
          const e = this.entryFor(blockRef(parseInt(v, 16), parseInt(g, 16), parseInt(i, 16)));
          e.onDisk = true;
          // Until its header is read: a data block of unknown version.
          e.state = 'data';
          e.version = VERSION_LEGACY;
        }
      }
    }
  }

  // ---------------------------------------------------------------- checks

  private checkPages(e: Entry, region: Buffer, p0: number, p1: number, table: Uint32Array): void {
    const crcs = this.checkCrcs;
    crc32cPages(region, PAGE_BYTES, crcs);
    for (let p = p0; p < p1; p++) {
      if (crcs[p - p0] !== table[p]) {
        e.suspect = true;
        this.reindex(e);
        this.opts.onCrcFailure?.(e.ref, p);
        this.log.error({ block: e.key, page: p, file: e.file }, 'block page failed its checksum');
        throw new TorusError('TORUS_ERR_STORE_CRC_MISMATCH', `block ${e.key} page ${p} failed its CRC32C check`, { details: { block: e.key, page: p } });
      }
    }
  }

  private checkRange(offset: number, length: number): void {
    assert(Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.blockSize, 'range lies within one block');
  }

  private checkVersion(version: Version): void {
    assert(isVersion(version) && version !== VERSION_ABSENT, 'a stored block has a version (>= 0)');
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

/**
 * Whether meta(), head() and list() report the block absent. A block in its
 * first write is data in memory from makeData on, but has no version until
 * the write's pages are in: until then it is what it was before that write,
 * absent. Those calls take no lock, so they can land in that window (a
 * peer's LIST during a move or catch-up).
 */
function readsAbsent(e: Entry): boolean {
  return e.state === 'absent' || e.version === VERSION_ABSENT;
}
