/**
 * A copy that became suspect through a checksum failure must not be
 * confirmed in place: its digest is that of its checksum table, which the
 * damage did not touch, so only a check of every page can tell. Found by
 * the end-to-end test that damages a block file (test/faults/replication-faults):
 * the coordinator confirmed the damaged copy on every pass and the bad
 * bytes stayed on disk.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { blockRef } from '../../src/model/block-ref.js';
import { makeVersion, VERSION_ABSENT } from '../../src/model/version.js';
import { FenceTable } from '../../src/replication/fence-table.js';
import { Replica } from '../../src/replication/replica.js';
import { headerBytes } from '../../src/store/block-file.js';
import { FileBlockStore } from '../../src/store/file-block-store.js';

const BS = 64 * 1024;
const CTX = { ringVersion: 1 };
let dir = '';

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'torus-confirm-crc-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

it('a copy damaged at rest is not confirmed by its digest; a fresh install replaces it', async () => {
  const log = pino({ level: 'silent' });
  const store = await FileBlockStore.open({ dir, blockSize: BS, capacity: 16 * 1024 * 1024, logger: log, checkpointIntervalMs: 3_600_000 });
  const saved = new Map<number, number>();
  const fences = await FenceTable.open({ load: async () => new Map(saved), save: async (f) => void f.forEach((t, v) => saved.set(v, t)) });
  const replica = new Replica({ uuid: 'p', incarnation: 'i', store, fences, ringVersion: () => 1, live: () => true, logger: log });
  try {
    const ref = blockRef(1, 1, 0);
    const data = randomBytes(BS);
    const v1 = makeVersion(2, 1);
    await replica.write(CTX, ref, 0, data, { token: 2, version: v1, prev: VERSION_ABSENT }, { fua: true });
    const [good] = await replica.meta(CTX, [ref]);

    // Damage one page of the block file behind the store's back.
    const fh = await open(path.join(dir, 'blocks', '1', '1', '0'), 'r+');
    await fh.write(Buffer.alloc(16, 0xee), 0, 16, headerBytes(BS) + 5 * 4096 + 7);
    await fh.close();
    await expect(replica.read(CTX, ref, 0, BS)).rejects.toThrow(/checksum|CRC/i);
    const [suspect] = await replica.meta(CTX, [ref]);
    expect(suspect).toMatchObject({ suspect: true, digest: good!.digest });

    // Same digest as the good copies, yet the pages do not match it: refused.
    expect(await replica.confirm(CTX, ref, makeVersion(3, 1), good!.digest, { token: 3 })).toBe(false);
    expect((await replica.meta(CTX, [ref]))[0]!.suspect).toBe(true);

    // What the coordinator does next: install the current copy.
    expect(await replica.install(CTX, ref, { state: 'data', version: makeVersion(3, 1), data }, { token: 3, fua: true })).toBe('installed');
    const reply = await replica.read(CTX, ref, 0, BS);
    expect(reply.data.equals(data)).toBe(true);
    expect(reply.meta).toMatchObject({ suspect: false, version: makeVersion(3, 1) });
  } finally {
    await store.close();
  }
});
