import type { BlockMeta, BlockState } from '../model/block-meta.js';
import type { Version } from '../model/version.js';
import { assert } from '../util/assert.js';
import { Recency } from '../util/recency.js';

/**
 * What a coordinator knows about the blocks of its volume: each block's
 * current version (the newest copy any trusted owner has, or the newest
 * change this coordinator made) and what each owner holds. Learnt on the
 * first touch of a block (docs/replication.md, "Versions"), kept up to date
 * by the coordinator's own changes, and bounded: idle entries go least
 * recently used first and are learnt again on the next touch.
 */
export interface BlockEntry {
  readonly index: number;
  /** The head of the block's chain: the newest version assigned or learnt; the next change builds on it. */
  version: Version;
  /**
   * The newest version whose change was acknowledged (or that was learnt
   * from the owners): a read must return at least this.
   */
  committed: Version;
  /** Changes sent and not yet settled. */
  inflight: number;
  /** Resolves when inflight drops to 0 (set while someone waits). */
  drained: { promise: Promise<void>; resolve: () => void } | null;
  state: BlockState;
  /** Digest of the newest copy when known from an owner's metadata (for confirming suspect copies). */
  digest: number | null;
  /**
   * The newest version this coordinator acknowledged or returned from a
   * read: learning the block again must never settle below it.
   */
  floor: Version;
  /**
   * The newest version of a change this coordinator acknowledged to its
   * client: learning the block again below it means that change was lost
   * (every later flush then fails: coordinator.ts, loseData).
   */
  acked: Version;
  /** Owner → the version it holds (VERSION_ABSENT for nothing). Unknown owners are missing. */
  readonly holders: Map<string, Version>;
  /** Owner → its metadata as last asked (a move compares new owners' copies with it). */
  readonly metas: Map<string, BlockMeta>;
  /**
   * Owners a rescue found holding the newest copy while a whole-volume
   * stale record still names them (it is narrowed, then cleared, by the
   * catch-up): they serve this version of the block meanwhile.
   */
  vouched?: ReadonlySet<string>;
  /** A change failed half way: owners may disagree; learn again before the next use. */
  unsure: boolean;
  /** Changes and flush bookkeeping that need this entry kept in memory. */
  pins: number;
}

export class BlockTable {
  private readonly entries = new Map<number, BlockEntry>();
  /** Use order, for eviction (not the Map's insertion order: see util/recency.ts). */
  private readonly recency = new Recency<number>();

  constructor(private readonly max: number) {
    assert(max >= 16, 'the block table keeps at least 16 entries');
  }

  get(index: number): BlockEntry | undefined {
    const e = this.entries.get(index);
    if (e !== undefined) this.recency.use(index);
    return e;
  }

  peek(index: number): BlockEntry | undefined {
    return this.entries.get(index);
  }

  set(e: BlockEntry): void {
    this.entries.set(e.index, e);
    this.recency.use(e.index);
    if (this.entries.size > this.max) this.evict();
  }

  forget(index: number): void {
    const e = this.entries.get(index);
    if (e !== undefined && e.pins === 0) this.drop(index);
  }

  size(): number {
    return this.entries.size;
  }

  /** Every entry held, without changing their recency. */
  values(): IterableIterator<BlockEntry> {
    return this.entries.values();
  }

  /** Drops idle entries, least recently used first, down to 90 % of the limit. */
  private evict(): void {
    const target = Math.floor(this.max * 0.9);
    for (const index of this.recency.oldestFirst()) {
      if (this.entries.size <= target) break;
      if (this.entries.get(index)!.pins === 0) this.drop(index);
    }
  }

  private drop(index: number): void {
    this.entries.delete(index);
    this.recency.forget(index);
  }
}
