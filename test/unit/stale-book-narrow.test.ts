import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import { StaleBook } from '../../src/replication/stale-book.js';
import { systemClock } from '../../src/util/clock.js';
import { staleBookSetup } from '../helpers/stale-book-fixture.js';

/**
 * A change that skips a peer because of its whole-volume stale record,
 * while that record is being narrowed to a plan made without the change:
 * the record must still name the block once the narrowing lands, in memory
 * and in etcd, or the peer is trusted again for a block whose acknowledged
 * change it never got.
 */
/** Holds each narrowing in etcd until open(): inEtcd resolves when one has reached it; landed runs once it has. */
function holdNarrowing(md: MemoryMetadata, landed: () => void = () => undefined): { inEtcd: Promise<void>; open: () => void } {
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  let started!: () => void;
  const inEtcd = new Promise<void>((r) => (started = r));
  const inner = md.narrowStale.bind(md);
  md.narrowStale = async (...args) => {
    started();
    await gate;
    await inner(...args);
    landed();
  };
  return { inEtcd, open };
}

describe('StaleBook: a change skipping a peer while its whole-volume record narrows', () => {
  const setup = staleBookSetup((f) => f.book.record('peer-a', 'all'));

  const recordOf = async (md: MemoryMetadata, volumeId: number) => (await md.getStale(volumeId)).find((r) => r.peer === 'peer-a');

  it('with nothing recorded, or a durable whole-volume record, a change waits for nothing', async () => {
    const { book } = await setup();
    expect(book.coverSkipped(['peer-a', 'peer-b'], 5)).toBeNull();
    const empty = new StaleBook(1, new MemoryMetadata(), systemClock, pino({ level: 'silent' }));
    expect(empty.coverSkipped(['peer-a'], 5)).toBeNull();
  });

  it('a block changed after the plan was taken, before the narrowing reached etcd, stays recorded', async () => {
    const { md, vol, lock, book } = await setup();
    // The plan keeps blocks 1 and 2; block 7 changes right after it was taken.
    const narrowed = book.narrow('peer-a', [1, 2], lock.token);
    expect(book.isStale('peer-a', 7)).toBe(true); // still 'all' in memory
    const cover = book.coverSkipped(['peer-a', 'peer-b'], 7);
    expect(cover).not.toBeNull();
    await Promise.all([narrowed, cover]);
    expect(await narrowed).toBe(true);
    expect(book.missed('peer-a')).toEqual([1, 2, 7]);
    expect(book.isStale('peer-a', 7)).toBe(true);
    expect(book.isStale('peer-a', 3)).toBe(false);
    expect(await recordOf(md, vol.id)).toMatchObject({ all: false, ranges: [[1, 3], [7, 8]] });
  });

  it('a change covered while the narrowing is in etcd lands after it, not under it', async () => {
    const { md, vol, lock, book } = await setup();
    // The order etcd sees: the narrowing is held open until block 9 has changed.
    const order: string[] = [];
    const { inEtcd, open } = holdNarrowing(md, () => order.push('narrow'));
    const addInner = md.addStale.bind(md);
    md.addStale = async (...args) => {
      order.push(`add ${JSON.stringify(args[2].ranges ?? [])}`);
      return addInner(...args);
    };
    const narrowed = book.narrow('peer-a', [1], lock.token);
    await inEtcd;
    const cover = book.coverSkipped(['peer-a'], 9);
    expect(cover).not.toBeNull();
    open();
    await Promise.all([narrowed, cover]);
    expect(order).toEqual(['narrow', 'add [[9,10]]']);
    expect(book.missed('peer-a')).toEqual([1, 9]);
    expect(await recordOf(md, vol.id)).toMatchObject({ all: false, ranges: [[1, 2], [9, 10]] });
  });

  it('a change that left the peer out and settles after the narrowing landed records its block again (seed 60697)', async () => {
    const { md, vol, lock, book } = await setup();
    // The change to block 7 is planned while 'all' stands: the peer is left out.
    expect(book.isStale('peer-a', 7)).toBe(true);
    // The narrowing, planned without it, lands before the change settles.
    expect(await book.narrow('peer-a', [1, 2], lock.token)).toBe(true);
    expect(book.isStale('peer-a', 7)).toBe(false);
    const cover = book.coverSkipped(['peer-a'], 7);
    expect(cover, 'the change must record its block for the peer it left out').not.toBeNull();
    await cover;
    expect(book.isStale('peer-a', 7)).toBe(true);
    expect(await recordOf(md, vol.id)).toMatchObject({ all: false, ranges: [[1, 3], [7, 8]] });
  });

  it('a block cleared while the narrowing is in etcd stays cleared in memory, as etcd ends (seed 1580)', async () => {
    const { md, vol, lock, book } = await setup();
    const { inEtcd, open } = holdNarrowing(md);
    // The plan keeps blocks 1 and 7; a learning finds the peer current for 7 while the narrowing is on its way.
    const narrowed = book.narrow('peer-a', [1, 7], lock.token);
    await inEtcd;
    const cleared = book.clear('peer-a', [7], lock.token);
    open();
    await Promise.all([narrowed, cleared]);
    expect(await recordOf(md, vol.id)).toMatchObject({ all: false, ranges: [[1, 2]] });
    // Memory says what etcd says: a change that leaves the peer out of block 7 now must record it.
    expect(book.isStale('peer-a', 7)).toBe(false);
    expect(book.missed('peer-a')).toEqual([1]);
    const cover = book.coverSkipped(['peer-a'], 7);
    expect(cover, 'a change leaving the peer out of block 7 waits for its record').not.toBeNull();
    await cover;
    expect(await recordOf(md, vol.id)).toMatchObject({ all: false, ranges: [[1, 2], [7, 8]] });
  });

  it('a block recorded unsure under a durable whole-volume record stays named in etcd once the record narrows', async () => {
    const { md, vol, lock, book } = await setup();
    // 'all' is durable: the unsure record is covered by it and goes nowhere on its own.
    await book.recordUnsure('peer-a', [6]);
    expect(await book.narrow('peer-a', [1], lock.token)).toBe(true);
    expect(book.isStale('peer-a', 6)).toBe(true);
    const rec = await recordOf(md, vol.id);
    expect(rec, 'etcd names block 6 for the peer, as memory does').toMatchObject({ all: false, ranges: [[1, 2], [6, 7]] });
  });

  it('a failed narrowing leaves the whole-volume record, and additions then reach etcd themselves', async () => {
    const { md, vol, lock, book } = await setup();
    // Not the volume's current token: etcd refuses the narrowing.
    await expect(book.narrow('peer-a', [1], lock.token + 1)).rejects.toMatchObject({ code: 'TORUS_ERR_VOLUME_FENCED' });
    expect(book.missed('peer-a')).toBe('all');
    expect(await recordOf(md, vol.id)).toMatchObject({ all: true });
    // Nothing pending any more: a skipped change waits only for 'all' made durable again.
    const cover = book.coverSkipped(['peer-a'], 4);
    expect(cover).not.toBeNull();
    await cover;
    expect(book.coverSkipped(['peer-a'], 4)).toBeNull();
  });
});
