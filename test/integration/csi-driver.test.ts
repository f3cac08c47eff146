/**
 * The CSI driver as kubelet and the sidecars meet it: the real `torusblk
 * csi` process on a unix socket, called over gRPC by a client built from
 * the same csi.proto, against a real etcd and torusd (replication 2, one
 * 64 MiB peer: 32 MiB of volumes). Sanity-style cases: idempotency, the
 * spec's error codes, capacity, missing fields, paging, the volume in
 * `torusctl volume list` and written over NBD, Probe during an etcd outage,
 * and the log lines. The node service's stage/publish paths need a kernel
 * nbd driver: they run in the VM suite (npm run test:vm:csi).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdMetadata } from '../../src/metadata/etcd-metadata.js';
import pino from 'pino';
import { ensureBuilt } from '../helpers/build.js';
import { blockCap, csiClient, mountCap, statusOf, type CsiClient } from '../helpers/csi-client.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { qemuIoOk, startTorusd, startTorusblkCsi, torusctlOk, volumeList, type TorusblkCsiHandle, type TorusdHandle } from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;

let etcd: EtcdHandle;
let torusd: TorusdHandle;
let csi: TorusblkCsiHandle;
let client: CsiClient;
let tmp: string;
let clusterId: string;
let md: EtcdMetadata;

beforeAll(async () => {
  ensureBuilt();
  requireTool('qemu-io', 'qemu-utils');
  etcd = await startEtcd();
  await torusctlOk(etcd.endpoint, ['init', '--replication', '2', '--block-size', '1MiB']);
  torusd = await startTorusd({ etcd: etcd.endpoint, size: '64MiB' });
  tmp = await mkdtemp(path.join(os.tmpdir(), 'torus-csi-'));
  csi = await startTorusblkCsi({ etcd: etcd.endpoint, socketPath: path.join(tmp, 'csi.sock'), nodeId: 'node-test', dataDir: torusd.dataDir });
  client = csiClient(csi.socketPath);
  md = new EtcdMetadata({ endpoints: [etcd.endpoint], logger: pino({ level: 'silent' }) });
  clusterId = (await md.getClusterConfig())!.id;
});

afterAll(async () => {
  client?.close();
  await md?.close();
  await csi?.stop();
  await torusd?.destroy();
  await etcd?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const create = (name: string, required: number, extra: object = {}) =>
  client.controller.CreateVolume({ name, capacity_range: { required_bytes: required }, volume_capabilities: [mountCap()], ...extra });

describe('Identity', () => {
  it('names the driver, serves the controller, is ready', async () => {
    expect(await client.identity.GetPluginInfo({})).toMatchObject({ name: 'torus.csi.coreos.com', vendor_version: '0.1.0' });
    const caps = (await client.identity.GetPluginCapabilities({})).capabilities;
    expect(caps).toEqual([expect.objectContaining({ service: { type: 'CONTROLLER_SERVICE' } })]);
    expect(await client.identity.Probe({})).toEqual({ ready: { value: true } });
    const ctl = (await client.controller.ControllerGetCapabilities({})).capabilities.map((c: any) => c.rpc.type);
    expect(ctl).toEqual(['CREATE_DELETE_VOLUME', 'LIST_VOLUMES', 'GET_CAPACITY', 'SINGLE_NODE_MULTI_WRITER']);
    expect(await client.node.NodeGetInfo({})).toMatchObject({ node_id: 'node-test', max_volumes_per_node: '0' });
  });
});

describe('CreateVolume and DeleteVolume', () => {
  it('creates idempotently by name, also under concurrent calls; the volume is in torusctl volume list and takes writes over NBD', async () => {
    const first = await create('pvc-idem', 3 * MiB);
    expect(first.volume).toMatchObject({ capacity_bytes: String(3 * MiB), volume_id: `${clusterId}/1`, volume_context: { volume: 'pvc-idem' } });
    expect((await create('pvc-idem', 3 * MiB)).volume.volume_id).toBe(first.volume.volume_id);
    const many = await Promise.all(Array.from({ length: 8 }, () => create('pvc-race', 2 * MiB)));
    expect(new Set(many.map((r) => r.volume.volume_id)).size).toBe(1);
    const list = await volumeList(etcd.endpoint);
    expect([...list.keys()].sort()).toEqual(['pvc-idem', 'pvc-race']);
    expect(list.get('pvc-idem')).toMatchObject({ size: 3 * MiB, status: 'free' });
    const table = await torusctlOk(etcd.endpoint, ['volume', 'list']);
    expect(table.stdout.split('\n').find((l) => l.includes(' pvc-idem '))).toMatch(/pvc-idem\W+3(\.0)? MiB\W+block\W+free/);
    // Usable over NBD: torusd serves it like any volume.
    await qemuIoOk(torusd.nbdUri('pvc-idem'), ['write -P 0x5a 0 1M', 'write -P 0xa5 2M 1M']);
    await qemuIoOk(torusd.nbdUri('pvc-idem'), ['read -P 0x5a 0 1M', 'read -P 0 1M 1M', 'read -P 0xa5 2M 1M'], { readOnly: true });
  });

  it('maps a name outside torus\'s rule instead of refusing it', async () => {
    const r = await create('Claim with spaces/ü', MiB);
    const name = r.volume.volume_context.volume as string;
    expect(name).toMatch(/^csi-Claim-with-spaces-[0-9a-f]{12}$/);
    expect((await volumeList(etcd.endpoint)).has(name)).toBe(true);
    expect((await create('Claim with spaces/ü', MiB)).volume.volume_id).toBe(r.volume.volume_id);
  });

  it('rounds to the block size; OUT_OF_RANGE past limit_bytes; ALREADY_EXISTS for an incompatible size; INVALID_ARGUMENT for bad parameters and modes', async () => {
    expect((await create('pvc-round', MiB + 1)).volume.capacity_bytes).toBe(String(2 * MiB));
    expect(await statusOf(client.controller.CreateVolume({ name: 'pvc-oor', capacity_range: { required_bytes: MiB + 1, limit_bytes: MiB + 10 }, volume_capabilities: [mountCap()] }))).toBe('OUT_OF_RANGE');
    expect(await statusOf(create('pvc-round', 5 * MiB))).toBe('ALREADY_EXISTS');
    expect(await statusOf(create('pvc-p', MiB, { parameters: { replication: '3' } }))).toBe('INVALID_ARGUMENT');
    expect(await statusOf(create('pvc-p', MiB, { parameters: { bogus: 'x' } }))).toBe('INVALID_ARGUMENT');
    expect(await statusOf(create('pvc-p', MiB, { parameters: { writeLevel: 'sometimes' } }))).toBe('INVALID_ARGUMENT');
    for (const mode of ['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER']) {
      expect(await statusOf(create('pvc-m', MiB, { volume_capabilities: [mountCap(mode)] })), mode).toBe('INVALID_ARGUMENT');
    }
    const ok = await create('pvc-p', MiB, { parameters: { replication: '2', fsType: 'xfs', writeLevel: 'all' }, volume_capabilities: [mountCap(), blockCap('MULTI_NODE_READER_ONLY')] });
    expect(ok.volume.volume_context).toEqual({ volume: 'pvc-p', fsType: 'xfs', writeLevel: 'all' });
    for (const n of ['pvc-round', 'pvc-p']) await client.controller.DeleteVolume({ volume_id: (await create(n, MiB)).volume.volume_id });
  });

  it('deletes idempotently, refuses while a writer or a reader holds the volume (FAILED_PRECONDITION), never deletes a volume that reused the name', async () => {
    const id = (await create('pvc-del', MiB)).volume.volume_id;
    const s = await md.openSession({ ttlSeconds: 10 });
    const w = await s.lockVolume('pvc-del', 'torusd test-writer on node-x (pid 1)');
    const refused = await client.controller.DeleteVolume({ volume_id: id }).catch((e) => e);
    expect(refused.status).toBe('FAILED_PRECONDITION');
    expect(refused.details).toMatch(/^TORUS_ERR_VOLUME_IN_USE: .*node-x/);
    await w.release();
    const r = await s.lockVolumeForReading('pvc-del', 'torusd test-reader on node-y (pid 2)');
    expect(await statusOf(client.controller.DeleteVolume({ volume_id: id }))).toBe('FAILED_PRECONDITION');
    await r.release();
    await s.close();
    await client.controller.DeleteVolume({ volume_id: id });
    await client.controller.DeleteVolume({ volume_id: id });
    const again = (await create('pvc-del', MiB)).volume.volume_id;
    expect(again).not.toBe(id);
    await client.controller.DeleteVolume({ volume_id: id });
    expect((await volumeList(etcd.endpoint)).has('pvc-del')).toBe(true);
    await client.controller.DeleteVolume({ volume_id: 'not-a-torus-id' });
    await client.controller.DeleteVolume({ volume_id: again });
    expect((await volumeList(etcd.endpoint)).has('pvc-del')).toBe(false);
  });
});

describe('capacity', () => {
  it('reserves size x R against the ring; GetCapacity reports what CreateVolume accepts', async () => {
    const avail = Number((await client.controller.GetCapacity({})).available_capacity);
    const reserved = [...(await volumeList(etcd.endpoint)).values()].reduce((n, v) => n + v.size, 0);
    // 64 MiB on the one live member, R = 2: 32 MiB of volumes in all.
    expect(avail).toBe(32 * MiB - reserved);
    expect(await statusOf(create('pvc-huge', avail + MiB))).toBe('RESOURCE_EXHAUSTED');
    const full = await create('pvc-full', avail);
    expect((await client.controller.GetCapacity({})).available_capacity).toBe('0');
    expect(await statusOf(create('pvc-more', MiB))).toBe('RESOURCE_EXHAUSTED');
    // A StorageClass with overcommit 2 still has room.
    const over = await client.controller.GetCapacity({ parameters: { overcommit: '2' } });
    expect(Number(over.available_capacity)).toBe(32 * MiB);
    expect(over.maximum_volume_size).toEqual({ value: over.available_capacity });
    await client.controller.DeleteVolume({ volume_id: full.volume.volume_id });
    expect(Number((await client.controller.GetCapacity({})).available_capacity)).toBe(avail);
  });
});

describe('listing and validation', () => {
  it('pages through every volume exactly once; a token it did not hand out is ABORTED', async () => {
    for (let i = 0; i < 5; i++) await create(`pvc-page-${i}`, MiB);
    const all = (await client.controller.ListVolumes({})).entries.map((e: any) => e.volume.volume_id);
    const seen: string[] = [];
    let token = '';
    do {
      const page = await client.controller.ListVolumes({ max_entries: 2, starting_token: token });
      expect(page.entries.length).toBeLessThanOrEqual(2);
      seen.push(...page.entries.map((e: any) => e.volume.volume_id));
      token = page.next_token;
    } while (token !== '');
    expect(seen).toEqual(all);
    expect(new Set(seen).size).toBe(seen.length);
    expect(await statusOf(client.controller.ListVolumes({ starting_token: 'nonsense' }))).toBe('ABORTED');
    expect(await statusOf(client.controller.ListVolumes({ max_entries: -1 }))).toBe('INVALID_ARGUMENT');
  });

  it('ValidateVolumeCapabilities confirms what is served and NOT_FOUND for unknown volumes', async () => {
    const v = (await create('pvc-val', MiB)).volume;
    const ok = await client.controller.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [mountCap(), blockCap()] });
    expect(ok.confirmed.volume_capabilities).toHaveLength(2);
    const no = await client.controller.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [mountCap('MULTI_NODE_MULTI_WRITER')] });
    expect(no.confirmed).toBeNull();
    expect(no.message).toMatch(/TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED/);
    expect(await statusOf(client.controller.ValidateVolumeCapabilities({ volume_id: `${clusterId}/999`, volume_capabilities: [mountCap()] }))).toBe('NOT_FOUND');
  });

  it('missing required fields are INVALID_ARGUMENT on every RPC', async () => {
    const v = (await create('pvc-req', MiB)).volume.volume_id;
    const stage = '/tmp/torus-csi-test-stage';
    const cases: [string, Promise<unknown>][] = [
      ['CreateVolume without name', client.controller.CreateVolume({ volume_capabilities: [mountCap()] })],
      ['CreateVolume without capabilities', client.controller.CreateVolume({ name: 'x' })],
      ['CreateVolume with a capability without access mode', client.controller.CreateVolume({ name: 'x', volume_capabilities: [{ mount: {} }] })],
      ['DeleteVolume without id', client.controller.DeleteVolume({})],
      ['ValidateVolumeCapabilities without id', client.controller.ValidateVolumeCapabilities({ volume_capabilities: [mountCap()] })],
      ['ValidateVolumeCapabilities without capabilities', client.controller.ValidateVolumeCapabilities({ volume_id: v })],
      ['NodeStageVolume without id', client.node.NodeStageVolume({ staging_target_path: stage, volume_capability: mountCap() })],
      ['NodeStageVolume without staging path', client.node.NodeStageVolume({ volume_id: v, volume_capability: mountCap() })],
      ['NodeStageVolume without capability', client.node.NodeStageVolume({ volume_id: v, staging_target_path: stage })],
      ['NodeUnstageVolume without id', client.node.NodeUnstageVolume({ staging_target_path: stage })],
      ['NodeUnstageVolume without staging path', client.node.NodeUnstageVolume({ volume_id: v })],
      ['NodePublishVolume without target', client.node.NodePublishVolume({ volume_id: v, staging_target_path: stage, volume_capability: mountCap() })],
      ['NodePublishVolume without capability', client.node.NodePublishVolume({ volume_id: v, staging_target_path: stage, target_path: '/tmp/torus-csi-t' })],
      ['NodeUnpublishVolume without id', client.node.NodeUnpublishVolume({ target_path: '/tmp/torus-csi-t' })],
      ['NodeUnpublishVolume without target', client.node.NodeUnpublishVolume({ volume_id: v })],
      ['NodeGetVolumeStats without path', client.node.NodeGetVolumeStats({ volume_id: v })],
    ];
    for (const [what, call] of cases) expect(await statusOf(call), what).toBe('INVALID_ARGUMENT');
  });

  it('node calls: NOT_FOUND for unknown volumes, FAILED_PRECONDITION to publish what is not staged, OK to undo what was never done', async () => {
    const v = (await create('pvc-node', MiB)).volume.volume_id;
    expect(await statusOf(client.node.NodeStageVolume({ volume_id: `${clusterId}/999`, staging_target_path: path.join(tmp, 's'), volume_capability: mountCap() }))).toBe('NOT_FOUND');
    expect(await statusOf(client.node.NodeStageVolume({ volume_id: 'elsewhere/1', staging_target_path: path.join(tmp, 's'), volume_capability: mountCap() }))).toBe('NOT_FOUND');
    expect(await statusOf(client.node.NodePublishVolume({ volume_id: v, staging_target_path: path.join(tmp, 's'), target_path: path.join(tmp, 't'), volume_capability: mountCap() }))).toBe('FAILED_PRECONDITION');
    expect(await statusOf(client.node.NodePublishVolume({ volume_id: v, target_path: path.join(tmp, 't'), volume_capability: mountCap() }))).toBe('FAILED_PRECONDITION');
    expect(await statusOf(client.node.NodeGetVolumeStats({ volume_id: v, volume_path: path.join(tmp, 't') }))).toBe('NOT_FOUND');
    await client.node.NodeUnpublishVolume({ volume_id: v, target_path: path.join(tmp, 't') });
    await client.node.NodeUnstageVolume({ volume_id: v, staging_target_path: path.join(tmp, 's') });
  });
});

describe('operations', () => {
  it('Probe answers ready: false while etcd does not answer, and never fails the call', async () => {
    etcd.process.kill('SIGSTOP');
    try {
      const started = Date.now();
      expect(await client.identity.Probe({})).toEqual({ ready: { value: false } });
      expect(Date.now() - started).toBeLessThan(3000);
      expect(await statusOf(client.controller.CreateVolume({ name: 'pvc-outage', volume_capabilities: [mountCap()] }))).toBe('UNAVAILABLE');
    } finally {
      etcd.process.kill('SIGCONT');
    }
    await waitFor('Probe ready again', async () => (await client.identity.Probe({})).ready.value === true, 20_000, 200);
  });

  it('logs every RPC as a JSON line on stderr, with its volume and duration', async () => {
    const id = (await create('pvc-log', MiB)).volume.volume_id;
    await client.controller.DeleteVolume({ volume_id: id });
    const line = await csi.waitForLog('DeleteVolume logged', (l) => l.rpc === 'Controller.DeleteVolume' && l.volume === id);
    expect(typeof line.ms).toBe('number');
    // CreateVolume's request names the volume by its CSI name only: its line also carries the id it handed out.
    expect(csi.lines().find((l) => l.rpc === 'Controller.CreateVolume' && l.volumeId === id)).toMatchObject({ volume: 'pvc-log', msg: 'csi call' });
    const failed = csi.lines().find((l) => l.rpc === 'Controller.CreateVolume' && l.grpcCode === 'RESOURCE_EXHAUSTED');
    expect(failed).toMatchObject({ code: 'TORUS_ERR_CAPACITY_EXHAUSTED', msg: 'csi call failed' });
    expect(csi.lines().some((l) => l.rpc === 'Identity.Probe')).toBe(true);
  });
});
