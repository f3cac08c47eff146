import { describe, expect, it } from 'vitest';
import type { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { StaleRecord } from '../../src/model/records.js';
import type { StaleBook } from '../../src/replication/stale-book.js';
import { staleBookSetup } from '../helpers/stale-book-fixture.js';

/**
 * A catch-up clears a block from a peer's record (memory at once, etcd
 * through the queue) while the next pass re-reads etcd. The read must not
 * bring the block back as durable: a change that then skips the peer would
 * be acknowledged with no record in etcd naming it, and the next holder of
 * the volume would trust the peer's older copy. (It also made a catch-up
 * copy the same block twice: the flaky bound in test/faults/
 * replication-faults.test.ts, "sent only what it missed".)
 */
describe('StaleBook: a re-read of etcd while a clear is on its way', () => {
  const setup = staleBookSetup((f) => f.book.record('peer-d', [3, 5, 9]));

  /** Holds etcd's answers to getStale once served, until `open()`; `served` resolves when one was. */
  function holdReads(md: MemoryMetadata): { served: Promise<void>; open: () => void } {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let served!: () => void;
    const inEtcd = new Promise<void>((r) => (served = r));
    const getInner = md.getStale.bind(md);
    md.getStale = async (...args) => {
      const records = await getInner(...args);
      served();
      await gate;
      return records;
    };
    return { served: inEtcd, open };
  }

  /** After everything settled: memory distrusts the peer exactly where etcd does, and a change skipping it waits for a record wherever etcd holds none. */
  async function expectAgrees(recordOf: (peer: string) => Promise<StaleRecord | null>, book: StaleBook, blocks: number[]) {
    const record = await recordOf('peer-d');
    const inEtcd = (i: number) => record !== null && (record.all || record.ranges.some(([s, e]) => i >= s && i < e));
    for (const i of blocks) {
      expect({ block: i, memory: book.isStale('peer-d', i) }).toEqual({ block: i, memory: inEtcd(i) });
      if (book.isStale('peer-d', i) && !inEtcd(i)) expect(book.coverSkipped(['peer-d'], i), `block ${i}`).not.toBeNull();
    }
  }

  it('a clear made just before the read is not read back', async () => {
    const { lock, book, recordOf } = await setup();
    const cleared = book.clear('peer-d', [5], lock.token);
    const refreshed = book.refresh();
    await Promise.all([cleared, refreshed]);
    expect(await recordOf('peer-d')).toMatchObject({ ranges: [[3, 4], [9, 10]] });
    expect(book.missed('peer-d')).toEqual([3, 9]);
    await expectAgrees(recordOf, book, [3, 5, 9]);
  });

  it('a clear made while the read is in etcd is not read back either', async () => {
    const { md, lock, book, recordOf } = await setup();
    // The read is served, then held, while the catch-up clears block 9.
    const held = holdReads(md);
    const refreshed = book.refresh();
    await held.served;
    const cleared = book.clear('peer-d', [9], lock.token);
    held.open();
    await Promise.all([cleared, refreshed]);
    expect(await recordOf('peer-d')).toMatchObject({ ranges: [[3, 4], [5, 6]] });
    expect(book.missed('peer-d')).toEqual([3, 5]);
    await expectAgrees(recordOf, book, [3, 5, 9]);
  });

  it('a whole-volume record cleared while the read is in etcd stays cleared', async () => {
    const { md, lock, book, recordOf } = await setup();
    await book.record('peer-d', 'all');
    const generation = book.generation('peer-d');
    const held = holdReads(md);
    const refreshed = book.refresh();
    await held.served;
    const cleared = book.clearAll('peer-d', generation, lock.token);
    held.open();
    expect(await cleared).toBe(true);
    await refreshed;
    expect(await recordOf('peer-d')).toBeNull();
    expect(book.stalePeers()).toEqual([]);
    await expectAgrees(recordOf, book, [0, 3, 5, 9, 63]);
  });

  it('what etcd holds that memory did not know is still merged, and a removal etcd refuses comes back', async () => {
    const { md, vol, lock, book, recordOf } = await setup();
    // A peer recorded its own suspect block 12 (no token needed).
    await md.addStale(vol.id, 'peer-d', { ranges: [[12, 13]] });
    const removeInner = md.removeStale.bind(md);
    md.removeStale = async () => {
      throw new Error('etcd is unreachable');
    };
    const cleared = book.clear('peer-d', [3], lock.token).catch((err: Error) => err.message);
    const refreshed = book.refresh();
    expect(await cleared).toBe('etcd is unreachable');
    await refreshed;
    md.removeStale = removeInner;
    expect(book.missed('peer-d')).toEqual([3, 5, 9, 12]);
    await expectAgrees(recordOf, book, [3, 5, 9, 12]);
  });

  it('a read that fails rejects, and the queue goes on', async () => {
    const { lock, book, md, recordOf } = await setup();
    const getInner = md.getStale.bind(md);
    md.getStale = async () => {
      throw new Error('etcd is unreachable');
    };
    await expect(book.refresh()).rejects.toThrow('etcd is unreachable');
    md.getStale = getInner;
    await book.clear('peer-d', [3], lock.token);
    await book.refresh();
    expect(book.missed('peer-d')).toEqual([5, 9]);
    await expectAgrees(recordOf, book, [3, 5, 9]);
  });
});
