import fs from 'node:fs';
import { mkdir, readdir, readFile, rm, rename, writeFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { blockRef, blockRefKey, type BlockRef } from '../model/block-ref.js';
import { assert } from '../util/assert.js';
import { systemClock, type Clock } from '../util/clock.js';
import { crc32c } from '../util/crc32c.js';
import { blockFileBytes, decodeHeader, encodeHeader, encodeTable, headerBytes, newCrcTable, PAGE_BYTES, TABLE_OFFSET } from './block-file.js';
import type { BlockStore, StoreUsage, WriteOptions, ZeroOptions } from './block-store.js';
import { closeFd, fdatasync, fsyncDir, ftruncate, openFd, preadFull, pwriteFull } from './fs-async.js';
import { Journal } from './journal.js';
import { RecordType, type JournalRecord } from './journal-record.js';

/**
 * The block store of one peer, on its local disk.
 *
 * Write path: a change is appended to the journal (journal.ts) and, once the
 * kernel has it, kept in memory as a pending op of its block, where reads see
 * it at once. FLUSH is one fdatasync of the journal. An applier copies
 * durable journal records into the block files in the background; a
 * checkpoint then writes the blocks' CRC tables, fdatasyncs the block files
 * and deletes the journal segments they cover.
 *
 * Crash rule: a block file only ever receives changes that are durable in the
 * journal, and the journal is deleted only after the block files are durable,
 * so replaying the journal from the last checkpoint rebuilds every page it
 * touches, data and CRC alike. Pages it does not touch were fdatasync'd with
 * their CRC at an earlier checkpoint.
 *
 * Space: capacity is charged per allocated block (header + block size), with
 * a fixed share kept for the journal. A write that needs a new block beyond
 * the cap fails with TORUS_ERR_STORE_NO_SPACE before anything is written.
 */

export interface FileBlockStoreOptions {
  /** The store's own folder (torusd uses <data-dir>/store). */
  readonly dir: string;
  readonly blockSize: number;
  /** Bytes the store may use in all (the --size cap). */
  readonly capacity: number;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Journal bytes kept at most (default: capacity / 8, within 8 MiB .. 256 MiB). */
  readonly journalBytesMax?: number;
  /** Bytes of journalled writes waiting for the applier before writers wait (default 64 MiB). */
  readonly pendingBytesMax?: number;
  readonly checkpointIntervalMs?: number;
  /** Block files kept open at most. */
  readonly fdMax?: number;
  /**
   * Tests only: keep journalled writes out of the block files, so that a
   * crash test proves the data comes back from journal replay alone.
   */
  readonly holdApplierForTest?: boolean;
  /** Called on every CRC mismatch (torusd counts them in a metric). */
  readonly onCrcFailure?: (ref: BlockRef, page: number) => void;
}

interface Op {
  readonly seq: number;
  readonly type: RecordType;
  readonly offset: number;
  readonly length: number;
  readonly payload: Buffer | null;
}

interface Entry {
  readonly ref: BlockRef;
  readonly key: string;
  readonly file: string;
  /** The block file exists. */
  onDisk: boolean;
  /** Counted against capacity: holds data once pending ops are applied. */
  allocated: boolean;
  fd: number | null;
  crc: Uint32Array | null;
  /** Not yet applied to the block file; in sequence order. */
  pending: Op[];
  /** Writes between admission and journal append. */
  admitting: number;
  readers: number;
  applying: boolean;
  waiters: (() => void)[];
  lastUse: number;
}

interface ApplyItem {
  readonly seq: number;
  /** null: remove the folder of a deleted volume. */
  readonly entry: Entry | null;
  readonly volumeId: number;
  readonly bytes: number;
}

const STORE_META = 'store.json';
const APPLY_BATCH_MAX = 2048;
const APPLY_CONCURRENCY = 16;

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
  private readonly journalBytesMax: number;
  private readonly pendingBytesMax: number;
  private readonly fdMax: number;
  private readonly segmentBytesMax: number;
  private journal!: Journal;
  private allocatedCount = 0;
  private pendingBytes = 0;
  private applyQueue: ApplyItem[] = [];
  private appliedSeq = 0;
  private readonly dirtyEntries = new Set<Entry>();
  private readonly dirtyDirs = new Set<string>();
  private readonly knownDirs = new Set<string>();
  private openFds = 0;
  private spaceWaiters: (() => void)[] = [];
  private applierWake: (() => void) | null = null;
  private applierDone: Promise<void> | null = null;
  private checkpointing: Promise<void> | null = null;
  private lastCheckpoint = 0;
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
    this.journalBytesMax = opts.journalBytesMax ?? Math.min(256 * 2 ** 20, Math.max(8 * 2 ** 20, Math.floor(opts.capacity / 8)));
    this.blockSlots = Math.max(0, Math.floor((opts.capacity - this.journalBytesMax) / this.fileBytes));
    this.pendingBytesMax = opts.pendingBytesMax ?? 64 * 2 ** 20;
    this.fdMax = opts.fdMax ?? 256;
    this.segmentBytesMax = Math.max(2 ** 20, Math.floor(this.journalBytesMax / 4));
  }

  /** Opens (or creates) the store and recovers from the journal. */
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
    await this.lockRead(e);
    try {
      const p0 = Math.floor(offset / PAGE_BYTES);
      const p1 = Math.ceil((offset + length) / PAGE_BYTES);
      const base = p0 * PAGE_BYTES;
      const region = Buffer.allocUnsafe((p1 - p0) * PAGE_BYTES);
      if (e.onDisk) {
        const fd = await this.fdOf(e);
        const table = await this.tableOf(e);
        await preadFull(fd, region, 0, region.length, this.hdrBytes + base);
        for (let p = p0; p < p1; p++) {
          const at = (p - p0) * PAGE_BYTES;
          if (crc32c(region.subarray(at, at + PAGE_BYTES)) !== table[p]) {
            this.opts.onCrcFailure?.(ref, p);
            this.log.error({ block: e.key, page: p, file: e.file }, 'block page failed its checksum');
            throw new TorusError('TORUS_ERR_STORE_CRC_MISMATCH', `block ${e.key} page ${p} failed its CRC32C check`, { details: { block: e.key, page: p } });
          }
        }
      } else {
        region.fill(0);
      }
      for (const op of e.pending) overlay(op, region, base, this.blockSize);
      return region.subarray(offset - base, offset - base + length);
    } finally {
      this.unlockRead(e);
    }
  }

  async write(ref: BlockRef, offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    await this.submit(ref, RecordType.Write, offset, data.length, data, opts, true);
  }

  async zero(ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.checkRange(offset, length);
    if (length === 0) return;
    const e = this.entries.get(blockRefKey(ref));
    const allocated = e?.allocated ?? false;
    if (opts.punch) {
      // A hole already reads as zeroes.
      if (!allocated) return this.fenceOnly(ref, opts);
      const whole = offset === 0 && length === this.blockSize;
      await this.submit(ref, whole ? RecordType.Punch : RecordType.Zero, offset, length, null, opts, false);
      return;
    }
    // NO_HOLE: the range must stay (or become) allocated.
    await this.submit(ref, RecordType.Zero, offset, length, null, opts, true);
  }

  async flush(): Promise<void> {
    this.checkWritable();
    await this.journal.sync();
  }

  async allocated(refs: readonly BlockRef[]): Promise<boolean[]> {
    return refs.map((r) => this.entries.get(blockRefKey(r))?.allocated ?? false);
  }

  async deleteVolume(volumeId: number): Promise<void> {
    this.checkWritable();
    await this.waitForRoom(0);
    const ref = blockRef(volumeId, 1, 0);
    const seq = await this.journal.append({ type: RecordType.DeleteVolume, ref, offset: 0, length: 0, payload: null, payloadCrc: 0 });
    for (const e of this.entries.values()) {
      if (e.ref.volumeId !== volumeId) continue;
      this.addPending(e, { seq, type: RecordType.Punch, offset: 0, length: this.blockSize, payload: null });
      this.applyQueue.push({ seq, entry: e, volumeId, bytes: 0 });
      if (e.allocated) {
        e.allocated = false;
        this.allocatedCount--;
      }
    }
    this.applyQueue.push({ seq, entry: null, volumeId, bytes: 0 });
    this.fences.delete(volumeId);
    this.kickApplier();
  }

  usage(): StoreUsage {
    return {
      capacity: this.opts.capacity,
      used: this.allocatedCount * this.fileBytes + (this.journal ? this.journal.bytes() : 0),
      blocks: this.allocatedCount,
    };
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

  /** Applies and checkpoints everything, then closes; the journal is empty afterwards. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.checkpointTimer?.cancel();
    if (!this.failed) {
      await this.journal.sync().catch(() => undefined);
    }
    this.kickApplier();
    await this.applierDone;
    if (!this.failed) {
      await this.checkpoint();
      await this.journal.rollNow();
      await this.journal.release(this.appliedSeq);
    }
    await this.journal.close();
    for (const e of this.entries.values()) {
      if (e.fd !== null) {
        await closeFd(e.fd).catch(() => undefined);
        e.fd = null;
      }
    }
    this.closed = true;
  }

  /**
   * Test hook: stops as a killed process would, without applying, syncing or
   * checkpointing; the next open must recover from the journal alone.
   */
  async abandonForTest(): Promise<void> {
    this.closing = true;
    this.closed = true;
    this.checkpointTimer?.cancel();
    this.failed = new TorusError('TORUS_ERR_STORE_CLOSED', 'abandoned');
    this.kickApplier();
    await this.applierDone;
    await this.checkpointing?.catch(() => undefined);
    for (const e of this.entries.values()) if (e.fd !== null) fs.close(e.fd, () => undefined);
    await this.journal.close().catch(() => undefined);
  }

  // ---------------------------------------------------------------- write admission

  private async submit(ref: BlockRef, type: RecordType, offset: number, length: number, payload: Buffer | null, opts: WriteOptions, allocates: boolean): Promise<void> {
    this.checkWritable();
    this.checkFence(ref.volumeId, opts.fence);
    await this.waitForRoom(payload?.length ?? 0);
    this.checkWritable();
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
    const payloadCrc = payload ? crc32c(payload) : 0;
    e.admitting++;
    let seq: number;
    try {
      seq = await this.journal.append({ type, ref, offset, length, payload, payloadCrc });
    } catch (err) {
      e.admitting--;
      if (reserved && e.admitting === 0 && e.pending.length === 0 && !e.onDisk) {
        e.allocated = false;
        this.allocatedCount--;
        this.dropIfIdle(e);
      }
      throw err;
    }
    e.admitting--;
    if (type === RecordType.Punch && e.allocated) {
      e.allocated = false;
      this.allocatedCount--;
    }
    this.addPending(e, { seq, type, offset, length, payload });
    const bytes = payload?.length ?? 0;
    this.pendingBytes += bytes;
    this.applyQueue.push({ seq, entry: e, volumeId: ref.volumeId, bytes });
    this.kickApplier();
    if (opts.fua) await this.journal.sync();
  }

  private addPending(e: Entry, op: Op): void {
    const last = e.pending[e.pending.length - 1];
    assert(last === undefined || last.seq <= op.seq, 'pending ops of a block stay in journal order');
    e.pending.push(op);
  }

  private async fenceOnly(ref: BlockRef, opts: WriteOptions): Promise<void> {
    this.checkWritable();
    this.checkFence(ref.volumeId, opts.fence);
    if (opts.fua) await this.journal.sync();
  }

  private checkFence(volumeId: number, fence: number | undefined): void {
    if (fence === undefined) return;
    const seen = this.fences.get(volumeId) ?? 0;
    if (fence < seen) {
      throw new TorusError('TORUS_ERR_VOLUME_FENCED', `write to volume ${volumeId} refused: it carries lock token ${fence} but token ${seen} has been seen (a newer writer holds the volume)`);
    }
    if (fence > seen) this.fences.set(volumeId, fence);
  }

  /** Backpressure: wait while the applier or the journal is too far behind. */
  private async waitForRoom(bytes: number): Promise<void> {
    // Only segments other than the active one can be released by a
    // checkpoint, so only they count here (the active one is bounded by the
    // segment size); counting it could wait for a release that never comes.
    const releasableMax = this.journalBytesMax - this.segmentBytesMax;
    while (!this.failed && !this.closing && ((this.pendingBytes + bytes > this.pendingBytesMax && this.pendingBytes > 0) || this.journal.inactiveBytes() > releasableMax)) {
      this.requestCheckpoint();
      await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    }
  }

  private wakeSpaceWaiters(): void {
    const w = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const f of w) f();
  }

  // ---------------------------------------------------------------- the applier

  private kickApplier(): void {
    const wake = this.applierWake;
    this.applierWake = null;
    wake?.();
  }

  private async applierLoop(): Promise<void> {
    for (;;) {
      if (this.applyQueue.length === 0) {
        if (this.closing || this.failed) return;
        await new Promise<void>((resolve) => (this.applierWake = resolve));
        continue;
      }
      if (this.failed) return;
      if (this.opts.holdApplierForTest && !this.closing) {
        await new Promise<void>((resolve) => (this.applierWake = resolve));
        continue;
      }
      if (this.applyQueue[0]!.seq > this.journal.syncedSeq) {
        // Only durable records may reach block files (see the crash rule).
        await this.journal.sync();
      }
      const synced = this.journal.syncedSeq;
      let n = 0;
      while (n < this.applyQueue.length && n < APPLY_BATCH_MAX && this.applyQueue[n]!.seq <= synced) n++;
      if (n === 0) continue;
      const batch = this.applyQueue.slice(0, n);
      await this.applyBatch(batch);
      this.applyQueue.splice(0, n);
      const last = batch[batch.length - 1]!;
      this.appliedSeq = Math.max(this.appliedSeq, last.seq);
      for (const item of batch) this.pendingBytes -= item.bytes;
      this.wakeSpaceWaiters();
      if (this.journal.segmentCount() > 1 || this.journal.bytes() > this.journalBytesMax / 2) this.requestCheckpoint();
    }
  }

  private async applyBatch(batch: ApplyItem[]): Promise<void> {
    // Volume deletions are barriers: everything before them lands first.
    let start = 0;
    for (let i = 0; i <= batch.length; i++) {
      const item = batch[i];
      if (item !== undefined && item.entry !== null) continue;
      await this.applyGroups(batch.slice(start, i));
      if (item !== undefined) await this.removeVolumeDir(item.volumeId);
      start = i + 1;
    }
  }

  private async applyGroups(items: ApplyItem[]): Promise<void> {
    const groups = new Map<Entry, number>();
    for (const it of items) groups.set(it.entry!, (groups.get(it.entry!) ?? 0) + 1);
    const work = [...groups];
    let next = 0;
    const worker = async () => {
      while (next < work.length) {
        const [e, count] = work[next++]!;
        await this.applyEntry(e, count);
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(APPLY_CONCURRENCY, work.length) }, worker));
    } catch (err) {
      this.setFailed(err, 'applying journal records to block files failed');
      throw this.failed;
    }
  }

  /** Applies the first `count` pending ops of a block, with readers kept out. */
  private async applyEntry(e: Entry, count: number): Promise<void> {
    while (e.readers > 0 || e.applying) await new Promise<void>((r) => e.waiters.push(r));
    e.applying = true;
    try {
      for (let i = 0; i < count; i++) await this.applyOp(e, e.pending[i]!);
      e.pending.splice(0, count);
    } finally {
      e.applying = false;
      this.wake(e);
      this.dropIfIdle(e);
    }
  }

  private async applyOp(e: Entry, op: Op): Promise<void> {
    if (op.type === RecordType.Punch || op.type === RecordType.DeleteVolume) {
      if (e.fd !== null) {
        await closeFd(e.fd);
        e.fd = null;
        this.openFds--;
      }
      if (e.onDisk) {
        await unlink(e.file).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
        e.onDisk = false;
        this.dirtyDirs.add(path.dirname(e.file));
      }
      e.crc = null;
      this.dirtyEntries.delete(e);
      return;
    }
    if (!e.onDisk) await this.createFile(e);
    const fd = await this.fdOf(e);
    const table = await this.tableOf(e);
    const p0 = Math.floor(op.offset / PAGE_BYTES);
    const p1 = Math.ceil((op.offset + op.length) / PAGE_BYTES);
    const base = p0 * PAGE_BYTES;
    const region = Buffer.allocUnsafe((p1 - p0) * PAGE_BYTES);
    const headPartial = op.offset !== base;
    const tailPartial = (op.offset + op.length) % PAGE_BYTES !== 0;
    if (headPartial) await preadFull(fd, region, 0, PAGE_BYTES, this.hdrBytes + base);
    if (tailPartial && (p1 - 1 > p0 || !headPartial)) {
      const at = (p1 - 1 - p0) * PAGE_BYTES;
      await preadFull(fd, region, at, PAGE_BYTES, this.hdrBytes + base + at);
    }
    overlay(op, region, base, this.blockSize);
    for (let p = p0; p < p1; p++) {
      const at = (p - p0) * PAGE_BYTES;
      table[p] = crc32c(region.subarray(at, at + PAGE_BYTES));
    }
    await pwriteFull(fd, region, this.hdrBytes + base);
    this.dirtyEntries.add(e);
  }

  private async createFile(e: Entry): Promise<void> {
    const dir = path.dirname(e.file);
    if (!this.knownDirs.has(dir)) {
      await mkdir(dir, { recursive: true });
      // New folders need their parents synced too (volume and generation levels).
      this.dirtyDirs.add(path.dirname(dir));
      this.dirtyDirs.add(path.dirname(path.dirname(dir)));
      this.knownDirs.add(dir);
    }
    const fd = await openFd(e.file, fs.constants.O_CREAT | fs.constants.O_RDWR);
    this.openFds++;
    e.fd = fd;
    await ftruncate(fd, this.fileBytes);
    const table = newCrcTable(this.blockSize);
    await pwriteFull(fd, encodeHeader(e.ref, this.blockSize, table), 0);
    e.crc = table;
    e.onDisk = true;
    this.dirtyDirs.add(dir);
    this.dirtyEntries.add(e);
    this.evictFds();
  }

  private async removeVolumeDir(volumeId: number): Promise<void> {
    const dir = path.join(this.blocksDir, volumeId.toString(16));
    await rm(dir, { recursive: true, force: true });
    for (const d of [...this.knownDirs]) if (d.startsWith(dir + path.sep)) this.knownDirs.delete(d);
    this.dirtyDirs.add(this.blocksDir);
  }

  // ---------------------------------------------------------------- checkpoints

  private requestCheckpoint(): void {
    if (this.checkpointing || this.failed || this.closed) return;
    void this.checkpoint().catch(() => undefined);
  }

  /**
   * Makes every applied record durable in the block files and drops the
   * journal segments that only hold such records.
   */
  async checkpoint(): Promise<void> {
    if (this.checkpointing) return this.checkpointing;
    this.checkpointing = this.runCheckpoint().finally(() => {
      this.checkpointing = null;
    });
    return this.checkpointing;
  }

  private async runCheckpoint(): Promise<void> {
    const upto = this.appliedSeq;
    const entries = [...this.dirtyEntries];
    this.dirtyEntries.clear();
    const dirs = [...this.dirtyDirs];
    this.dirtyDirs.clear();
    try {
      let next = 0;
      const worker = async () => {
        while (next < entries.length) {
          const e = entries[next++]!;
          await this.lockRead(e);
          try {
            if (!e.onDisk || e.crc === null) continue;
            const fd = await this.fdOf(e);
            await pwriteFull(fd, encodeTable(e.crc), TABLE_OFFSET);
            await fdatasync(fd);
          } finally {
            this.unlockRead(e);
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(APPLY_CONCURRENCY, entries.length) }, worker));
      for (const d of dirs) {
        await fsyncDir(d).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
      }
      await this.journal.release(upto);
    } catch (err) {
      this.setFailed(err, 'checkpoint failed: block files could not be made durable');
      throw this.failed;
    }
    this.lastCheckpoint = this.clock.monotonic();
    this.wakeSpaceWaiters();
    this.log.debug({ upto, blocks: entries.length }, 'checkpoint done');
  }

  private scheduleCheckpoints(): void {
    const interval = this.opts.checkpointIntervalMs ?? 5000;
    const tick = () => {
      if (this.closing || this.closed || this.failed) return;
      if (this.dirtyEntries.size > 0 || this.journal.segmentCount() > 1) this.requestCheckpoint();
      this.checkpointTimer = this.clock.setTimeout(tick, interval);
    };
    this.checkpointTimer = this.clock.setTimeout(tick, interval);
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
        pending: [],
        admitting: 0,
        readers: 0,
        applying: false,
        waiters: [],
        lastUse: 0,
      };
      this.entries.set(key, e);
    }
    return e;
  }

  /** Forgets an entry that holds nothing, so the map tracks only live blocks. */
  private dropIfIdle(e: Entry): void {
    if (!e.onDisk && !e.allocated && e.pending.length === 0 && e.admitting === 0 && e.readers === 0 && !e.applying) {
      this.entries.delete(e.key);
    }
  }

  private async lockRead(e: Entry): Promise<void> {
    while (e.applying) await new Promise<void>((r) => e.waiters.push(r));
    e.readers++;
    e.lastUse = this.clock.monotonic();
  }

  private unlockRead(e: Entry): void {
    e.readers--;
    if (e.readers === 0) this.wake(e);
  }

  private wake(e: Entry): void {
    const w = e.waiters;
    e.waiters = [];
    for (const f of w) f();
  }

  private async fdOf(e: Entry): Promise<number> {
    if (e.fd === null) {
      const fd = await openFd(e.file, fs.constants.O_RDWR);
      if (e.fd === null) {
        e.fd = fd;
        this.openFds++;
        this.evictFds();
      } else {
        await closeFd(fd);
      }
    }
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

  /** Closes the least recently used idle block files beyond fdMax. */
  private evictFds(): void {
    if (this.openFds <= this.fdMax) return;
    const idle = [...this.entries.values()].filter((x) => x.fd !== null && x.readers === 0 && !x.applying).sort((a, b) => a.lastUse - b.lastUse);
    for (const x of idle) {
      if (this.openFds <= this.fdMax * 0.75) break;
      const fd = x.fd!;
      x.fd = null;
      this.openFds--;
      // fsync is per inode on Linux: a checkpoint reopens the file and still
      // flushes what was written through this descriptor.
      fs.close(fd, () => undefined);
    }
  }

  // ---------------------------------------------------------------- start-up and recovery

  private async start(): Promise<void> {
    await mkdir(this.blocksDir, { recursive: true });
    await this.checkMeta();
    await this.scanBlocks();
    let replayed = 0;
    let lastSeq = 0;
    this.journal = await Journal.open(
      { dir: path.join(this.opts.dir, 'wal'), blockSize: this.blockSize, segmentBytesMax: this.segmentBytesMax, batchBytesMax: Math.min(8 * 2 ** 20, this.segmentBytesMax), logger: this.opts.logger },
      async (rec) => {
        await this.replayRecord(rec);
        replayed++;
        lastSeq = rec.seq;
      },
    );
    if (replayed > 0) {
      this.appliedSeq = lastSeq;
      await this.checkpoint();
      await this.journal.rollNow();
      await this.journal.release(lastSeq);
      this.log.info({ records: replayed, lastSeq }, 'journal replayed after an unclean stop');
    }
    this.log.info({ dir: this.opts.dir, blockSize: this.blockSize, capacity: this.opts.capacity, blocks: this.allocatedCount, blockSlots: this.blockSlots, journalBytesMax: this.journalBytesMax }, 'block store open');
    this.applierDone = this.applierLoop().catch((err) => {
      this.setFailed(err, 'applier stopped');
    });
    this.scheduleCheckpoints();
  }

  private async replayRecord(rec: JournalRecord): Promise<void> {
    if (rec.type === RecordType.DeleteVolume) {
      for (const e of [...this.entries.values()]) {
        if (e.ref.volumeId !== rec.ref.volumeId) continue;
        await this.applyOp(e, { seq: rec.seq, type: RecordType.Punch, offset: 0, length: this.blockSize, payload: null });
        if (e.allocated) {
          e.allocated = false;
          this.allocatedCount--;
        }
        this.dropIfIdle(e);
      }
      await this.removeVolumeDir(rec.ref.volumeId);
      return;
    }
    const e = this.entryFor(rec.ref);
    await this.applyOp(e, { seq: rec.seq, type: rec.type, offset: rec.offset, length: rec.length, payload: rec.payload });
    const holds = rec.type !== RecordType.Punch;
    if (holds && !e.allocated) {
      e.allocated = true;
      this.allocatedCount++;
    } else if (!holds && e.allocated) {
      e.allocated = false;
      this.allocatedCount--;
    }
    this.dropIfIdle(e);
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

  private setFailed(err: unknown, msg: string): void {
    if (this.failed) return;
    const code = (err as NodeJS.ErrnoException)?.code === 'ENOSPC' ? 'TORUS_ERR_STORE_NO_SPACE' : 'TORUS_ERR_STORE_IO';
    this.failed = err instanceof TorusError ? err : new TorusError(code, `${msg}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    this.log.error({ err: this.failed }, 'block store failed; writes are refused until restart (journal replay recovers acknowledged data)');
    this.wakeSpaceWaiters();
    this.kickApplier();
  }
}

/** Copies the effect of one op onto `region`, which holds block bytes from `base`. */
function overlay(op: Op, region: Buffer, base: number, blockSize: number): void {
  let start: number;
  let end: number;
  if (op.type === RecordType.Punch || op.type === RecordType.DeleteVolume) {
    start = 0;
    end = blockSize;
  } else {
    start = op.offset;
    end = op.offset + op.length;
  }
  const lo = Math.max(start, base);
  const hi = Math.min(end, base + region.length);
  if (lo >= hi) return;
  if (op.type === RecordType.Write) {
    op.payload!.copy(region, lo - base, lo - op.offset, hi - op.offset);
  } else {
    region.fill(0, lo - base, hi - base);
  }
}
