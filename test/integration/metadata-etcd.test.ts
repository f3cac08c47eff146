import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Etcd3 } from 'etcd3';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { EtcdMetadata, LIST_PAGE_KEYS } from '../../src/metadata/etcd-metadata.js';
import { describeKeyLayout } from '../../src/metadata/keys.js';
import { planRingChange } from '../../src/ring/transition.js';
import type { MetadataService, SessionEvent } from '../../src/metadata/metadata-service.js';
import { DIST, ROOT, ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { expectCode, metadataContract, peerRecord, type MetadataHarness } from '../helpers/metadata-contract.js';
import { freePort } from '../helpers/ports.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';
import { waitFor } from '../helpers/wait.js';

const logger = pino({ level: 'silent' });

let etcd: EtcdHandle;
let raw: Etcd3;
let prefixSeq = 0;

beforeAll(async () => {
  etcd = await startEtcd();
  raw = new Etcd3({ hosts: `http://${etcd.endpoint}` });
});

afterAll(async () => {
  raw?.close();
  await etcd?.stop();
});

/** Compacts etcd's whole history, as `etcdctl compact <revision>` does. */
async function compactAll(): Promise<void> {
  const revision = (await raw.get('compact-probe').exec()).header.revision;
  await raw.kv.compact({ revision, physical: true });
}

function etcdHarness(): MetadataHarness {
  // Each service talks to etcd through its own proxy, so a test can cut its link alone.
  const links = new Map<MetadataService, { proxy: TcpProxy; prefix: string; loseLockAnswer: boolean }>();
  const proxies: TcpProxy[] = [];
  return {
    async cleanup() {
      for (const p of proxies.splice(0)) await p.close();
    },
    // Each test gets its own prefix in the shared etcd: wipe stays inside it.
    async create() {
      const proxy = await startTcpProxy({ host: '127.0.0.1', port: etcd.clientPort });
      proxies.push(proxy);
      const prefix = `/contract-${process.pid}-${++prefixSeq}/`;
      const link = { proxy, prefix, loseLockAnswer: false };
      // A lock transaction's answer lost: etcd applies it, the caller hears nothing.
      const wrapCall = async <T>(op: string, call: () => Promise<T>): Promise<T> => {
        if (!link.loseLockAnswer || !op.startsWith('lock volume')) return call();
        link.loseLockAnswer = false;
        await call();
        throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd did not answer ${op} (the answer was lost in this test)`);
      };
      const md = new EtcdMetadata({ endpoints: [proxy.endpoint], prefix, logger, callTimeoutMs: 3000, wrapCall });
      links.set(md, link);
      return md;
    },
    async revokeExternally(_md, id) {
      await raw.leaseClient.leaseRevoke({ ID: id });
    },
    compact: () => compactAll(),
    async outage(md, during) {
      const link = links.get(md);
      if (!link) throw new Error('outage(): not a service this harness created');
      link.proxy.cut();
      const other = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix: link.prefix, logger, callTimeoutMs: 3000 });
      try {
        await during(other);
      } finally {
        await other.close();
        link.proxy.restore();
      }
    },
    eventually: (what, probe) => waitFor(what, probe, 10_000, 25),
    monotonic: () => performance.now(),
    async loseLockAnswer(md, call) {
      const link = links.get(md);
      if (!link) throw new Error('loseLockAnswer(): not a service this harness created');
      link.loseLockAnswer = true;
      try {
        return await call().catch((e: unknown) => e);
      } finally {
        expect(link.loseLockAnswer, 'the call made a lock transaction').toBe(false);
        link.loseLockAnswer = false;
      }
    },
  };
}

metadataContract('etcd', etcdHarness);

describe('EtcdMetadata against real etcd', () => {
  it('keeps keys under its prefix, as keys.ts documents', async () => {
    const prefix = `/layout-${process.pid}/`;
    const md = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix, logger });
    try {
      await md.initCluster({ blockSize: 4096, replication: 1 }, { force: false });
      const v = await md.createVolume('pad', 4096);
      const w = await md.createVolume('other', 4096);
      const s = await md.openSession({ ttlSeconds: 5 });
      await s.putPeer(peerRecord('u1'));
      const lock = await s.lockVolume('pad', 'me');
      await s.lockVolumeForMaintenance(w.id, 'maint');
      await s.ackRing({ peer: 'u1', kind: 'peer', ringVersion: 1, fenceRevision: 0 });
      await md.addStale(v.id, 'u1', { ranges: [[0, 1]] });
      await md.putVolumeMove({ schema: 1, ringVersion: 2, volumeId: v.id, done: false, scanned: 0, copied: 0, unavailable: 0, updatedAt: 'now' }, lock.token);
      await md.putVolumeHealth({ schema: 1, volumeId: v.id, ringVersion: 1, blocks: 1, short: 0, repaired: 0, divergent: 0, checkedAt: 'now' });
      const keys = (await raw.getAll().prefix(prefix).keys()).sort();
      expect(keys).toEqual(
        [
          'config',
          `health/${v.id}`,
          'meta/volume-id',
          `moves/2/${v.id}`,
          'peers/u1',
          'ring',
          `ring-acks/${s.id}`,
          'secret',
          `stale/${v.id}/u1`,
          `volume-fence/${v.id}`,
          `volume-fence/${w.id}`,
          `volume-locks/${v.id}`,
          `volume-maint/${w.id}`,
          'volumes/other',
          'volumes/pad',
        ].map((k) => prefix + k),
      );
      // Every key matches one documented pattern.
      const patterns = describeKeyLayout(prefix).map((d) => new RegExp(`^${d.key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/<[a-zA-Z]+>/g, '[^/]+')}$`));
      for (const k of keys) expect(patterns.some((p) => p.test(k)), k).toBe(true);
      expect(await raw.get(`${prefix}volume-fence/${v.id}`).string()).toBe('1');
      for (const k of ['peers/u1', `ring-acks/${s.id}`, `volume-locks/${v.id}`, `volume-maint/${w.id}`]) {
        expect((await raw.get(prefix + k).exec()).kvs[0]?.lease, k).toBe(s.id);
      }
      await s.close();
    } finally {
      await md.close();
    }
  });

  it('upgrade in place: reads every record a 0.1.0 cluster wrote (test/fixtures/upgrade-0.1.0/etcd.json) and goes on from it', async () => {
    const fixture = JSON.parse(readFileSync(path.join(ROOT, 'test/fixtures/upgrade-0.1.0/etcd.json'), 'utf8')) as Record<string, string>;
    const prefix = `/upgrade-${process.pid}/`;
    for (const [key, value] of Object.entries(fixture)) {
      expect(key.startsWith('/torus/'), key).toBe(true);
      await raw.put(prefix + key.slice('/torus/'.length)).value(value);
    }
    const old = (key: string): Record<string, unknown> => JSON.parse(fixture[`/torus/${key}`]!) as Record<string, unknown>;
    const md = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix, logger });
    try {
      const cfg = await md.getClusterConfig();
      expect(cfg).toEqual(old('config'));
      const ring = await md.getRing();
      const oldRing = old('ring') as { version: number; replication: number; members: unknown[] };
      expect(ring).toEqual({ schema: 2, version: oldRing.version, replication: 2, minReplicas: 1, members: oldRing.members, transition: null });
      const volumes = await md.listVolumes();
      expect(volumes).toEqual([old('volumes/legacy')]);
      const legacy = volumes[0]!;
      expect(await md.getVolume('legacy')).toEqual(legacy);
      expect(await md.getFence(legacy.id)).toBe(1);
      expect([...(await md.listFences()).fences]).toEqual([[legacy.id, 1]]);
      expect(await md.volumeIdsForGc()).toEqual({ live: [legacy.id], lastId: 1 });
      expect(await md.getVolumeLock(legacy.id)).toBeNull();
      expect(await md.listPeers()).toEqual([]);
      expect(await md.listStale()).toEqual([]);
      expect(await md.listRingAcks()).toEqual([]);
      expect(await md.listVolumeHealth()).toEqual([]);
      expect(await md.listVolumeMoves(ring.version)).toEqual([]);
      // A 0.1.0 cluster has no secret: the first peer makes one.
      expect(await md.getClusterSecret()).toBeNull();
      const secret = await md.ensureClusterSecret();
      expect(await md.getClusterSecret()).toBe(secret);
      // Tokens go on from the 0.1.0 fence; the ring changes as schema 2.
      const s = await md.openSession({ ttlSeconds: 5 });
      const lock = await s.lockVolume('legacy', 'upgrade test');
      expect(lock.token).toBe(2);
      await lock.release();
      expect((await s.lockVolumeForMaintenance(legacy.id, 'upgrade test')).token).toBe(3);
      await s.close();
      const next = planRingChange(ring, [...ring.members, { uuid: 'new-peer', weight: 1 }], ring.replication, ring.minReplicas, 'peer add new-peer', Date.now());
      await md.setRing(next!);
      const stored = JSON.parse((await raw.get(`${prefix}ring`).string())!) as { schema: number; transition: { phase: string } };
      expect(stored.schema).toBe(2);
      expect(stored.transition.phase).toBe('moving');
      expect(await md.getRing()).toEqual(next);
    } finally {
      await md.close();
    }
  });

  it('complete listings read page after page at one revision', async () => {
    const prefix = `/pages-${process.pid}/`;
    const n = LIST_PAGE_KEYS * 2 + 34;
    for (let i = 0; i < n; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, n - i) }, (_, k) => raw.put(`${prefix}volume-fence/${i + k + 1}`).value(String(i + k + 7))));
    }
    // A key just past the prefix must not be listed.
    await raw.put(`${prefix}volume-fence0`).value('x');
    const md = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix, logger });
    try {
      const { fences, revision } = await md.listFences();
      expect(fences.size).toBe(n);
      expect(fences.get(1)).toBe(7);
      expect(fences.get(n)).toBe(n + 6);
      expect(revision).toBeGreaterThan(0);
    } finally {
      await md.close();
    }
  });

  it('a write that finds its lease revoked marks the session lost at once', async () => {
    const md = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix: `/revoked-${process.pid}/`, logger });
    try {
      const s = await md.openSession({ ttlSeconds: 60 }); // next keepalive 20 s away
      const events: SessionEvent['type'][] = [];
      s.on((e) => events.push(e.type));
      await raw.leaseClient.leaseRevoke({ ID: s.id });
      await expectCode(s.putPeer(peerRecord('p')), 'TORUS_ERR_SESSION_LOST');
      // Lost by the time the write failed. A keepalive the client had in
      // flight when the lease went may have reported 'degraded' first (seen
      // once from a fresh clone under load); nothing else may come.
      expect(events.filter((t) => t !== 'degraded')).toEqual(['lost']);
      expect(await md.listPeers()).toEqual([]);
    } finally {
      await md.close();
    }
  });

  it('reports a corrupt record instead of treating it as absent', async () => {
    const prefix = `/corrupt-${process.pid}/`;
    await raw.put(`${prefix}config`).value('{not json');
    const md = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix, logger });
    try {
      const err = await expectCode(md.getClusterConfig(), 'TORUS_ERR_METADATA_CORRUPT');
      expect(err.message).toContain(`${prefix}config`);
    } finally {
      await md.close();
    }
  });

  it('a crashed holder loses its peer record and lock after the TTL; the next writer gets a larger token', async () => {
    ensureBuilt();
    const prefix = `/crash-${process.pid}/`;
    const md = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix, logger });
    try {
      await md.initCluster({ blockSize: 4096, replication: 1 }, { force: false });
      const vol = await md.createVolume('pad', 4096);
      const modUrl = pathToFileURL(path.join(DIST, 'src/metadata/etcd-metadata.js')).href;
      const script = `
        import pino from 'pino';
        import { EtcdMetadata } from ${JSON.stringify(modUrl)};
        const md = new EtcdMetadata({ endpoints: [${JSON.stringify(etcd.endpoint)}], prefix: ${JSON.stringify(prefix)}, logger: pino({ level: 'silent' }) });
        const s = await md.openSession({ ttlSeconds: 2 });
        await s.putPeer(${JSON.stringify(peerRecord('crasher'))});
        const lock = await s.lockVolume('pad', 'crasher (pid ' + process.pid + ')');
        process.stdout.write('ready ' + lock.token + '\\n');
        setInterval(() => {}, 1000);
      `;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: path.dirname(DIST), stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let errText = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (errText += d.toString()));
      try {
        await waitFor('child holds the lock', () => (out.includes('ready') ? true : child.exitCode !== null ? Promise.reject(new Error(errText)) : false), 15_000);
      } finally {
        child.kill('SIGKILL');
      }
      expect((await md.listPeers()).map((p) => p.uuid)).toEqual(['crasher']);
      await expectCode(md.deleteVolume('pad'), 'TORUS_ERR_VOLUME_IN_USE');
      const t0 = Date.now();
      await waitFor('peer record and lock expire', async () => (await md.listPeers()).length === 0 && (await md.getVolumeLock(vol.id)) === null, 10_000, 50);
      expect(Date.now() - t0).toBeLessThan(8_000);
      const s = await md.openSession({ ttlSeconds: 5 });
      expect((await s.lockVolume('pad', 'next')).token).toBe(2);
      await s.close();
    } finally {
      await md.close();
    }
  });
});

describe('EtcdMetadata when etcd does not answer', () => {
  async function expectUnavailableFast(md: MetadataService, boundMs: number, endpoint: string): Promise<void> {
    const calls: [string, () => Promise<unknown>][] = [
      ['getClusterConfig', () => md.getClusterConfig()],
      ['initCluster', () => md.initCluster({ blockSize: 4096, replication: 1 }, { force: false })],
      ['listVolumes', () => md.listVolumes()],
      ['createVolume', () => md.createVolume('pad', 4096)],
      ['getRing', () => md.getRing()],
      ['openSession', () => md.openSession({ ttlSeconds: 5 })],
    ];
    for (const [name, fn] of calls) {
      const t0 = Date.now();
      const err = await expectCode(fn(), 'TORUS_ERR_ETCD_UNAVAILABLE');
      expect(err.message, name).toContain(endpoint);
      expect(Date.now() - t0, name).toBeLessThan(boundMs);
    }
  }

  it('a stopped etcd gives TORUS_ERR_ETCD_UNAVAILABLE quickly, never "not initialised"', async () => {
    const own = await startEtcd();
    const md = new EtcdMetadata({ endpoints: [own.endpoint], logger, callTimeoutMs: 2000 });
    try {
      await md.initCluster({ blockSize: 4096, replication: 1 }, { force: false });
      await own.stop();
      await expectUnavailableFast(md, 3000, own.endpoint);
    } finally {
      await md.close();
      await own.stop();
    }
  });

  it('an endpoint that accepts connections but never answers times out within the bound', async () => {
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((sock) => {
      sockets.add(sock);
      sock.on('error', () => undefined);
    });
    const port = await freePort();
    await new Promise<void>((resolve) => silent.listen(port, '127.0.0.1', resolve));
    const endpoint = `127.0.0.1:${port}`;
    const md = new EtcdMetadata({ endpoints: [endpoint], logger, callTimeoutMs: 1000 });
    try {
      await expectUnavailableFast(md, 2000, endpoint);
    } finally {
      await md.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => silent.close(r));
    }
  });

  it('a session degrades when etcd stops and is declared lost at its lease deadline', async () => {
    const own = await startEtcd();
    const md = new EtcdMetadata({ endpoints: [own.endpoint], logger, callTimeoutMs: 1000 });
    try {
      const s = await md.openSession({ ttlSeconds: 2 });
      const events: { type: SessionEvent['type']; at: number }[] = [];
      s.on((e) => events.push({ type: e.type, at: performance.now() }));
      await own.stop();
      await waitFor('lost event', () => events.some((e) => e.type === 'lost'), 8_000, 20);
      const lost = events.find((e) => e.type === 'lost')!;
      // Never later than the deadline the session advertised (plus timer slack).
      expect(lost.at).toBeLessThanOrEqual(s.leaseDeadline() + 500);
      expect(events.map((e) => e.type)).toContain('degraded');
      await expectCode(s.putPeer(peerRecord('x')), 'TORUS_ERR_SESSION_LOST');
    } finally {
      await md.close();
      await own.stop();
    }
  });
});

describe('EtcdMetadata: a lock transaction sent twice', () => {
  it('is the lock of the call that sent it when the first one took effect (etcd3 tries the next endpoint after an answer is lost)', async () => {
    // Every lock transaction runs twice, the first answer dropped: what the
    // etcd3 client does when an endpoint applied a call and its answer did
    // not come back in time, and it sends the call to the next endpoint.
    const wrapCall = async <T>(op: string, call: () => Promise<T>): Promise<T> => {
      if (op.startsWith('lock volume')) await call();
      return call();
    };
    const prefix = `/twice-${process.pid}-${++prefixSeq}/`;
    const md = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix, logger, callTimeoutMs: 3000, wrapCall });
    const plain = new EtcdMetadata({ endpoints: [etcd.endpoint], prefix, logger, callTimeoutMs: 3000 });
    try {
      await md.initCluster({ blockSize: 4096, replication: 1 }, { force: false });
      const vol = await md.createVolume('pad', 4096);
      const s = await md.openSession({ ttlSeconds: 10 });
      const lock = await s.lockVolume('pad', 'twice');
      expect(lock.token).toBe(1); // one token drawn: the second transaction changed nothing
      expect(await lock.stillHeld()).toBe(true);
      expect(await md.getVolumeLock(vol.id)).toMatchObject({ holder: 'twice', token: 1 });
      // It is a lock like any other: another session is refused, and its release frees the volume.
      const other = await plain.openSession({ ttlSeconds: 10 });
      await expectCode(other.lockVolume('pad', 'other'), 'TORUS_ERR_VOLUME_IN_USE');
      await lock.release();
      const maint = await s.lockVolumeForMaintenance(vol.id, 'maint twice');
      expect(maint.token).toBe(2);
      expect(await maint.stillHeld()).toBe(true);
      await maint.release();
      const reader = await s.lockVolumeForReading('pad', 'reader twice');
      expect(await reader.stillHeld()).toBe(true);
      await reader.release();
      expect((await other.lockVolume('pad', 'other')).token).toBe(3);
    } finally {
      await md.close();
      await plain.close();
    }
  });
});
