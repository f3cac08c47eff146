import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import { compareCopies, type BlockHead, type BlockMeta, type ListedBlock } from '../model/block-meta.js';
import { blockRefKey, type BlockRef } from '../model/block-ref.js';
import {
  LIST_BLOCKS_MAX,
  META_REFS_MAX,
  type BlockCopy,
  type ChangeStamp,
  type InstallOutcome,
  type PeerInfo,
  type ReadReply,
  type ReplicaApi,
  type ReplicaWriteOptions,
  type RequestContext,
  type StoreUsageInfo,
} from '../model/replica-api.js';
import { formatVersion, VERSION_ABSENT, type Version } from '../model/version.js';
import type { LocalBlockStore } from '../store/local-store.js';
import { assert } from '../util/assert.js';
import { IdleSweep } from '../util/idle-sweep.js';
import type { FenceTable } from './fence-table.js';

/** A change this replica applied: what the simulation's fencing checker watches. */
export interface AppliedChange {
  readonly ref: BlockRef;
  readonly kind: 'write' | 'zero' | 'install' | 'confirm' | 'drop';
  readonly token: number;
  readonly version: Version;
}

export interface ReplicaOptions {
  readonly uuid: string;
  /** New at every start of the process. */
  readonly incarnation: string;
  readonly store: LocalBlockStore;
  readonly fences: FenceTable;
  /** The ring version this peer uses now. */
  readonly ringVersion: () => number;
  /** False while this peer has no etcd session (or has not re-read ring and fences since): every request is refused. */
  readonly live: () => boolean;
  /** A sender placed a request with a newer ring than ours: the node should re-read the ring. */
  readonly onNewerRing?: (ringVersion: number) => void;
  /** A block became suspect here (gap, checksum failure): the node records it stale in etcd. */
  readonly onSuspect?: (ref: BlockRef, why: string) => void;
  /** Every change applied (tests and the simulation). */
  readonly onApplied?: (change: AppliedChange) => void;
  readonly logger: Logger;
}

/**
 * The rules that make a peer's copies safe to compare (docs/replication.md,
 * "Versions" and "Fencing"), over a local store that only does what it is
 * told. This object is what other peers reach through the peer protocol,
 * and what this peer's own coordinators call directly.
 *
 * Order: every change to one block runs after the changes to that block
 * that arrived before it (a FIFO per block, entered synchronously when the
 * call is made). The peer server calls methods in the order requests
 * arrive on a connection, so changes a coordinator sends down one
 * connection apply in the order it sent them.
 */
export class Replica implements ReplicaApi {
  private readonly opts: ReplicaOptions;
  private readonly store: LocalBlockStore;
  private readonly log: Logger;
  /** Tail of each block's change queue; null once it drains, the key kept (util/idle-sweep.ts). */
  private readonly tails = new IdleSweep<string, Promise<unknown> | null>((tail) => tail === null);

  constructor(opts: ReplicaOptions) {
    this.opts = opts;
    this.store = opts.store;
    this.log = opts.logger.child({ module: 'replica', peer: opts.uuid });
  }

  get blockSize(): number {
    return this.store.blockSize;
  }

  // ------------------------------------------------------------ reads

  async read(ctx: RequestContext, ref: BlockRef, offset: number, length: number): Promise<ReadReply> {
    this.admitRequest(ctx, false);
    this.checkRange(offset, length);
    // Metadata first, then bytes: the bytes are at least as new as the version reported.
    const meta = this.store.meta(ref);
    if (meta.suspect) throw suspectError(ref, meta);
    try {
      if (this.store.readSummed === undefined) return { meta, data: await this.store.read(ref, offset, length) };
      const { data, crc32c } = await this.store.readSummed(ref, offset, length);
      return crc32c === null ? { meta, data } : { meta, data, dataCrc: crc32c };
    } catch (err) {
      this.noteCrcFailure(ref, err);
      throw err;
    }
  }

  async meta(ctx: RequestContext, refs: readonly BlockRef[]): Promise<BlockMeta[]> {
    this.admitRequest(ctx, false);
    assert(refs.length <= META_REFS_MAX, 'at most META_REFS_MAX refs per meta request');
    return refs.map((r) => this.store.meta(r));
  }

  async list(ctx: RequestContext, volumeId: number, after: BlockRef | null, limit: number): Promise<{ blocks: ListedBlock[]; more: boolean }> {
    this.admitRequest(ctx, false);
    assert(Number.isInteger(limit) && limit > 0, 'list limit is positive');
    const n = Math.min(limit, LIST_BLOCKS_MAX);
    const blocks = this.store.list({ volumeId, after, limit: n + 1 });
    return { blocks: blocks.slice(0, n), more: blocks.length > n };
  }

  async verify(ctx: RequestContext, ref: BlockRef): Promise<BlockMeta> {
    this.admitRequest(ctx, false);
    try {
      return await this.store.verify(ref);
    } catch (err) {
      this.noteCrcFailure(ref, err);
      throw err;
    }
  }

  // ------------------------------------------------------------ changes

  write(ctx: RequestContext, ref: BlockRef, offset: number, data: Buffer, stamp: ChangeStamp, opts: ReplicaWriteOptions): Promise<void> {
    try {
      this.admitRequest(ctx);
      this.checkRange(offset, data.length);
      this.checkStamp(stamp);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.serial(ref, async () => {
      await this.opts.fences.admit(ref.volumeId, stamp.token);
      const whole = offset === 0 && data.length === this.blockSize;
      if (!this.applies(ref, stamp, whole)) return;
      await this.changeStore(ref, () => this.store.write(ref, offset, data, stamp.version, opts));
      this.opts.onApplied?.({ ref, kind: 'write', token: stamp.token, version: stamp.version });
    });
  }

  expectWrites(_ctx: RequestContext, refs: readonly BlockRef[]): void {
    if (!this.opts.live()) return;
    this.store.premark?.(refs);
  }

  zero(ctx: RequestContext, ref: BlockRef, offset: number, length: number, stamp: ChangeStamp, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void> {
    try {
      this.admitRequest(ctx);
      this.checkRange(offset, length);
      this.checkStamp(stamp);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.serial(ref, async () => {
      await this.opts.fences.admit(ref.volumeId, stamp.token);
      const whole = offset === 0 && length === this.blockSize;
      if (!this.applies(ref, stamp, whole)) return;
      await this.changeStore(ref, () => this.store.zero(ref, offset, length, stamp.version, opts));
      this.opts.onApplied?.({ ref, kind: 'zero', token: stamp.token, version: stamp.version });
    });
  }

  install(ctx: RequestContext, ref: BlockRef, copy: BlockCopy, opts: { readonly token: number; readonly fua: boolean }): Promise<InstallOutcome> {
    try {
      this.admitRequest(ctx);
      assert(copy.version >= 0, 'an installed copy has a version');
      assert(copy.state === 'zero' ? copy.data === null : copy.data !== null && copy.data.length === this.blockSize, 'a data copy is one whole block; a tombstone has no data');
    } catch (err) {
      return Promise.reject(err);
    }
    return this.serial(ref, async () => {
      await this.opts.fences.admit(ref.volumeId, opts.token);
      const meta = this.store.head(ref);
      if (!meta.suspect) {
        // Never back in time: a copy that is not newer changes nothing.
        const order = compareCopies(copy, meta);
        if (order === 0) return 'same';
        if (order < 0) return 'newer';
      }
      await this.changeStore(ref, () => this.store.install(ref, copy.data, copy.version, { fua: opts.fua }));
      this.opts.onApplied?.({ ref, kind: 'install', token: opts.token, version: copy.version });
      return 'installed';
    });
  }

  confirm(ctx: RequestContext, ref: BlockRef, version: Version, digest: number, opts: { readonly token: number }): Promise<boolean> {
    try {
      this.admitRequest(ctx);
      assert(version >= 0, 'a confirmed copy has a version');
    } catch (err) {
      return Promise.reject(err);
    }
    return this.serial(ref, async () => {
      await this.opts.fences.admit(ref.volumeId, opts.token);
      const meta = this.store.meta(ref);
      if (meta.state === 'absent' || meta.digest !== digest) return false;
      if (!meta.suspect && meta.version === version) return true;
      // A copy that is not suspect and not older must not be relabelled.
      if (!meta.suspect && meta.version > version) return false;
      // The digest sums up the copy's checksum table, not its bytes. A copy
      // made suspect by a checksum failure still has the table it was
      // written with (equal digests) over damaged pages: every page must
      // match its checksum before the copy is trusted again; otherwise the
      // coordinator installs a fresh copy.
      if (meta.state === 'data') {
        try {
          await this.store.verify(ref);
        } catch (err) {
          if (!isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH')) throw err;
          this.noteCrcFailure(ref, err);
          return false;
        }
      }
      await this.store.confirm(ref, version);
      this.opts.onApplied?.({ ref, kind: 'confirm', token: opts.token, version });
      return true;
    });
  }

  drop(ctx: RequestContext, ref: BlockRef, version: Version, opts: { readonly token: number }): Promise<boolean> {
    try {
      this.admitRequest(ctx);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.serial(ref, async () => {
      await this.opts.fences.admit(ref.volumeId, opts.token);
      const meta = this.store.head(ref);
      if (meta.state === 'absent' && !meta.suspect) return true;
      if (!meta.suspect && meta.version > version) return false;
      await this.store.drop(ref);
      this.opts.onApplied?.({ ref, kind: 'drop', token: opts.token, version });
      return true;
    });
  }

  /**
   * Drops this peer's own leftover copy (garbage collection), only if the
   * ring is still at the version the caller planned with: checked inside
   * the block's order, so a ring that just gave the block back to this peer
   * (and a copy installed since) is never dropped.
   */
  dropLeftover(ref: BlockRef, plannedRingVersion: number, stillLeftover: () => boolean): Promise<boolean> {
    return this.serial(ref, async () => {
      if (this.opts.ringVersion() !== plannedRingVersion || !stillLeftover()) return false;
      const meta = this.store.head(ref);
      if (meta.state === 'absent' && !meta.suspect) return false;
      await this.store.drop(ref);
      this.opts.onApplied?.({ ref, kind: 'drop', token: 0, version: meta.version });
      return true;
    });
  }

  async fence(ctx: RequestContext, volumeId: number, token: number): Promise<void> {
    this.admitRequest(ctx, false);
    await this.opts.fences.learn(volumeId, token);
  }

  async flush(ctx: RequestContext): Promise<void> {
    this.admitRequest(ctx, false);
    await this.store.flush();
  }

  async deleteVolume(ctx: RequestContext, volumeId: number): Promise<void> {
    this.admitRequest(ctx);
    await this.store.deleteVolume(volumeId);
  }

  async usage(ctx: RequestContext): Promise<StoreUsageInfo> {
    this.admitRequest(ctx, false);
    return this.store.usage();
  }

  async hello(ctx: RequestContext): Promise<PeerInfo> {
    // Answered even while not live: it is how others probe us.
    if (ctx.ringVersion > this.opts.ringVersion()) this.opts.onNewerRing?.(ctx.ringVersion);
    return { uuid: this.opts.uuid, incarnation: this.opts.incarnation, ringVersion: this.opts.ringVersion() };
  }

  // ------------------------------------------------------------ rules

  /**
   * Whether a change applies to the copy as it is now (docs/replication.md,
   * "Versions"). False when the copy already has it (a duplicate, or a
   * later version that includes it). Throws TORUS_ERR_REPLICA_STALE, after
   * marking the block suspect, when the change does not build on the copy.
   */
  private applies(ref: BlockRef, stamp: ChangeStamp, whole: boolean): boolean {
    const meta = this.store.head(ref);
    if (meta.suspect) {
      // A whole-block change replaces whatever the copy holds, but the copy
      // stays suspect for the coordinator to confirm: refusing is simpler
      // and the coordinator's catch-up installs it anyway.
      throw suspectError(ref, meta);
    }
    if (meta.state !== 'absent' && meta.version >= stamp.version) return false;
    if (whole) return true;
    const builds = stamp.prev === VERSION_ABSENT ? meta.state === 'absent' : meta.state !== 'absent' && meta.version === stamp.prev;
    if (builds) return true;
    this.store.markSuspect(ref);
    const why = `a change to ${formatVersion(stamp.version)} builds on ${formatVersion(stamp.prev)} but this copy is at ${formatVersion(meta.version)}`;
    this.log.warn({ block: blockRefKey(ref), have: meta.version, prev: stamp.prev, version: stamp.version }, 'gap in a block\'s changes; the block is suspect until caught up');
    this.opts.onSuspect?.(ref, why);
    throw new TorusError('TORUS_ERR_REPLICA_STALE', `block ${blockRefKey(ref)}: ${why}`, { details: { have: meta.version, prev: stamp.prev } });
  }

  /**
   * A change the store could not finish (a full or failing disk) may leave
   * part of it behind; the store then marks the block suspect
   * (file-block-store.ts afterFailedChange), and the peer record must say
   * so, as for a gap or a checksum failure.
   */
  private async changeStore(ref: BlockRef, change: () => Promise<void>): Promise<void> {
    try {
      await change();
    } catch (err) {
      if (this.store.head(ref).suspect) this.opts.onSuspect?.(ref, `a change failed part way: ${(err as Error).message}`);
      throw err;
    }
  }

  private noteCrcFailure(ref: BlockRef, err: unknown): void {
    if (err instanceof TorusError && err.code === 'TORUS_ERR_STORE_CRC_MISMATCH') {
      this.opts.onSuspect?.(ref, 'checksum failure');
    }
  }

  /**
   * Refusals that apply to every request: a sender with an older ring; and
   * for changes, a peer without an etcd session (its fences and ring may be
   * behind: docs/replication.md, "Fencing"). Reads, metadata and flushes are
   * served regardless: the caller judges copies by their versions.
   */
  private admitRequest(ctx: RequestContext, change = true): void {
    if (change && !this.opts.live()) {
      throw new TorusError('TORUS_ERR_PEER_NOT_LIVE', `peer ${this.opts.uuid} has no etcd session; it serves nothing until it has re-registered`);
    }
    const mine = this.opts.ringVersion();
    if (ctx.ringVersion < mine) {
      throw new TorusError('TORUS_ERR_RING_OUTDATED', `request placed with ring version ${ctx.ringVersion}; this peer uses ${mine}`, { details: { ringVersion: mine } });
    }
    if (ctx.ringVersion > mine) this.opts.onNewerRing?.(ctx.ringVersion);
  }

  /** Runs fn after every earlier change to the same block; the queue is entered now, synchronously. */
  private serial<T>(ref: BlockRef, fn: () => Promise<T>): Promise<T> {
    const key = blockRefKey(ref);
    const before = this.tails.entries.get(key);
    if (before === null) this.tails.woke();
    const run = before == null ? fn() : before.then(fn, fn);
    // The tail never rejects; once this change settled with nothing queued
    // behind it, the block's queue is empty.
    const settled = (): void => {
      if (this.tails.entries.get(key) !== tail) return;
      this.tails.entries.set(key, null);
      this.tails.slept();
    };
    const tail: Promise<void> = run.then(settled, settled);
    this.tails.entries.set(key, tail);
    return run;
  }

  private checkRange(offset: number, length: number): void {
    assert(Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.blockSize, 'range lies within one block');
  }

  private checkStamp(stamp: ChangeStamp): void {
    assert(Number.isSafeInteger(stamp.version) && stamp.version > 0, 'a change creates a positive version');
    assert(stamp.prev === VERSION_ABSENT || (Number.isSafeInteger(stamp.prev) && stamp.prev >= 0 && stamp.prev < stamp.version), 'a change builds on an older version');
    assert(Number.isInteger(stamp.token) && stamp.token > 0, 'a change carries a fencing token');
  }
}

function suspectError(ref: BlockRef, meta: BlockHead): TorusError {
  return new TorusError('TORUS_ERR_REPLICA_STALE', `block ${blockRefKey(ref)} is suspect here (${formatVersion(meta.version)}); it must be caught up before it is read or changed`, {
    details: { suspect: true, have: meta.version },
  });
}
