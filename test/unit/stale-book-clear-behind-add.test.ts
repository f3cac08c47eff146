import { describe, expect, it } from 'vitest';
import type { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import { staleBookSetup } from '../helpers/stale-book-fixture.js';

/**
 * An addition on its way to etcd, then a clear of the same block queued
 * behind it (a catch-up that finished meanwhile): once both land, etcd no
 * longer names the block, so memory must not count it durable. It did (the
 * addition's completion marked it so), and the next record() of the block
 * returned at once: a change skipping the peer was acknowledged with no
 * record in etcd (sim seed 8000 with --etcd-delays, G4).
 */
describe('StaleBook: a clear queued behind an addition of the same block', () => {
  const setup = staleBookSetup(async () => undefined);

  /** Holds the first addition on its way to etcd until the returned function is called (the clear is queued behind it meanwhile). */
  function holdFirstAddition(md: MemoryMetadata): () => void {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const addInner = md.addStale.bind(md);
    let held = true;
    md.addStale = async (...args) => {
      if (held) {
        held = false;
        await gate;
      }
      return addInner(...args);
    };
    return open;
  }

  it('the block recorded again afterwards reaches etcd before record() resolves', async () => {
    const { md, lock, book, recordOf } = await setup();
    const open = holdFirstAddition(md);
    const added = book.record('peer-d', [29]);
    const cleared = book.clear('peer-d', [29], lock.token);
    open();
    await Promise.all([added, cleared]);
    expect(await recordOf('peer-d')).toBeNull();
    // The next change that skips the peer records the block again.
    await book.record('peer-d', [29]);
    expect(await recordOf('peer-d')).toMatchObject({ ranges: [[29, 30]] });
  });

  it('the same for a whole-volume record cleared behind its addition', async () => {
    const { md, lock, book, recordOf } = await setup();
    const open = holdFirstAddition(md);
    const added = book.record('peer-d', 'all');
    const generation = book.generation('peer-d');
    const cleared = book.clearAll('peer-d', generation, lock.token);
    open();
    await Promise.all([added, cleared]);
    expect(await recordOf('peer-d')).toBeNull();
    await book.record('peer-d', [7]);
    expect(await recordOf('peer-d')).toMatchObject({ ranges: [[7, 8]] });
  });
});
