/**
 * A change the store cannot finish (the disk under the data dir full part
 * way through a write) leaves its block suspect: the store takes the
 * block's checksums from what the file holds, so it reads without
 * checksum errors, and the replica tells the node (onSuspect), which names
 * the volume in its peer record so that a coordinator compares and
 * repairs the copy. Until then the copy refuses changes; an install of a
 * current copy makes it trusted again. The disk is the crash-point test's
 * model (test/helpers/crash-disk.ts), failing writes with ENOSPC when told.
 */
import pino from 'pino';
import { expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import { makeVersion, VERSION_ABSENT } from '../../src/model/version.js';
import { FenceTable } from '../../src/replication/fence-table.js';
import { Replica } from '../../src/replication/replica.js';
import { FileBlockStore } from '../../src/store/file-block-store.js';
import { SeededRandom } from '../../src/util/random.js';
import { CrashDisk } from '../helpers/crash-disk.js';

const BS = 16 * 1024;
const CTX = { ringVersion: 1 };
const log = pino({ level: 'silent' });

/** Runs the model disk's calls until `p` settles. */
async function drive<T>(disk: CrashDisk, p: Promise<T>): Promise<T> {
  let done = false;
  const settled = p.finally(() => (done = true));
  settled.catch(() => undefined);
  await disk.runUntil(new SeededRandom(7), () => done);
  return settled;
}

it('a write the disk cannot finish leaves its block suspect, reported, readable without checksum errors, and replaced by an install', async () => {
  const disk = new CrashDisk({ dirs: new Set(['/data']), files: new Map() });
  const store = await drive(disk, FileBlockStore.open({ dir: '/data/store', blockSize: BS, capacity: 64 * BS, logger: log, io: disk, checkpointIntervalMs: 3_600_000 }));
  const saved = new Map<number, number>();
  const fences = await FenceTable.open({ load: async () => new Map(saved), save: async (f) => void f.forEach((t, v) => saved.set(v, t)) });
  const reported: BlockRef[] = [];
  const replica = new Replica({ uuid: 'p', incarnation: 'i', store, fences, ringVersion: () => 1, live: () => true, logger: log, onSuspect: (ref) => reported.push(ref) });
  const ref = blockRef(1, 1, 0);
  const v1 = makeVersion(2, 1);
  const v2 = makeVersion(2, 2);
  const first = new SeededRandom(1).bytes(BS);
  await drive(disk, replica.write(CTX, ref, 0, first, { token: 2, version: v1, prev: VERSION_ABSENT }, { fua: false }));

  // The disk fills up: the next write takes one sector of its bytes, then ENOSPC.
  disk.faults = { random: { next: () => 0, int: () => 1, bytes: (n) => Buffer.alloc(n) }, noSpace: 1, io: 0 };
  const second = new SeededRandom(2).bytes(2 * 4096);
  const failed = await drive(disk, replica.write(CTX, ref, 4096, second, { token: 2, version: v2, prev: v1 }, { fua: false })).then(
    () => null,
    (err: unknown) => err,
  );
  disk.faults = null;
  expect(isTorusError(failed, 'TORUS_ERR_STORE_NO_SPACE'), String(failed)).toBe(true);
  expect(disk.injected).toBeGreaterThan(0);
  expect(reported).toEqual([ref]);
  expect(store.head(ref)).toMatchObject({ state: 'data', suspect: true });

  // Part of the write is on disk and the checksums say so: no checksum error.
  const held = await drive(disk, store.read(ref, 0, BS));
  expect(held.subarray(0, 4096).equals(first.subarray(0, 4096))).toBe(true);
  expect(held.subarray(4096, 4096 + 512).equals(second.subarray(0, 512))).toBe(true);
  expect(held.subarray(4096 + 512, 3 * 4096).equals(first.subarray(4096 + 512, 3 * 4096))).toBe(true);

  // Not trusted: changes are refused until a coordinator replaces the copy.
  await expect(drive(disk, replica.write(CTX, ref, 0, first, { token: 2, version: makeVersion(2, 3), prev: v2 }, { fua: false }))).rejects.toMatchObject({ code: 'TORUS_ERR_REPLICA_STALE' });
  const current = new SeededRandom(3).bytes(BS);
  expect(await drive(disk, replica.install(CTX, ref, { state: 'data', version: v2, data: current }, { token: 2, fua: false }))).toBe('installed');
  expect(store.head(ref)).toMatchObject({ state: 'data', version: v2, suspect: false });
  expect((await drive(disk, store.read(ref, 0, BS))).equals(current)).toBe(true);
});
