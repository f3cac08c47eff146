import { TorusError } from '../errors/torus-error.js';
import { ABSENT_HEAD, ABSENT_META, absentHead, absentMeta, type BlockHead, type BlockMeta, type BlockState, type ListedBlock } from '../model/block-meta.js';
import { blockRefKey, type BlockRef } from '../model/block-ref.js';
import { isVersion, VERSION_ABSENT, VERSION_LEGACY, type Version } from '../model/version.js';
import { assert } from '../util/assert.js';
import { crc32c, crc32cPages } from '../util/crc32c.js';
import type { Random } from '../util/random.js';
import { newCrcTable, PAGE_BYTES, pageCount, tableDigest } from './block-file.js';
import type { StoreUsage } from './block-store.js';
import type { LocalBlockStore } from './local-store.js';
import { RefIndex } from './ref-index.js';

export interface MemoryBlockStoreOptions {
  /** Bytes per block: a whole number of 4 KiB pages (CRCs are per page). */
  readonly blockSize: number;
  /** Bytes of data blocks the store may hold; rounded down to whole blocks. Tombstones are free. */
  readonly capacity: number;
  /**
   * Does every flush also end a checkpoint (default true)? The disk store
   * makes block versions durable only at checkpoints, so after a crash it
   * calls suspect every block changed since the last checkpoint, flushed or
   * not. False models that: blocks stay "changed since the checkpoint" until
   * checkpoint() is called.
   */
  readonly checkpointOnFlush?: boolean;
  /** Called on every CRC mismatch, as the disk store does. */
  readonly onCrcFailure?: (ref: BlockRef, page: number) => void;
}

/** One state of a block: what the store shows, or what survives a crash. Never changed in place once shared. */
interface Copy {
  readonly state: 'data' | 'zero';
  readonly version: Version;
  /** blockSize bytes when state is data. */
  readonly data: Buffer | null;
  /** The stored CRC of each page (what the disk store keeps in the block header), when data. */
  readonly crc: Uint32Array | null;
}

interface Slot {
  readonly ref: BlockRef;
  readonly key: string;
  /** Null: absent, kept only while suspect (a block that may have been lost in a crash). */
  copy: Copy | null;
  /** copy.data and copy.crc are also the durable copy's: clone them before changing either. */
  shared: boolean;
  suspect: boolean;
}

interface DurableCopy {
  readonly ref: BlockRef;
  readonly copy: Copy;
}

/** One state of a block as inspect() shows it: data is blockSize bytes for data, null for a tombstone. */
export interface InspectedCopy {
  readonly state: 'data' | 'zero';
  readonly version: Version;
  readonly data: Buffer | null;
}

export type CrashOutcome = 'durable' | 'visible' | 'torn';

/**
 * The in-memory twin of the disk store (file-block-store.ts), for tests and
 * the deterministic simulation: the same LocalBlockStore contract, plus a
 * crash model and fault injection.
 *
 * Every operation takes effect synchronously, when it is called (an async
 * function runs to its first await at once), so the order of calls is the
 * order of effects, as a seeded simulation needs.
 *
 * Crash model. The store keeps, next to what reads see (the visible state),
 * what a power loss would leave (the durable state): flush() makes every
 * block durable, fua makes the one block it touched durable. crash() turns
 * the store into what a restart would find:
 *  - a block changed since its durable point comes back as its durable
 *    content, its visible content, or a page-wise mix of both (torn), picked
 *    by the injected Random; it keeps its durable version (VERSION_LEGACY
 *    when it had none, VERSION_ABSENT when it comes back absent) and is
 *    suspect, as the disk store's dirty log makes it;
 *  - with checkpointOnFlush false, a block flushed since the last checkpoint
 *    comes back as it was flushed, and suspect;
 *  - every other block is exactly its durable state;
 *  - blocks suspect before the crash stay suspect.
 */
export class MemoryBlockStore implements LocalBlockStore {
  readonly blockSize: number;
  private capacityBytes: number;
  private blocksMax: number;
  private readonly pages: number;
  private readonly checkpointOnFlush: boolean;
  private readonly onCrcFailure: ((ref: BlockRef, page: number) => void) | undefined;
  private readonly slots = new Map<string, Slot>();
  private readonly index = new RefIndex<Slot>();
  private readonly durable = new Map<string, DurableCopy>();
  /** Blocks changed since their durable point (flush or fua). */
  private readonly changed = new Map<string, BlockRef>();
  /** Blocks changed since the last checkpoint (a superset of `changed`). */
  private readonly uncheckpointed = new Map<string, BlockRef>();
  private dataBlocks = 0;
  private closed = false;

  constructor(opts: MemoryBlockStoreOptions) {
    assert(Number.isInteger(opts.blockSize) && opts.blockSize > 0 && opts.blockSize % PAGE_BYTES === 0, 'blockSize is a positive multiple of 4 KiB');
    this.blockSize = opts.blockSize;
    this.pages = pageCount(opts.blockSize);
    this.checkpointOnFlush = opts.checkpointOnFlush ?? true;
    this.onCrcFailure = opts.onCrcFailure;
    this.capacityBytes = 0;
    this.blocksMax = 0;
    this.setCapacity(opts.capacity);
  }

  get capacity(): number {
    return this.capacityBytes;
  }

  // ---------------------------------------------------------------- LocalBlockStore

  meta(ref: BlockRef): BlockMeta {
    const s = this.slots.get(blockRefKey(ref));
    if (s === undefined) return ABSENT_META;
    return this.metaOf(s);
  }

  head(ref: BlockRef): BlockHead {
    const s = this.slots.get(blockRefKey(ref));
    if (s === undefined) return ABSENT_HEAD;
    const c = s.copy;
    if (c === null) return absentHead(s.suspect);
    return { state: c.state, version: c.version, suspect: s.suspect };
  }

  async read(ref: BlockRef, offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    this.checkRange(offset, length);
    const s = this.slots.get(blockRefKey(ref));
    const out = Buffer.alloc(length);
    if (s?.copy?.state !== 'data' || length === 0) return out;
    this.checkPages(s, Math.floor(offset / PAGE_BYTES), Math.ceil((offset + length) / PAGE_BYTES));
    s.copy.data!.copy(out, 0, offset, offset + length);
    return out;
  }

  async write(ref: BlockRef, offset: number, data: Buffer, version: Version, opts: { readonly fua: boolean }): Promise<void> {
    this.checkOpen();
    this.checkRange(offset, data.length);
    this.checkVersion(version);
    const s = this.slotFor(ref);
    this.checkEdgePages(s, offset, data.length);
    const buf = this.dataFor(s, version);
    data.copy(buf.data, offset);
    this.rehash(buf.data, buf.crc, offset, data.length);
    this.changedNow(s, opts.fua);
  }

  async zero(ref: BlockRef, offset: number, length: number, version: Version, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void> {
    this.checkOpen();
    this.checkRange(offset, length);
    this.checkVersion(version);
    const key = blockRefKey(ref);
    const cur = this.slots.get(key)?.copy?.state ?? 'absent';
    const whole = offset === 0 && length === this.blockSize;
    if (opts.punch && (whole || cur !== 'data')) {
      // A whole-block punch frees the data; a partial punch of a block that
      // holds none leaves it holding none. Either way: a tombstone, which
      // reads as zeroes and keeps the version.
      const s = this.slotFor(ref);
      this.setCopy(s, { state: 'zero', version, data: null, crc: null });
      this.changedNow(s, opts.fua);
      return;
    }
    // Without punch (NBD NO_HOLE) the range must end up allocated, so that
    // later writes to it cannot fail for space.
    const s = this.slotFor(ref);
    this.checkEdgePages(s, offset, length);
    const buf = this.dataFor(s, version);
    buf.data.fill(0, offset, offset + length);
    this.rehash(buf.data, buf.crc, offset, length);
    this.changedNow(s, opts.fua);
  }

  async install(ref: BlockRef, data: Buffer | null, version: Version, opts: { readonly fua: boolean }): Promise<void> {
    this.checkOpen();
    this.checkVersion(version);
    assert(data === null || data.length === this.blockSize, 'an installed block is blockSize bytes');
    const s = this.slotFor(ref);
    if (data === null) {
      this.setCopy(s, { state: 'zero', version, data: null, crc: null });
    } else {
      if (s.copy?.state !== 'data') this.reserve(s);
      const copy = Buffer.from(data);
      const crc = new Uint32Array(this.pages);
      crc32cPages(copy, PAGE_BYTES, crc);
      this.setCopy(s, { state: 'data', version, data: copy, crc });
    }
    s.suspect = false;
    this.changedNow(s, opts.fua);
  }

  async confirm(ref: BlockRef, version: Version): Promise<void> {
    this.checkOpen();
    const s = this.slots.get(blockRefKey(ref));
    if (s === undefined || s.copy === null) {
      // Confirming that a block is absent: it leaves nothing to remember.
      assert(version === VERSION_ABSENT, 'an absent block is confirmed at VERSION_ABSENT');
      if (s !== undefined) this.forget(s);
      return;
    }
    this.checkVersion(version);
    this.setCopy(s, { ...s.copy, version });
    s.suspect = false;
    this.changedNow(s, false);
  }

  markSuspect(ref: BlockRef): void {
    this.slotFor(ref).suspect = true;
  }

  async drop(ref: BlockRef): Promise<void> {
    this.checkOpen();
    const s = this.slots.get(blockRefKey(ref));
    if (s === undefined) return;
    if (s.copy !== null) this.noteChange(s.key, s.ref);
    this.setCopy(s, null);
    this.forget(s);
  }

  list(opts: { readonly volumeId?: number; readonly after?: BlockRef | null; readonly limit: number }): ListedBlock[] {
    return this.index.list(opts).map((s) => ({ ref: s.ref, ...this.metaOf(s) }));
  }

  suspects(): BlockRef[] {
    return this.index.list({ limit: Number.MAX_SAFE_INTEGER }, (s) => s.suspect).map((s) => s.ref);
  }

  async verify(ref: BlockRef): Promise<BlockMeta> {
    this.checkOpen();
    const s = this.slots.get(blockRefKey(ref));
    if (s === undefined) return ABSENT_META;
    if (s.copy?.state === 'data') this.checkPages(s, 0, this.pages);
    return this.metaOf(s);
  }

  async flush(): Promise<void> {
    this.checkOpen();
    for (const key of this.changed.keys()) this.makeDurable(key);
    this.changed.clear();
    if (this.checkpointOnFlush) this.uncheckpointed.clear();
  }

  async deleteVolume(volumeId: number): Promise<void> {
    this.checkOpen();
    // Durable at once, as on disk (the disk store flushes before resolving).
    for (const s of this.index.ofVolume(volumeId)) {
      this.setCopy(s, null);
      this.forget(s);
    }
    for (const [key, d] of this.durable) if (d.ref.volumeId === volumeId) this.durable.delete(key);
    for (const m of [this.changed, this.uncheckpointed]) {
      for (const [key, ref] of m) if (ref.volumeId === volumeId) m.delete(key);
    }
  }

  volumeIds(): number[] {
    return this.index.volumeIds();
  }

  usage(): StoreUsage {
    return { capacity: this.capacityBytes, used: this.dataBlocks * this.blockSize, blocks: this.dataBlocks };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  // ---------------------------------------------------------------- simulation and faults

  /** Sets the cap (fill the store up, or make room). Blocks already held stay, even beyond it. */
  setCapacity(bytes: number): void {
    assert(Number.isInteger(bytes) && bytes >= 0, 'capacity is a non-negative integer of bytes');
    this.capacityBytes = bytes;
    this.blocksMax = Math.floor(bytes / this.blockSize);
  }

  /**
   * Ends a checkpoint: flushes, and blocks flushed so far no longer come back
   * suspect from a crash. Only meaningful with checkpointOnFlush false.
   */
  async checkpoint(): Promise<void> {
    await this.flush();
    this.uncheckpointed.clear();
  }

  /**
   * Power loss and restart (see the class comment). Leaves the store open,
   * as the restarted process would find it; returns what happened to each
   * block that was not durable, for the simulation's log.
   */
  crash(random: Random): Map<string, CrashOutcome> {
    const outcomes = new Map<string, CrashOutcome>();
    // Insertion order is the order of calls: deterministic for a seed.
    for (const [key, ref] of this.uncheckpointed) {
      const d = this.durable.get(key)?.copy ?? null;
      let result: Copy | null = d;
      if (this.changed.has(key)) {
        const visible = this.slots.get(key)?.copy ?? null;
        const pick = random.int(3);
        if (pick === 1) result = visible;
        else if (pick === 2) result = this.torn(d, visible, random);
        outcomes.set(key, pick === 0 ? 'durable' : pick === 1 ? 'visible' : 'torn');
      }
      if (result !== null) {
        // What reached the disk keeps the version of its last durable
        // point: the disk store's header is only rewritten at checkpoints.
        result = { ...result, version: d !== null ? d.version : VERSION_LEGACY };
      }
      let s = this.slots.get(key);
      if (s === undefined) {
        s = { ref, key, copy: null, shared: false, suspect: false };
        this.slots.set(key, s);
        this.index.add(s);
      }
      this.setCopy(s, result);
      s.suspect = true;
      if (result === null) this.durable.delete(key);
      else this.durable.set(key, { ref, copy: result });
      s.shared = result?.data != null;
    }
    this.changed.clear();
    this.uncheckpointed.clear();
    this.closed = false;
    return outcomes;
  }

  /**
   * What the store holds for a block, without CRC checks or side effects:
   * the visible state (what reads see now) and the durable state (what a
   * crash would keep of it, before the crash model's tearing). For the
   * simulation's checkers, which must look at every copy without disturbing
   * it. The buffers are the store's own: callers must not change them.
   */
  inspect(ref: BlockRef): { readonly visible: InspectedCopy | null; readonly durable: InspectedCopy | null; readonly suspect: boolean } {
    const key = blockRefKey(ref);
    const s = this.slots.get(key);
    const d = this.durable.get(key)?.copy ?? null;
    const view = (c: Copy | null): InspectedCopy | null => (c === null ? null : { state: c.state, version: c.version, data: c.data });
    return { visible: view(s?.copy ?? null), durable: view(d), suspect: s?.suspect ?? false };
  }

  /**
   * Corrupts one page of a data block on the "medium" (visible and durable
   * copies): the next read or verify of that page fails its CRC. A later
   * write of the page gives it a CRC of what it then holds, as on disk.
   */
  corrupt(ref: BlockRef, page: number): void {
    assert(Number.isInteger(page) && page >= 0 && page < this.pages, 'page lies within the block');
    const s = this.slots.get(blockRefKey(ref));
    assert(s?.copy?.state === 'data', 'only a data block can be corrupted');
    const at = page * PAGE_BYTES + 17;
    s.copy.data![at] = s.copy.data![at]! ^ 0xa5;
    const d = this.durable.get(s.key)?.copy;
    if (d?.data != null && d.data !== s.copy.data) d.data[at] = d.data[at]! ^ 0xa5;
  }

  // ---------------------------------------------------------------- internals

  private metaOf(s: Slot): BlockMeta {
    const c = s.copy;
    if (c === null) return absentMeta(s.suspect);
    const state: BlockState = c.state;
    return { state, version: c.version, suspect: s.suspect, digest: c.state === 'data' ? tableDigest(c.crc!) : 0 };
  }

  private slotFor(ref: BlockRef): Slot {
    const key = blockRefKey(ref);
    let s = this.slots.get(key);
    if (s === undefined) {
      s = { ref, key, copy: null, shared: false, suspect: false };
      this.slots.set(key, s);
      this.index.add(s);
    }
    return s;
  }

  /** Drops a slot that holds nothing worth remembering. */
  private forget(s: Slot): void {
    assert(s.copy === null, 'only an absent block is forgotten');
    this.slots.delete(s.key);
    this.index.remove(s.ref);
  }

  /** Charges a new data block against the cap, or refuses with nothing changed. */
  private reserve(s: Slot): void {
    if (this.dataBlocks < this.blocksMax) return;
    // An absent slot made for this call holds nothing: do not leave it behind.
    if (s.copy === null && !s.suspect) this.forget(s);
    throw new TorusError('TORUS_ERR_STORE_NO_SPACE', `the store is full (${this.blocksMax} blocks of ${this.blockSize} bytes)`, {
      details: { capacity: this.capacityBytes, blocks: this.dataBlocks },
    });
  }

  /** The block as data at `version`, owned by the visible state and ready to change in place. */
  private dataFor(s: Slot, version: Version): { data: Buffer; crc: Uint32Array } {
    const c = s.copy;
    if (c?.state !== 'data') {
      this.reserve(s);
      const fresh = { state: 'data' as const, version, data: Buffer.alloc(this.blockSize), crc: newCrcTable(this.blockSize) };
      this.setCopy(s, fresh);
      return fresh;
    }
    if (s.shared) {
      s.copy = { state: 'data', version, data: Buffer.from(c.data!), crc: c.crc!.slice() };
      s.shared = false;
    } else {
      s.copy = { ...c, version };
    }
    return { data: s.copy.data!, crc: s.copy.crc! };
  }

  private setCopy(s: Slot, copy: Copy | null): void {
    const was = s.copy?.state === 'data';
    const now = copy?.state === 'data';
    if (was && !now) this.dataBlocks--;
    if (!was && now) this.dataBlocks++;
    if (copy === null || copy.data !== s.copy?.data) s.shared = false;
    s.copy = copy;
  }

  /**
   * The pages a range covers only in part keep bytes of what they held:
   * they are checked before the change, or a fresh CRC over the merged page
   * would hide a corrupt one for good.
   */
  private checkEdgePages(s: Slot, offset: number, length: number): void {
    if (s.copy?.state !== 'data' || length === 0) return;
    const p0 = Math.floor(offset / PAGE_BYTES);
    const p1 = Math.ceil((offset + length) / PAGE_BYTES);
    if (offset % PAGE_BYTES !== 0) this.checkPages(s, p0, p0 + 1);
    if ((offset + length) % PAGE_BYTES !== 0 && (p1 - 1 > p0 || offset % PAGE_BYTES === 0)) this.checkPages(s, p1 - 1, p1);
  }

  /** Recomputes the stored CRCs of the pages a range touches, from what they hold now. */
  private rehash(data: Buffer, crc: Uint32Array, offset: number, length: number): void {
    if (length === 0) return;
    const p0 = Math.floor(offset / PAGE_BYTES);
    const p1 = Math.ceil((offset + length) / PAGE_BYTES);
    crc32cPages(data.subarray(p0 * PAGE_BYTES, p1 * PAGE_BYTES), PAGE_BYTES, crc.subarray(p0, p1));
  }

  private checkPages(s: Slot, p0: number, p1: number): void {
    const c = s.copy!;
    for (let p = p0; p < p1; p++) {
      if (crc32c(c.data!.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES)) !== c.crc![p]) {
        s.suspect = true;
        this.onCrcFailure?.(s.ref, p);
        throw new TorusError('TORUS_ERR_STORE_CRC_MISMATCH', `block ${s.key} page ${p} failed its CRC32C check`, { details: { block: s.key, page: p } });
      }
    }
  }

  private changedNow(s: Slot, fua: boolean): void {
    this.noteChange(s.key, s.ref);
    if (fua) {
      this.makeDurable(s.key);
      this.changed.delete(s.key);
      if (this.checkpointOnFlush) this.uncheckpointed.delete(s.key);
    }
  }

  private noteChange(key: string, ref: BlockRef): void {
    this.changed.set(key, ref);
    this.uncheckpointed.set(key, ref);
  }

  private makeDurable(key: string): void {
    const s = this.slots.get(key);
    if (s === undefined || s.copy === null) {
      this.durable.delete(key);
      return;
    }
    this.durable.set(key, { ref: s.ref, copy: s.copy });
    if (s.copy.data !== null) s.shared = true;
  }

  /** A page-wise mix of two states of a block, its CRCs recomputed (the disk store's repair). */
  private torn(a: Copy | null, b: Copy | null, random: Random): Copy | null {
    if (a?.state !== 'data' && b?.state !== 'data') return random.int(2) === 0 ? a : b;
    const data = Buffer.alloc(this.blockSize);
    for (let p = 0; p < this.pages; p++) {
      const from = random.int(2) === 0 ? a : b;
      if (from?.data != null) from.data.copy(data, p * PAGE_BYTES, p * PAGE_BYTES, (p + 1) * PAGE_BYTES);
    }
    const crc = new Uint32Array(this.pages);
    crc32cPages(data, PAGE_BYTES, crc);
    return { state: 'data', version: a?.version ?? VERSION_LEGACY, data, crc };
  }

  private checkOpen(): void {
    if (this.closed) throw new TorusError('TORUS_ERR_STORE_CLOSED', 'the memory block store is closed');
  }

  private checkRange(offset: number, length: number): void {
    assert(Number.isInteger(offset) && offset >= 0, 'offset is a non-negative integer');
    assert(Number.isInteger(length) && length >= 0, 'length is a non-negative integer');
    assert(offset + length <= this.blockSize, 'offset + length lies within the block');
  }

  private checkVersion(version: Version): void {
    assert(isVersion(version) && version !== VERSION_ABSENT, 'a stored block has a version (>= 0)');
  }
}
