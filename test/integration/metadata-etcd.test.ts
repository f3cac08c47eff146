import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Etcd3 } from 'etcd3';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdMetadata } from '../../src/metadata/etcd-metadata.js';
import type { MetadataService, SessionEvent } from '../../src/metadata/metadata-service.js';
import { DIST, ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { expectCode, metadataContract, peerRecord, type MetadataHarness } from '../helpers/metadata-contract.js';
import { freePort } from '../helpers/ports.js';
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

function etcdHarness(): MetadataHarness {
  return {
    // Each test gets its own prefix in the shared etcd: wipe stays inside it.
    create: async () => new EtcdMetadata({ endpoints: [etcd.endpoint], prefix: `/contract-${process.pid}-${++prefixSeq}/`, logger, callTimeoutMs: 3000 }),
    async revokeExternally(_md, id) {
      await raw.leaseClient.leaseRevoke({ ID: id });
    },
    eventually: (what, probe) => waitFor(what, probe, 10_000, 25),
    monotonic: () => performance.now(),
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
      const s = await md.openSession({ ttlSeconds: 5 });
      await s.putPeer(peerRecord('u1'));
      await s.lockVolume('pad', 'me');
      const keys = (await raw.getAll().prefix(prefix).keys()).sort();
      expect(keys).toEqual(
        ['config', 'meta/volume-id', 'peers/u1', 'ring', `volume-fence/${v.id}`, `volume-locks/${v.id}`, 'volumes/pad'].map((k) => prefix + k),
      );
      expect(await raw.get(`${prefix}volume-fence/${v.id}`).string()).toBe('1');
      const lease = (await raw.get(`${prefix}peers/u1`).exec()).kvs[0]?.lease;
      expect(lease).toBe(s.id);
      await s.close();
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
      expect(events).toEqual(['lost']);
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
