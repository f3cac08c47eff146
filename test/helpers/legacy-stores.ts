import { TorusError } from '../../src/errors/torus-error.js';
import type { BlockStore, WriteOptions } from '../../src/store/block-store.js';
import { asLegacyBlockStore } from '../../src/store/legacy-adapter.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';

/**
 * Test stand-ins for the old BlockStore contract while src/volume and
 * src/peer still speak it (see src/store/legacy-adapter.ts). Fencing left
 * the stores; the tests that check a token travels from a Volume or across
 * the wire use this fake, which refuses tokens older than the newest seen
 * per volume as the stores used to.
 */
export interface FencingTestStore extends BlockStore {
  fenceOf(volumeId: number): number | undefined;
}

export function withTestFencing(inner: BlockStore): FencingTestStore {
  const fences = new Map<number, number>();
  const check = (volumeId: number, opts: WriteOptions): void => {
    if (opts.fence === undefined) return;
    const newest = fences.get(volumeId);
    if (newest !== undefined && opts.fence < newest) {
      throw new TorusError('TORUS_ERR_VOLUME_FENCED', `volume ${volumeId}: fence token ${opts.fence} is older than ${newest}`);
    }
  };
  const note = (volumeId: number, opts: WriteOptions): void => {
    if (opts.fence !== undefined && opts.fence > (fences.get(volumeId) ?? -1)) fences.set(volumeId, opts.fence);
  };
  return {
    ...inner,
    read: (ref, offset, length) => inner.read(ref, offset, length),
    write: async (ref, offset, data, opts) => {
      check(ref.volumeId, opts);
      await inner.write(ref, offset, data, opts);
      note(ref.volumeId, opts);
    },
    zero: async (ref, offset, length, opts) => {
      check(ref.volumeId, opts);
      await inner.zero(ref, offset, length, opts);
      note(ref.volumeId, opts);
    },
    fenceOf: (volumeId) => fences.get(volumeId),
  };
}

/** A MemoryBlockStore behind the old contract, with test fencing. */
export function legacyMemoryStore(blockSize: number, capacity: number): FencingTestStore {
  return withTestFencing(asLegacyBlockStore(new MemoryBlockStore({ blockSize, capacity })));
}
