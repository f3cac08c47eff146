import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { AttachClient } from '../../src/attach/api-client.js';
import { AttachApiServer } from '../../src/attach/api-server.js';
import { AttachManager } from '../../src/attach/attach-manager.js';
import type { KernelNbd } from '../../src/attach/kernel-nbd.js';
import { noModuleError } from '../../src/attach/kernel-nbd.js';
import { writeState } from '../../src/attach/state-file.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { MetadataSession } from '../../src/metadata/metadata-service.js';
import { VolumeManager } from '../../src/cluster/volume-manager.js';
import type { ClusterContext } from '../../src/replication/cluster-context.js';

const quiet = pino({ level: 'silent' });
const MiB = 1024 * 1024;

/** The kernel as the restart logic sees it: device status, backends, and what was asked of it. */
function fakeKernel(devices: Map<number, { connected: boolean; backend: string }>, available = true) {
  const calls: string[] = [];
  const k = {
    calls,
    availability: async () => (available ? { available: true, mode: 'netlink', detail: 'fake' } : { available: false, error: noModuleError() }),
    require: async () => {
      if (!available) throw noModuleError();
      return 'netlink';
    },
    status: async (index: number | null) => [...devices.entries()].filter(([i]) => index === null || i === index).map(([i, d]) => ({ index: i, connected: d.connected })),
    backendOf: async (index: number) => devices.get(index)?.backend ?? null,
    disconnect: async (index: number) => {
      calls.push(`disconnect ${index}`);
      const d = devices.get(index);
      if (d) d.connected = false;
    },
    reconfigure: async (p: { index: number }) => {
      calls.push(`reconfigure ${p.index}`);
      throw new Error('no sockets in this fake');
    },
  };
  return k;
}

let dir: string | null = null;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = null;
});

async function setup(opts: { kernel: ReturnType<typeof fakeKernel> }) {
  dir = await mkdtemp(path.join(os.tmpdir(), 'torus-attach-mgr-'));
  const md = new MemoryMetadata();
  await md.initCluster({ blockSize: MiB, replication: 1 }, { force: false });
  await md.createVolume('pad', 8 * MiB);
  let session: MetadataSession | null = null;
  // Only the lock path is reached here: no volume is ever served, so the
  // cluster context offers etcd and nothing of the replication layer.
  const ctx = new Proxy({ metadata: md, logger: quiet } as Partial<ClusterContext>, {
    get(target, prop) {
      if (prop in target) return target[prop as keyof ClusterContext];
      throw new Error(`this test's cluster context has no ${String(prop)}`);
    },
  }) as ClusterContext;
  const volumes = new VolumeManager({
    ctx,
    session: () => session,
    holder: 'torusd test',
    logger: quiet,
  });
  const manager = new AttachManager({ dataDir: dir, metadata: md, volumes, session: () => session, uuid: 'u', logger: quiet, kernel: opts.kernel as unknown as KernelNbd });
  return { md, volumes, manager, setSession: (s: MetadataSession) => (session = s), dir };
}

const recorded = (leaseId: string, token: number) => ({
  leaseId,
  attachments: [{ index: 3, volume: 'pad', mode: 'rw' as const, token, sizeBytes: 8 * MiB, timeoutSeconds: 10, deadConnTimeoutSeconds: 30, backend: 'torus:u:pad:attach-1', attachedAt: '2026-01-01T00:00:00.000Z' }],
});

describe('AttachManager across a torusd restart', () => {
  it('resumes the recorded lease: load() names it so torusd does not revoke it', async () => {
    const kernel = fakeKernel(new Map([[3, { connected: true, backend: 'torus:u:pad:attach-1' }]]));
    const t = await setup({ kernel });
    await writeState(t.dir, recorded('123', 4));
    expect(await t.manager.load()).toBe('123');
  });

  it('fails the device for good (DISCONNECT, EIO) when the lease expired during the restart', async () => {
    const kernel = fakeKernel(new Map([[3, { connected: true, backend: 'torus:u:pad:attach-1' }]]));
    const t = await setup({ kernel });
    await writeState(t.dir, recorded('123', 4));
    await t.manager.load();
    t.setSession(await t.md.openSession({ ttlSeconds: 30 }));
    await t.manager.resume(false);
    expect(kernel.calls).toEqual(['disconnect 3']);
    const [a] = t.manager.list();
    expect(a).toMatchObject({ device: '/dev/nbd3', state: 'failed' });
    expect(a!.detail).toMatch(/EIO for good.*expired/);
    // Nothing left to take back on the next start.
    expect(JSON.parse(await readFile(path.join(t.dir, 'attachments.json'), 'utf8')).attachments).toEqual([]);
    // The failed device can still be detached (forgotten) through the API.
    await t.manager.detach('/dev/nbd3');
    expect(t.manager.list()).toEqual([]);
  });

  it('names the expired lease in every failed device, not only the first', async () => {
    // Failing the first device rewrites attachments.json (no read-write
    // device left: no lease id); the second one's reason still names it.
    const kernel = fakeKernel(
      new Map([
        [3, { connected: true, backend: 'torus:u:pad:attach-1' }],
        [4, { connected: true, backend: 'torus:u:pad2:attach-2' }],
      ]),
    );
    const t = await setup({ kernel });
    await t.md.createVolume('pad2', 8 * MiB);
    const two = recorded('123', 4);
    await writeState(t.dir, { ...two, attachments: [...two.attachments, { ...two.attachments[0]!, index: 4, volume: 'pad2', backend: 'torus:u:pad2:attach-2' }] });
    await t.manager.load();
    t.setSession(await t.md.openSession({ ttlSeconds: 30 }));
    await t.manager.resume(false);
    expect(kernel.calls).toEqual(['disconnect 3', 'disconnect 4']);
    const details = t.manager.list().map((a) => a.detail);
    expect(details).toHaveLength(2);
    for (const d of details) expect(d).toMatch(/the lease 123 that held the lock expired/);
  });

  it('fails the device for good when the resumed lease no longer holds the lock under the recorded token', async () => {
    const kernel = fakeKernel(new Map([[3, { connected: true, backend: 'torus:u:pad:attach-1' }]]));
    const t = await setup({ kernel });
    const first = await t.md.openSession({ ttlSeconds: 30 });
    const lock = await first.lockVolume('pad', 'torusd test');
    await first.suspend();
    await writeState(t.dir, recorded(first.id, lock.token + 1));
    expect(await t.manager.load()).toBe(first.id);
    t.setSession(await t.md.resumeSession({ leaseId: first.id, ttlSeconds: 30 }));
    await t.manager.resume(true);
    expect(kernel.calls).toEqual(['disconnect 3']);
    expect(t.manager.list()[0]!.detail).toMatch(/TORUS_ERR_VOLUME_LOCK_LOST|not by lease/);
  });

  it('forgets a recorded device that now serves someone else, and releases its lock', async () => {
    const kernel = fakeKernel(new Map([[3, { connected: true, backend: 'another-backend' }]]));
    const t = await setup({ kernel });
    const first = await t.md.openSession({ ttlSeconds: 30 });
    const lock = await first.lockVolume('pad', 'torusd test');
    await first.suspend();
    await writeState(t.dir, recorded(first.id, lock.token));
    await t.manager.load();
    const resumed = await t.md.resumeSession({ leaseId: first.id, ttlSeconds: 30 });
    t.setSession(resumed);
    await t.manager.resume(true);
    expect(kernel.calls).toEqual([]);
    expect(t.manager.list()).toEqual([]);
    // The lease lives on (we resumed it), but the volume is free for others.
    expect(await t.md.getVolumeLock(lock.volume.id)).toBeNull();
  });
});

describe('attach API over its unix socket', () => {
  it('answers with stable codes: no nbd module, unknown device, fault injection off', async () => {
    const t = await setup({ kernel: fakeKernel(new Map(), false) });
    await t.manager.load();
    const server = new AttachApiServer(t.manager, quiet);
    const sock = path.join(t.dir, 'attach.sock');
    await server.listen(sock);
    try {
      const client = new AttachClient(sock);
      expect(await client.kernel()).toMatchObject({ available: false, code: 'TORUS_ERR_ATTACH_NO_MODULE' });
      await expect(client.attach({ volume: 'pad' })).rejects.toMatchObject({ code: 'TORUS_ERR_ATTACH_NO_MODULE', message: expect.stringContaining('modprobe nbd') });
      await expect(client.attach({ volume: 'bad name' })).rejects.toMatchObject({ code: 'TORUS_ERR_NAME_INVALID' });
      await expect(client.detach('/dev/nbd9')).rejects.toMatchObject({ code: 'TORUS_ERR_ATTACH_NOT_FOUND' });
      await expect(client.fault({ device: '/dev/nbd9', read: 'eio' })).rejects.toMatchObject({ code: 'TORUS_ERR_ARG_INVALID' });
      expect(await client.list()).toEqual([]);
    } finally {
      await server.close();
    }
    await expect(new AttachClient(sock).list()).rejects.toMatchObject({ code: 'TORUS_ERR_ATTACH_DAEMON_UNREACHABLE' });
  });
});
