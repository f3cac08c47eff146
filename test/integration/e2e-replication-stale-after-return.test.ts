/**
 * Guarantee 1 (docs/replication.md): an acknowledged write is never lost or
 * hidden "as long as one replica that holds it survives". Two peers, R=2,
 * minReplicas 1:
 *
 *   1. A is stopped; blocks 0..3 are written through B (A recorded stale for them).
 *   2. B is killed with -9; its lease (30 s TTL) still names it live.
 *   3. A restarts and a client opens the volume through A, within the lease.
 *   4. B restarts.
 *
 * B holds the only current copies of blocks 0..3; once it is back they read
 * the new bytes and A is caught up. (This failed while a coordinator
 * recorded a peer that missed its fencing token stale for the whole volume:
 * blocks 0..3 then had no trusted owner at all and stayed unreadable. A
 * peer that misses the token now learns it from etcd or from the first
 * change, and its copies stay trusted.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { TestCluster } from '../helpers/cluster.js';
import type { NbdTestClient } from '../helpers/nbd-test-client.js';
import { nbdConnect, volumeList, type TorusdHandle } from '../helpers/torusd.js';
import { Rng } from '../helpers/volume-model.js';
import { waitFor } from '../helpers/wait.js';

const BLOCK = 256 * 1024;
let cluster: TestCluster | undefined;
let a: TorusdHandle;
let b: TorusdHandle;
const rng = new Rng(77);

beforeAll(async () => {
  ensureBuilt();
  cluster = await TestCluster.start({ peers: 2, blockSize: '256KiB', replication: 2 });
  [a, b] = cluster.peers as [TorusdHandle, TorusdHandle];
  await cluster.createVolume('old', '16MiB');
});

afterAll(async () => {
  await cluster?.saveLogs('stale-after-return');
  await cluster?.destroy();
});

async function open(p: TorusdHandle): Promise<NbdTestClient> {
  return waitFor(`an NBD connection to ${p.uuid}`, () => nbdConnect(p.nbdPort, 'old', p.nbdHost), 20_000, 100);
}

async function hangUp(c: NbdTestClient): Promise<void> {
  await c.disconnect();
  await waitFor('old to be free', async () => (await volumeList(cluster!.endpoint)).get('old')?.status === 'free', 20_000, 100);
}

async function writeBlocks(c: NbdTestClient, first: number, count: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (let i = first; i < first + count; i++) {
    const data = rng.bytes(BLOCK);
    await c.write(i * BLOCK, data);
    out.push(data);
  }
  expect((await c.flush()).error).toBe(0);
  return out;
}

describe('A down, writes to B, B killed, A opened within B\'s lease, B back', () => {
  it('the writes B alone holds read back once B is back, and A catches up', async () => {
    const c = cluster!;
    let w = await open(a);
    const old = await writeBlocks(w, 0, 8);
    await hangUp(w);
    await a.stop();
    w = await open(b);
    const fresh = await writeBlocks(w, 0, 4);
    await hangUp(w);

    await b.kill('SIGKILL');
    await a.restart();
    const r = await open(a); // within B's lease: B is not DOWN yet
    await r.read(4 * BLOCK, BLOCK);
    await hangUp(r);

    await b.restart();
    await waitFor('A to be caught up', async () => (await c.staleBlocks(a.uuid)) === 0, 60_000, 250);
    await b.stop();
    const q = await open(a);
    try {
      for (let i = 0; i < 4; i++) expect((await q.read(i * BLOCK, BLOCK)).equals(fresh[i]!), `block ${i}`).toBe(true);
      for (let i = 4; i < 8; i++) expect((await q.read(i * BLOCK, BLOCK)).equals(old[i]!), `block ${i}`).toBe(true);
    } finally {
      await q.disconnect();
    }
  }, 180_000);
});
