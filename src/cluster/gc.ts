import type { Logger } from 'pino';
import type { MetadataService } from '../metadata/metadata-service.js';
import type { BlockRef } from '../model/block-ref.js';
import type { RingRecord } from '../model/records.js';
import { ownersOf } from '../replication/owners.js';
import type { Replica } from '../replication/replica.js';
import type { LocalBlockStore } from '../store/local-store.js';
import { rethrowAssertion } from '../util/invariant.js';

export interface GarbageCollectorOptions {
  readonly node: { readonly uuid: string; readonly replica: Replica | null; currentRing(): RingRecord; readonly isLive: boolean };
  readonly store: LocalBlockStore;
  readonly metadata: MetadataService;
  readonly logger: Logger;
}

/** Blocks looked at per page of the local store's listing. */
const GC_PAGE_BLOCKS = 4096;

/**
 * Frees space, and only what is certainly unneeded (docs/replication.md,
 * "Garbage collection"): blocks of volumes etcd said are deleted, and
 * copies of blocks this peer does not own under a stable ring. A failed
 * read of etcd frees nothing; each leftover is dropped inside the block's
 * order after checking the ring has not moved since the pass began.
 */
export class GarbageCollector {
  private readonly log: Logger;
  private running = false;

  constructor(private readonly opts: GarbageCollectorOptions) {
    this.log = opts.logger.child({ module: 'gc' });
  }

  async run(): Promise<{ volumes: number; leftovers: number }> {
    if (this.running || !this.opts.node.isLive) return { volumes: 0, leftovers: 0 };
    this.running = true;
    try {
      return { volumes: await this.deletedVolumes(), leftovers: await this.leftovers() };
    } finally {
      this.running = false;
    }
  }

  private async deletedVolumes(): Promise<number> {
    let freed = 0;
    let gc: { live: number[]; lastId: number };
    try {
      gc = await this.opts.metadata.volumeIdsForGc();
    } catch (err) {
      rethrowAssertion(err);
      this.log.warn({ err }, 'garbage collection skipped: could not list volumes');
      return 0;
    }
    const live = new Set(gc.live);
    for (const id of this.opts.store.volumeIds()) {
      // Ids above the highest handed out may belong to a volume being created.
      if (live.has(id) || id > gc.lastId) continue;
      this.log.info({ volumeId: id }, 'freeing the blocks of a deleted volume');
      await this.opts.store.deleteVolume(id);
      freed++;
    }
    return freed;
  }

  private async leftovers(): Promise<number> {
    const replica = this.opts.node.replica;
    const planned = this.opts.node.currentRing();
    if (replica === null || planned.transition !== null) return 0;
    const self = this.opts.node.uuid;
    const notOwner = (ref: BlockRef): boolean => {
      const ring = this.opts.node.currentRing();
      return ring.version === planned.version && !ownersOf(ring, ref).all.includes(self);
    };
    let dropped = 0;
    let after: BlockRef | null = null;
    for (;;) {
      const page = this.opts.store.list({ after, limit: GC_PAGE_BLOCKS });
      if (page.length === 0) break;
      for (const b of page) {
        if (!notOwner(b.ref)) continue;
        if (await replica.dropLeftover(b.ref, planned.version, () => notOwner(b.ref))) dropped++;
      }
      after = page[page.length - 1]!.ref;
      if (page.length < GC_PAGE_BLOCKS) break;
    }
    if (dropped > 0) this.log.info({ blocks: dropped, ringVersion: planned.version }, 'dropped copies of blocks this peer no longer owns');
    return dropped;
  }
}
