/**
 * TEMPORARY (replication work, issue 5): serves a LocalBlockStore through
 * the old BlockStore contract, so that src/volume/*, src/peer/*,
 * src/client/* and torusd keep working until they are rewritten on the
 * replica layer (src/replication/). Delete this file with the last caller.
 *
 * What it does not carry over, on purpose:
 * - versions: every write and zero gets VERSION_LEGACY (0), what 0.1.0
 *   blocks have;
 * - fencing: the token is ignored. Fencing moved out of the stores into one
 *   layer above them (the fence table); until that layer serves the peer
 *   protocol, nothing refuses an old writer's token.
 */
import type { BlockRef } from '../model/block-ref.js';
import { VERSION_LEGACY } from '../model/version.js';
import type { BlockStore, StoreUsage, WriteOptions, ZeroOptions } from './block-store.js';
import type { LocalBlockStore } from './local-store.js';

export function asLegacyBlockStore(local: LocalBlockStore): BlockStore {
  return {
    blockSize: local.blockSize,
    read: (ref: BlockRef, offset: number, length: number): Promise<Buffer> => local.read(ref, offset, length),
    write: async (ref: BlockRef, offset: number, data: Buffer, opts: WriteOptions): Promise<void> => {
      // The old contract: an empty write changes nothing (not even allocation).
      if (data.length === 0) return opts.fua ? local.flush() : undefined;
      await local.write(ref, offset, data, VERSION_LEGACY, { fua: opts.fua });
    },
    zero: async (ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void> => {
      // The old contract: punching a block that holds nothing is a no-op (it
      // leaves no tombstone), and so is an empty range.
      const state = local.meta(ref).state;
      if (length === 0 || (opts.punch && state === 'absent')) return opts.fua ? local.flush() : undefined;
      await local.zero(ref, offset, length, VERSION_LEGACY, { punch: opts.punch, fua: opts.fua });
    },
    flush: (): Promise<void> => local.flush(),
    allocated: async (refs: readonly BlockRef[]): Promise<boolean[]> => refs.map((r) => local.meta(r).state === 'data'),
    deleteVolume: (volumeId: number): Promise<void> => local.deleteVolume(volumeId),
    usage: (): StoreUsage => local.usage(),
    close: (): Promise<void> => local.close(),
  };
}
