/**
 * The CSI Controller service on the in-memory metadata twin: the same
 * cases the integration suite runs over gRPC against etcd, here without
 * I/O so that races and edge cases are cheap to try.
 */
import pino from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { ControllerService } from '../../src/k8s/csi/controller.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { MetadataSession } from '../../src/metadata/metadata-service.js';
import { ManualClock, peerRecord } from '../helpers/metadata-contract.js';
import { torusCodeOf } from '../helpers/csi-fakes.js';

const MiB = 1024 * 1024;
const silent = pino({ level: 'silent' });
const cap = (mode = 'SINGLE_NODE_WRITER') => ({ mount: { fs_type: 'ext4', mount_flags: [], volume_mount_group: '' }, block: null, access_mode: { mode }, access_type: 'mount' });

let md: MemoryMetadata;
let session: MetadataSession;
let c: ReturnType<ControllerService['handlers']>;
let clusterId: string;

const code = torusCodeOf;

function create(name: string, required: number, extra: Record<string, unknown> = {}): Promise<any> {
  return c.CreateVolume({ name, capacity_range: { required_bytes: String(required), limit_bytes: '0' }, volume_capabilities: [cap()], parameters: {}, ...extra } as never);
}

beforeEach(async () => {
  md = new MemoryMetadata({ clock: new ManualClock() });
  clusterId = (await md.initCluster({ blockSize: MiB, replication: 2 }, { force: false })).id;
  session = await md.openSession({ ttlSeconds: 30 });
  await session.putPeer(peerRecord('peer-a', { capacity: 40 * MiB }));
  await session.putPeer(peerRecord('peer-b', { capacity: 24 * MiB }));
  const ring = await md.getRing();
  await md.setRing({ ...ring, version: ring.version + 1, members: [{ uuid: 'peer-a', weight: 1 }, { uuid: 'peer-b', weight: 1 }] });
  c = new ControllerService({ metadata: md, logger: silent }).handlers();
});

describe('CreateVolume', () => {
  it('is idempotent by name, and N concurrent calls with one name make one volume', async () => {
    const first = await create('pvc-a', 3 * MiB);
    expect(first.volume).toMatchObject({ capacity_bytes: String(3 * MiB), volume_id: `${clusterId}/1`, volume_context: { volume: 'pvc-a' } });
    expect((await create('pvc-a', 3 * MiB)).volume.volume_id).toBe(first.volume.volume_id);
    const many = await Promise.all(Array.from({ length: 8 }, () => create('pvc-b', 2 * MiB)));
    expect(new Set(many.map((r) => r.volume.volume_id)).size).toBe(1);
    expect((await md.listVolumes()).map((v) => v.name)).toEqual(['pvc-a', 'pvc-b']);
  });

  it('maps names outside torus\'s rule, and the mapping is stable', async () => {
    const r = await create('Claim/with spaces ü', MiB);
    const name = r.volume.volume_context.volume as string;
    expect(name).toMatch(/^csi-Claim-with-spaces-[0-9a-f]{12}$/);
    expect((await create('Claim/with spaces ü', MiB)).volume.volume_id).toBe(r.volume.volume_id);
    expect((await md.getVolume(name)).size).toBe(MiB);
  });

  it('rounds to whole blocks; OUT_OF_RANGE past limit_bytes; ALREADY_EXISTS for the same name with an incompatible size', async () => {
    expect((await create('r', 1.5 * MiB)).volume.capacity_bytes).toBe(String(2 * MiB));
    expect(await code(c.CreateVolume({ name: 'r2', capacity_range: { required_bytes: String(MiB + 1), limit_bytes: String(MiB + 100) }, volume_capabilities: [cap()] } as never))).toBe('TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE');
    expect(await code(create('r', 3 * MiB))).toBe('TORUS_ERR_CSI_VOLUME_INCOMPATIBLE');
    expect(await code(c.CreateVolume({ name: 'r', capacity_range: { required_bytes: '0', limit_bytes: String(MiB) }, volume_capabilities: [cap()] } as never))).toBe('TORUS_ERR_CSI_VOLUME_INCOMPATIBLE');
    // A compatible range (2 MiB lies in [1 MiB, 4 MiB]) answers with the volume as it is.
    expect((await c.CreateVolume({ name: 'r', capacity_range: { required_bytes: String(MiB), limit_bytes: String(4 * MiB) }, volume_capabilities: [cap()] } as never) as any).volume.capacity_bytes).toBe(String(2 * MiB));
  });

  it('reserves size x R against the live capacity x overcommit; GetCapacity reports what CreateVolume accepts', async () => {
    // 64 MiB raw, R = 2: 32 MiB of volumes.
    const cap0 = (await c.GetCapacity({ volume_capabilities: [], parameters: {} } as never)) as any;
    expect(cap0.available_capacity).toBe(String(32 * MiB));
    expect(cap0.maximum_volume_size).toEqual({ value: String(32 * MiB) });
    expect(cap0.minimum_volume_size).toEqual({ value: String(MiB) });
    expect(await code(create('too-big', 33 * MiB))).toBe('TORUS_ERR_CAPACITY_EXHAUSTED');
    await create('fits', 30 * MiB);
    expect(((await c.GetCapacity({ parameters: {} } as never)) as any).available_capacity).toBe(String(2 * MiB));
    expect(await code(create('next', 3 * MiB))).toBe('TORUS_ERR_CAPACITY_EXHAUSTED');
    // With overcommit 2 the same ring takes more.
    expect(((await c.GetCapacity({ parameters: { overcommit: '2' } } as never)) as any).available_capacity).toBe(String(34 * MiB));
    await create('next', 3 * MiB, { parameters: { overcommit: '2' } });
    // A member going down takes its capacity with it.
    await session.close();
    const s2 = await md.openSession({ ttlSeconds: 30 });
    await s2.putPeer(peerRecord('peer-a', { capacity: 40 * MiB }));
    expect(((await c.GetCapacity({ parameters: {} } as never)) as any).available_capacity).toBe('0');
    // Unservable capabilities have no capacity.
    expect(((await c.GetCapacity({ parameters: { overcommit: '10' }, volume_capabilities: [cap('MULTI_NODE_MULTI_WRITER')] } as never)) as any).available_capacity).toBe('0');
  });

  it('concurrent creates of different names never reserve more than the ring has', async () => {
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => create(`p${i}`, 5 * MiB)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(6);
    for (const r of results) if (r.status === 'rejected') expect((r.reason as TorusError).code).toBe('TORUS_ERR_CAPACITY_EXHAUSTED');
  });

  it('parameters: replication must be the cluster\'s; unknown keys, bad fsType and writeLevel are refused; content sources are not served', async () => {
    expect(await code(create('p', MiB, { parameters: { replication: '3' } }))).toBe('TORUS_ERR_CSI_PARAMETER_INVALID');
    expect((await create('p', MiB, { parameters: { replication: '2', writeLevel: 'one', fsType: 'xfs' } })).volume.volume_context).toEqual({ volume: 'p', writeLevel: 'one', fsType: 'xfs' });
    for (const parameters of [{ fstype: 'ext4' }, { fsType: 'zfs' }, { writeLevel: 'some' }]) expect(await code(create('q', MiB, { parameters }))).toBe('TORUS_ERR_CSI_PARAMETER_INVALID');
    expect(await code(create('q', MiB, { volume_content_source: { type: 'snapshot', snapshot: { snapshot_id: 's' } } }))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(create('q', MiB, { volume_capabilities: [cap('MULTI_NODE_MULTI_WRITER')] }))).toBe('TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED');
    expect(await code(create('', MiB))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(create('q', MiB, { volume_capabilities: [] }))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(create('x'.repeat(129), MiB))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
  });
});

describe('DeleteVolume', () => {
  it('is idempotent, refused while a writer or a reader holds the volume, and never touches a volume that took the name since', async () => {
    const id = (await create('d', MiB)).volume.volume_id as string;
    const w = await session.lockVolume('d', 'torusd w on node-1 (pid 1)');
    const inUse = await c.DeleteVolume({ volume_id: id } as never).catch((e: TorusError) => e);
    expect(inUse).toMatchObject({ code: 'TORUS_ERR_VOLUME_IN_USE' });
    expect((inUse as TorusError).message).toContain('node-1');
    await w.release();
    const r = await session.lockVolumeForReading('d', 'torusd r on node-2 (pid 2)');
    expect(await code(c.DeleteVolume({ volume_id: id } as never))).toBe('TORUS_ERR_VOLUME_IN_USE');
    await r.release();
    await c.DeleteVolume({ volume_id: id } as never);
    await c.DeleteVolume({ volume_id: id } as never);
    // The name comes back as a new volume: the old id does not reach it.
    const again = (await create('d', MiB)).volume.volume_id as string;
    expect(again).not.toBe(id);
    await c.DeleteVolume({ volume_id: id } as never);
    expect((await md.getVolume('d')).id).toBe(2);
    for (const other of ['nope', 'other-cluster/2', `${clusterId}/999`]) await c.DeleteVolume({ volume_id: other } as never);
    expect(await code(c.DeleteVolume({ volume_id: '' } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
  });
});

describe('ValidateVolumeCapabilities, ListVolumes, capabilities', () => {
  it('confirms served capabilities, explains the others, NOT_FOUND for unknown ids', async () => {
    const v = (await create('v', MiB)).volume;
    const ok = (await c.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [cap(), cap('MULTI_NODE_READER_ONLY')], volume_context: v.volume_context, parameters: {} } as never)) as any;
    expect(ok.confirmed.volume_capabilities).toHaveLength(2);
    const no = (await c.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [cap('MULTI_NODE_MULTI_WRITER')] } as never)) as any;
    expect(no.confirmed).toBeUndefined();
    expect(no.message).toMatch(/TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED/);
    expect(await code(c.ValidateVolumeCapabilities({ volume_id: `${clusterId}/77`, volume_capabilities: [cap()] } as never))).toBe('TORUS_ERR_VOLUME_NOT_FOUND');
    expect(await code(c.ValidateVolumeCapabilities({ volume_id: v.volume_id, volume_capabilities: [] } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(c.ValidateVolumeCapabilities({ volume_id: '', volume_capabilities: [cap()] } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
  });

  it('pages through every volume once; a token not handed out is refused', async () => {
    for (let i = 0; i < 7; i++) await create(`l${i}`, MiB);
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = (await c.ListVolumes({ max_entries: 3, starting_token: token } as never)) as any;
      expect(page.entries.length).toBeLessThanOrEqual(3);
      seen.push(...page.entries.map((e: any) => e.volume.volume_id));
      token = page.next_token;
      pages++;
    } while (token !== '');
    expect(pages).toBe(3);
    expect(seen).toEqual(Array.from({ length: 7 }, (_, i) => `${clusterId}/${i + 1}`));
    expect(((await c.ListVolumes({ max_entries: 0, starting_token: '' } as never)) as any).entries).toHaveLength(7);
    expect(await code(c.ListVolumes({ max_entries: 0, starting_token: 'garbage' } as never))).toBe('TORUS_ERR_CSI_PAGE_TOKEN');
    expect(await code(c.ListVolumes({ max_entries: 0, starting_token: '99' } as never))).toBe('TORUS_ERR_CSI_PAGE_TOKEN');
    expect(await code(c.ListVolumes({ max_entries: -1, starting_token: '' } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
  });

  it('advertises what it serves, and no ControllerPublish (attachRequired: false) and no expansion', async () => {
    const caps = ((await c.ControllerGetCapabilities()) as any).capabilities.map((x: any) => x.rpc.type);
    expect(caps).toEqual(['CREATE_DELETE_VOLUME', 'LIST_VOLUMES', 'GET_CAPACITY', 'SINGLE_NODE_MULTI_WRITER']);
  });
});
