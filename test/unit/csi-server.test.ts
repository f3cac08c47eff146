/**
 * The CSI driver's Identity service and its gRPC server, without etcd or
 * torusd: Probe's answer while what it checks hangs, fails or throws (it
 * never fails the call: a liveness sidecar would restart the node's
 * storage on an etcd blip), the plugin capabilities (no topology, which
 * torus does not honour), and the one JSON log line per RPC with its
 * volume, the volume id a CreateVolume hands out, its duration and, on
 * failure, the gRPC and torus codes.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { identityHandlers, PROBE_CHECK_MS } from '../../src/k8s/csi/identity.js';
import { CsiServer, volumeIdOf, volumeOf } from '../../src/k8s/csi/server.js';
import { systemClock } from '../../src/util/clock.js';
import { csiClient, statusOf } from '../helpers/csi-client.js';
import { ManualClock } from '../helpers/metadata-contract.js';

const silent = pino({ level: 'silent' });
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('Identity', () => {
  it('Probe: ready only when every check answers within its bound; a hanging, failing or throwing check is ready: false, never an error', async () => {
    const clock = new ManualClock();
    const probe = (check: () => Promise<unknown>) => identityHandlers({ controller: true, checks: [{ what: 'ok', check: async () => 1 }, { what: 'x', check }], logger: silent, clock }).Probe();
    expect(await probe(async () => 1)).toEqual({ ready: { value: true } });
    expect(await probe(() => Promise.reject(new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'down')))).toEqual({ ready: { value: false } });
    expect(
      await probe(() => {
        throw new Error('thrown before a promise');
      }),
    ).toEqual({ ready: { value: false } });
    // etcd frozen: the check never settles; Probe answers once its bound passed.
    let answered: unknown = null;
    const pending = probe(() => new Promise(() => undefined)).then((r) => (answered = r));
    await clock.advance(PROBE_CHECK_MS - 1);
    expect(answered).toBeNull();
    await clock.advance(1);
    await pending;
    expect(answered).toEqual({ ready: { value: false } });
  });

  it('GetPluginCapabilities: the controller service where it is served, and never VOLUME_ACCESSIBILITY_CONSTRAINTS (no topology is honoured)', async () => {
    const caps = async (controller: boolean) => (await identityHandlers({ controller, checks: [], logger: silent, clock: new ManualClock() }).GetPluginCapabilities()).capabilities;
    expect(await caps(true)).toEqual([{ service: { type: 'CONTROLLER_SERVICE' } }]);
    expect(await caps(false)).toEqual([]);
    expect(JSON.stringify([await caps(true), await caps(false)])).not.toMatch(/VOLUME_ACCESSIBILITY_CONSTRAINTS|EXPANSION/);
  });
});

describe('CsiServer: one JSON log line per RPC', () => {
  it('names the volume (the request\'s id or name, and the id a CreateVolume hands out), the duration, and on failure the gRPC and torus codes', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'torus-csi-server-'));
    dirs.push(dir);
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString('utf8').split('\n')) if (l.trim() !== '') lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    });
    const logger = pino({ level: 'info' }, sink);
    const server = new CsiServer({
      endpoint: `unix://${path.join(dir, 'csi.sock')}`,
      identity: identityHandlers({ controller: true, checks: [], logger, clock: systemClock }),
      controller: {
        CreateVolume: async () => ({ volume: { volume_id: 'cluster-1/7', capacity_bytes: '1048576', volume_context: {}, accessible_topology: [] } }),
        DeleteVolume: async () => {
          throw new TorusError('TORUS_ERR_VOLUME_IN_USE', 'volume "pvc-a" is in use by torusd x on node-b (pid 1)');
        },
        ListVolumes: async () => {
          throw new Error('a bug');
        },
      },
      node: null,
      logger,
      clock: systemClock,
    });
    await server.listen();
    const client = csiClient(server.socketPath, 10_000);
    try {
      await client.controller.CreateVolume({ name: 'pvc-a', volume_capabilities: [] });
      const refused = await client.controller.DeleteVolume({ volume_id: 'cluster-1/7' }).catch((e) => e);
      expect(refused.status).toBe('FAILED_PRECONDITION');
      expect(refused.details).toMatch(/^TORUS_ERR_VOLUME_IN_USE: .*node-b/);
      expect(await statusOf(client.controller.ListVolumes({}))).toBe('INTERNAL');
      await client.identity.Probe({});
    } finally {
      client.close();
      await server.close(1_000);
    }
    const of = (rpc: string) => lines.filter((l) => l.rpc === rpc);
    expect(of('Controller.CreateVolume')).toEqual([expect.objectContaining({ msg: 'csi call', volume: 'pvc-a', volumeId: 'cluster-1/7', ms: expect.any(Number) })]);
    expect(of('Controller.DeleteVolume')).toEqual([
      expect.objectContaining({ msg: 'csi call failed', volume: 'cluster-1/7', grpcCode: 'FAILED_PRECONDITION', code: 'TORUS_ERR_VOLUME_IN_USE', ms: expect.any(Number) }),
    ]);
    expect(of('Controller.ListVolumes')).toEqual([expect.objectContaining({ msg: 'csi call failed', grpcCode: 'INTERNAL', code: null, level: 50 })]);
    expect(of('Identity.Probe')).toEqual([expect.objectContaining({ msg: 'csi call', ms: expect.any(Number) })]);
    expect(of('Identity.Probe')[0]).not.toHaveProperty('volume');
  });

  it('volumeOf and volumeIdOf read what they can and nothing else', () => {
    expect(volumeOf({ volume_id: 'c/1', name: 'n' })).toBe('c/1');
    expect(volumeOf({ volume_id: '', name: 'pvc-x' })).toBe('pvc-x');
    expect(volumeOf({})).toBeUndefined();
    expect(volumeOf(null)).toBeUndefined();
    expect(volumeIdOf({ volume: { volume_id: 'c/2' } })).toBe('c/2');
    expect(volumeIdOf({ volume: null })).toBeUndefined();
    expect(volumeIdOf({ entries: [] })).toBeUndefined();
    expect(volumeIdOf(null)).toBeUndefined();
  });
});
