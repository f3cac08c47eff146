/**
 * What a data dir keeps of its cluster (src/daemon/cluster-copies.ts): the
 * binding and copy of the cluster config (cluster.json) and the newest ring
 * the peer applied (ring.json), used only for a start while etcd is
 * unreachable; and the node side of such a start (ClusterNode.open with the
 * kept ring): reads served, changes refused, nothing else before etcd.
 * The whole thing on real processes: test/integration/e2e-outage-restart.test.ts.
 */
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClusterNode } from '../../src/cluster/node.js';
import { bindDataDirToCluster, clusterForStart, keepRingCopy, readStartCopies, RingCopyKeeper } from '../../src/daemon/cluster-copies.js';
import { isTorusError, TorusError } from '../../src/errors/torus-error.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import { blockRef } from '../../src/model/block-ref.js';
import type { ClusterConfig, RingRecord } from '../../src/model/records.js';
import { makeVersion } from '../../src/model/version.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import { loneNodeDeps } from '../helpers/lone-node.js';
import { recordingLogger } from '../helpers/peer-harness.js';
import { waitFor } from '../helpers/wait.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'torus-copies-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const clusterFile = () => path.join(dir, 'cluster.json');
const ringFile = () => path.join(dir, 'ring.json');

function config(id: string, over: Partial<ClusterConfig> = {}): ClusterConfig {
  return { schema: 1, id, blockSize: 64 * 1024, replication: 2, createdAt: '2026-01-01T00:00:00.000Z', ...over };
}

function ring(version: number, members: string[] = ['p1', 'p2']): RingRecord {
  return { schema: 2, version, replication: 2, minReplicas: 1, members: members.map((uuid) => ({ uuid, weight: 1 })), transition: null };
}

async function errorOf(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => new Error('expected a failure'),
    (e: unknown) => e,
  );
}

describe('cluster.json: the binding to one cluster and a copy of its config', () => {
  it('is written with the config etcd holds, rewritten only when that changes, and refuses another cluster with TORUS_ERR_DATA_DIR_FOREIGN', async () => {
    await bindDataDirToCluster(dir, config('cluster-a'));
    expect(JSON.parse(await readFile(clusterFile(), 'utf8'))).toEqual({ schema: 1, clusterId: 'cluster-a', config: config('cluster-a') });
    const ino = (await stat(clusterFile())).ino;
    await bindDataDirToCluster(dir, config('cluster-a'));
    expect((await stat(clusterFile())).ino, 'the same config: left alone').toBe(ino);
    await bindDataDirToCluster(dir, config('cluster-a', { replication: 3 }));
    expect(JSON.parse(await readFile(clusterFile(), 'utf8')).config.replication).toBe(3);

    const err = await errorOf(bindDataDirToCluster(dir, config('cluster-b')));
    expect(isTorusError(err, 'TORUS_ERR_DATA_DIR_FOREIGN'), String(err)).toBe(true);
    expect((err as Error).message).toContain('cluster-a');
    expect(JSON.parse(await readFile(clusterFile(), 'utf8')).clusterId).toBe('cluster-a');
    expect(await readdir(dir), 'no temporary file left').toEqual(['cluster.json']);
  });

  it('a binding written by an older release (the id alone) gains the config; another id is still refused', async () => {
    await writeFile(clusterFile(), JSON.stringify({ schema: 1, clusterId: 'cluster-a' }) + '\n');
    const err = await errorOf(bindDataDirToCluster(dir, config('cluster-b')));
    expect(isTorusError(err, 'TORUS_ERR_DATA_DIR_FOREIGN')).toBe(true);
    await bindDataDirToCluster(dir, config('cluster-a'));
    expect(JSON.parse(await readFile(clusterFile(), 'utf8'))).toEqual({ schema: 1, clusterId: 'cluster-a', config: config('cluster-a') });
  });
});

describe('the copies a start without etcd uses', () => {
  it('are read back as written: the config and the newest ring kept', async () => {
    expect(await readStartCopies(dir), 'a fresh data dir').toBeNull();
    await bindDataDirToCluster(dir, config('cluster-a'));
    expect(await readStartCopies(dir), 'no ring kept yet').toBeNull();
    await keepRingCopy(dir, 'cluster-a', ring(4));
    await keepRingCopy(dir, 'cluster-a', ring(5, ['p1', 'p2', 'p3']));
    expect(await readStartCopies(dir)).toEqual({ cluster: config('cluster-a'), ring: ring(5, ['p1', 'p2', 'p3']) });
    expect((await readdir(dir)).sort()).toEqual(['cluster.json', 'ring.json']);
  });

  it('are not there for a data dir an older release bound (no config kept)', async () => {
    await writeFile(clusterFile(), JSON.stringify({ schema: 1, clusterId: 'cluster-a' }) + '\n');
    await keepRingCopy(dir, 'cluster-a', ring(4));
    expect(await readStartCopies(dir)).toBeNull();
  });

  it('refuse a ring kept for another cluster id (TORUS_ERR_DATA_DIR_FOREIGN)', async () => {
    await bindDataDirToCluster(dir, config('cluster-a'));
    await keepRingCopy(dir, 'cluster-b', ring(4));
    const err = await errorOf(readStartCopies(dir));
    expect(isTorusError(err, 'TORUS_ERR_DATA_DIR_FOREIGN'), String(err)).toBe(true);
    expect((err as Error).message).toContain('cluster-b');
  });

  it('refuse a config of another cluster than the binding, and files that do not parse (TORUS_ERR_STORE_CORRUPT, naming the file)', async () => {
    await keepRingCopy(dir, 'cluster-a', ring(4));
    const cases: [string, string][] = [
      [clusterFile(), JSON.stringify({ schema: 1, clusterId: 'cluster-a', config: config('cluster-b') })],
      [clusterFile(), JSON.stringify({ schema: 1, clusterId: 'cluster-a', config: config('cluster-a', { blockSize: 1000 }) })],
      [clusterFile(), JSON.stringify({ schema: 1, clusterId: 'cluster-a', config: { id: 'cluster-a' } })],
      [clusterFile(), '{"schema": 1, "clusterId": "clus'],
      [clusterFile(), JSON.stringify({ schema: 9, clusterId: 'cluster-a', config: config('cluster-a') })],
    ];
    for (const [file, text] of cases) {
      await writeFile(file, text);
      const err = await errorOf(readStartCopies(dir));
      expect(isTorusError(err, 'TORUS_ERR_STORE_CORRUPT'), `${text}: ${String(err)}`).toBe(true);
      expect((err as Error).message).toContain(file);
    }
    await writeFile(clusterFile(), JSON.stringify({ schema: 1, clusterId: 'cluster-a', config: config('cluster-a') }));
    await writeFile(ringFile(), JSON.stringify({ schema: 1, clusterId: 'cluster-a', ring: { version: 'four' } }));
    const err = await errorOf(readStartCopies(dir));
    expect(isTorusError(err, 'TORUS_ERR_STORE_CORRUPT'), String(err)).toBe(true);
    expect((err as Error).message).toContain(ringFile());
  });
});

describe('where the cluster config of a start comes from', () => {
  const copies = { cluster: config('cluster-a'), ring: ring(5) };
  const kept = async () => copies;
  const none = async () => null;
  const never = () => Promise.reject(new Error('the copies must not be read while etcd answers'));
  const unavailable = () => Promise.reject(new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'etcd at 127.0.0.1:2379 is unavailable'));

  it('is etcd whenever it answers, whatever the copies say', async () => {
    const md = new MemoryMetadata();
    const made = await md.initCluster({ blockSize: 4096, replication: 3 }, { force: false });
    expect(await clusterForStart(async () => (await md.getClusterConfig())!, never)).toEqual({ source: 'etcd', cluster: made });
    expect(await clusterForStart(async () => (await md.getClusterConfig())!, none)).toEqual({ source: 'etcd', cluster: made });
  });

  it('is the copies only while etcd is unreachable', async () => {
    expect(await clusterForStart(unavailable, kept)).toEqual({ source: 'copies', cluster: copies.cluster, ring: copies.ring });
    const md = new MemoryMetadata();
    md.setFault('unavailable');
    expect((await clusterForStart(async () => (await md.getClusterConfig())!, kept)).source).toBe('copies');
  });

  it('without copies, or when etcd answers with an error, is that error', async () => {
    expect(isTorusError(await errorOf(clusterForStart(unavailable, none)), 'TORUS_ERR_ETCD_UNAVAILABLE')).toBe(true);
    const notInit = new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', 'the cluster in etcd is not initialised');
    expect(await errorOf(clusterForStart(() => Promise.reject(notInit), never))).toBe(notInit);
  });
});

describe('RingCopyKeeper', () => {
  it('writes one ring at a time, the latest offered wins, and a failed write is logged and followed by the next', async () => {
    const rec = recordingLogger();
    const written: number[] = [];
    let release: () => void = () => undefined;
    let first = true;
    const keeper = new RingCopyKeeper(dir, 'cluster-a', rec.logger, async (_d, _c, r) => {
      if (first) {
        first = false;
        await new Promise<void>((resolve) => (release = resolve));
      }
      if (r.version === 3) throw new Error('disk full');
      written.push(r.version);
    });
    keeper.offer(ring(1));
    keeper.offer(ring(2)); // skipped: 3 comes before 1's write is done
    keeper.offer(ring(3));
    release();
    await keeper.settled();
    expect(written).toEqual([1]);
    expect(rec.warns('could not keep a copy of the ring in the data dir')).toBe(1);
    keeper.offer(ring(4));
    await keeper.settled();
    expect(written).toEqual([1, 4]);
  });

  it('keeps the ring where a start finds it', async () => {
    await bindDataDirToCluster(dir, config('cluster-a'));
    const keeper = new RingCopyKeeper(dir, 'cluster-a', recordingLogger().logger);
    keeper.offer(ring(7));
    await keeper.settled();
    expect((await readStartCopies(dir))?.ring.version).toBe(7);
  });
});

describe('a node opened with the kept ring while etcd is unreachable', () => {
  it('serves reads at the kept ring version and refuses changes; start() takes etcd\'s ring once it answers, and only then is live', async () => {
    const BLOCK = 4096;
    const rec = recordingLogger();
    const md = new MemoryMetadata({ logger: rec.logger });
    await md.initCluster({ blockSize: BLOCK, replication: 1 }, { force: false });
    const r1 = await md.getRing();
    await md.setRing({ ...r1, version: r1.version + 1, members: [{ uuid: 'me', weight: 1 }] });
    const kept = await md.getRing();
    // The ring changed again while this peer was down; it kept the older one.
    await md.setRing({ ...kept, version: kept.version + 1, members: [{ uuid: 'me', weight: 1 }, { uuid: 'other', weight: 1 }] });

    const store = new MemoryBlockStore({ blockSize: BLOCK, capacity: 1 << 20 });
    const ref = blockRef(1, 1, 0);
    const data = Buffer.alloc(BLOCK, 0x5a);
    await store.write(ref, 0, data, makeVersion(1, 1), { fua: true });
    const rings: number[] = [];
    const node = new ClusterNode(loneNodeDeps(md, store, rec.logger, { onRing: (r) => rings.push(r.version) }));
    md.setFault('unavailable');
    try {
      await node.open({ ring: kept });
      const replica = node.replicaHandle();
      const ctx = { ringVersion: kept.version };
      expect((await replica.hello({ ringVersion: 0 })).ringVersion).toBe(kept.version);
      expect((await replica.read(ctx, ref, 0, BLOCK)).data.equals(data)).toBe(true);
      expect((await replica.meta(ctx, [ref]))[0]!.version).toBe(makeVersion(1, 1));
      const outdated = await errorOf(replica.read({ ringVersion: kept.version - 1 }, ref, 0, BLOCK));
      expect(isTorusError(outdated, 'TORUS_ERR_RING_OUTDATED'), String(outdated)).toBe(true);
      const write = await errorOf(replica.write(ctx, ref, 0, Buffer.alloc(BLOCK, 1), { token: 1, version: makeVersion(1, 2), prev: makeVersion(1, 1) }, { fua: false }));
      expect(isTorusError(write, 'TORUS_ERR_PEER_NOT_LIVE'), String(write)).toBe(true);
      const drop = await errorOf(replica.drop(ctx, ref, makeVersion(1, 1), { token: 1 }));
      expect(isTorusError(drop, 'TORUS_ERR_PEER_NOT_LIVE'), String(drop)).toBe(true);

      let started = false;
      const start = node.start().then(() => (started = true));
      await waitFor('the node to retry etcd', async () => rec.lines.some((l) => l.msg === 'could not read the ring; retrying') || null, 5_000, 10);
      expect(started).toBe(false);
      expect(node.isLive).toBe(false);
      expect(node.currentRing().version).toBe(kept.version);
      expect(rings, 'the kept ring is not written back').toEqual([]);
      expect(store.meta(ref).version, 'the copy is as it was').toBe(makeVersion(1, 1));

      md.setFault('none');
      await start;
      expect(node.isLive).toBe(true);
      expect(node.currentRing().version, 'etcd wins').toBe(kept.version + 1);
      expect(rings).toEqual([kept.version + 1]);
    } finally {
      md.setFault('none');
      await node.stop();
    }
  });
});
