/**
 * No stale reads (docs/replication.md, guarantee 4), on two real peers with
 * replication 2 (minReplicas 1, so writes go on with one of them down):
 *
 * - A trim while a replica is down leaves tombstones: once it is back and
 *   caught up, reads return zeroes through either peer alone, both copies
 *   are tombstones at one version, and scrubs (every few seconds here)
 *   never bring the trimmed bytes back.
 * - A is down while B takes writes; then B dies (kill -9) and A comes back.
 *   A holds the old bytes of those blocks, but etcd records it stale for
 *   them: reads of them fail, through a read-only gateway and through A,
 *   and never return the old bytes.
 *
 * What should follow, B coming back and those blocks reading the new bytes
 * again, fails today: test/pending/replication-stale-after-return.test.ts
 * and the report of the e2e branch say why. So the stale-read case runs
 * last here, on its own volume.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { TestCluster } from '../helpers/cluster.js';
import type { NbdTestClient } from '../helpers/nbd-test-client.js';
import { CMD_READ as NBD_CMD_READ, NBD_EIO } from '../../src/nbd/protocol.js';
import { nbdConnect, startTorusblkServe, volumeList, type TorusblkServeHandle, type TorusdHandle } from '../helpers/torusd.js';
import { Rng } from '../helpers/volume-model.js';
import { waitFor } from '../helpers/wait.js';

const KiB = 1024;
const BLOCK = 256 * KiB;

let cluster: TestCluster | undefined;
let a: TorusdHandle;
let b: TorusdHandle;
let trimVolumeId = 0;
const cleanups: (() => Promise<unknown>)[] = [];
const rng = new Rng(4242);

beforeAll(async () => {
  ensureBuilt();
  // Scrubs every 5 s: each would bring trimmed bytes back if tombstones did not win.
  // A read that cannot be served fails once the replica timeout has passed
  // (it waits that long for a DOWN holder to come back): 3 s instead of the
  // default 8 s keeps the eight reads that must fail from taking a minute.
  cluster = await TestCluster.start({ peers: 2, blockSize: '256KiB', replication: 2, peerArgs: ['--scrub-interval', '5s', '--replica-timeout', '3s'] });
  [a, b] = cluster.peers as [TorusdHandle, TorusdHandle];
  trimVolumeId = (await cluster.createVolume('trim', '16MiB')).id;
  await cluster.createVolume('old', '16MiB');
});

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  await cluster?.saveLogs('stale');
  await cluster?.destroy();
});

async function open(p: TorusdHandle, volume: string): Promise<NbdTestClient> {
  return waitFor(`an NBD connection to ${p.uuid}`, () => nbdConnect(p.nbdPort, volume, p.nbdHost), 20_000, 100);
}

/** Disconnects and waits until no one holds the volume's lock (a killed holder would keep it for the lease TTL). */
async function hangUp(c: NbdTestClient, volume: string): Promise<void> {
  await c.disconnect();
  await waitFor(`${volume} to be free`, async () => (await volumeList(cluster!.endpoint)).get(volume)?.status === 'free', 20_000, 100);
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

describe('trim while a replica is down', () => {
  it('reads return zeroes through either peer, both copies are tombstones, and scrubs leave them so', async () => {
    const c = cluster!;
    const first = 8;
    const count = 4;
    let w = await open(a, 'trim');
    const data = await writeBlocks(w, first, count);
    await hangUp(w, 'trim');

    await b.stop();
    w = await open(a, 'trim');
    const t = await w.trim(first * BLOCK, count * BLOCK);
    expect(t.error).toBe(0);
    expect((await w.flush()).error).toBe(0);
    const zero = Buffer.alloc(BLOCK);
    for (let i = first; i < first + count; i++) expect((await w.read(i * BLOCK, BLOCK)).equals(zero)).toBe(true);
    await hangUp(w, 'trim');
    expect(await c.staleBlocks(b.uuid)).toBe(count);

    await b.restart();
    await waitFor('B to be caught up', async () => (await c.staleBlocks(b.uuid)) === 0, 60_000, 250);
    // Two scrubs that began after B came back, on either peer: each
    // compares both copies of every block and would "repair" a tombstone
    // from old data if versions did not order them.
    const since = Date.now();
    await waitFor('two scrubs after B returned', () => {
      const n = [a, b].flatMap((p) => p.lines()).filter((l) => l.msg === 'scrub done' && Number(l.time) > since).length;
      return n >= 2;
    }, 60_000, 250);

    const check = await c.waitCopiesExact('trim', 30_000);
    expect(check.problems).toEqual([]);
    for (const p of [a, b]) {
      const copies = (await c.copies(p, trimVolumeId)).filter((x) => x.index >= first && x.index < first + count);
      expect(copies.map((x) => x.state), `copies on ${p.uuid}`).toEqual(Array(count).fill('zero'));
    }
    // Each peer alone: the other stopped, so the read can only come from it.
    for (const [alone, other] of [[b, a], [a, b]] as const) {
      await other.stop();
      const r = await open(alone, 'trim');
      try {
        for (let i = first; i < first + count; i++) {
          const got = await r.read(i * BLOCK, BLOCK);
          if (!got.equals(zero)) {
            expect.fail(`block ${i} through ${alone.uuid} alone: ${got.equals(data[i - first]!) ? 'the trimmed bytes came back' : 'not zeroes'}`);
          }
        }
      } finally {
        await hangUp(r, 'trim');
      }
      await other.restart();
    }
  }, 240_000);
});

describe('A down, writes to B, B dies, A back', () => {
  let old: Buffer[] = [];
  let fresh: Buffer[] = [];

  /** Reads block i (twice: a retry must not fall back to the old copy either); fails the test unless both reads fail. */
  async function expectReadFails(r: NbdTestClient, i: number, through: string): Promise<void> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const res = await r.request({ type: NBD_CMD_READ, offset: i * BLOCK, length: BLOCK });
      if (res.error === 0) {
        const what = res.data!.equals(old[i]!) ? 'the OLD bytes (a stale read)' : res.data!.equals(fresh[i]!) ? 'the new bytes, which no live peer holds' : 'unknown bytes';
        expect.fail(`read of block ${i} through ${through} succeeded and returned ${what}`);
      }
      expect(res.error, `block ${i} through ${through}`).toBe(NBD_EIO);
    }
  }

  it('A misses writes while down; B dies; a read-only gateway (which asks etcd what is stale) fails those reads', async () => {
    const c = cluster!;
    let w = await open(a, 'old');
    old = await writeBlocks(w, 0, 8);
    await hangUp(w, 'old');

    await a.stop(); // a clean stop revokes A's lease: DOWN at once
    w = await open(b, 'old');
    fresh = await writeBlocks(w, 0, 4);
    await hangUp(w, 'old');
    // The degraded writes were recorded before they were acknowledged.
    // (Once, under load, A was recorded stale for the whole volume: the
    // message names what the peers logged about locks, to tell why.)
    const stale = await c.staleBlocks(a.uuid);
    const why = () =>
      [a, b]
        .flatMap((p) => p.lines().map((l) => ({ line: l, peer: p.uuid.slice(0, 8) })))
        .filter(({ line }) => /lock|expired|fencing|maintenance|whole volume/i.test(String(line.msg)))
        .map(({ line, peer }) => `${peer} ${String(line['time'])} ${String(line.msg)}`)
        .join('\n');
    expect(stale, stale === 4 ? '' : `A's stale blocks; lock lines:\n${why()}`).toBe(4);

    await b.kill('SIGKILL');
    await a.restart();
    // A reader that is no coordinator: B does not answer, so it re-reads the stale records.
    const ro: TorusblkServeHandle = await startTorusblkServe({ etcd: c.endpoint, readOnly: true });
    cleanups.push(() => ro.stop());
    const r = await nbdConnect(ro.port, 'old');
    try {
      for (let i = 0; i < 4; i++) await expectReadFails(r, i, 'torusblk --read-only');
      for (let i = 4; i < 8; i++) expect((await r.read(i * BLOCK, BLOCK)).equals(old[i]!), `block ${i}`).toBe(true);
    } finally {
      await r.disconnect();
      await ro.stop();
    }
  });

  it('reads of those blocks through A (now their coordinator) fail too; the blocks A did not miss read from A alone', async () => {
    const r = await open(a, 'old');
    try {
      for (let i = 0; i < 4; i++) await expectReadFails(r, i, 'A');
      for (let i = 4; i < 8; i++) expect((await r.read(i * BLOCK, BLOCK)).equals(old[i]!), `block ${i}`).toBe(true);
    } finally {
      await r.disconnect();
    }
  });
});
