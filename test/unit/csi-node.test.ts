/**
 * The CSI Node service against twins: two (or three) nodes, each with its
 * own mount table and devices, sharing one cluster's volumes and locks.
 * The VM suite (npm run test:vm:csi) runs the same flows on a real kernel.
 */
import pino from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { NodeService } from '../../src/k8s/csi/node.js';
import { MemoryFormatMarks } from '../../src/k8s/mount/format-marks.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import { FakeCluster, FakeNodeAttach, torusCodeOf } from '../helpers/csi-fakes.js';
import { ManualClock } from '../helpers/metadata-contract.js';

const MiB = 1024 * 1024;
const silent = pino({ level: 'silent' });
const mountCap = (mode = 'SINGLE_NODE_WRITER', fs_type = 'ext4') => ({ mount: { fs_type, mount_flags: [], volume_mount_group: '' }, block: null, access_mode: { mode }, access_type: 'mount' });
const blockCap = (mode = 'SINGLE_NODE_WRITER') => ({ block: {}, mount: null, access_mode: { mode }, access_type: 'block' });

let md: MemoryMetadata;
let cluster: FakeCluster;
let marks: MemoryFormatMarks;
let clusterId: string;

interface TestNode {
  readonly attach: FakeNodeAttach;
  readonly rpc: ReturnType<NodeService['handlers']>;
}

function node(name: string): TestNode {
  const attach = new FakeNodeAttach(name, cluster);
  const svc = new NodeService({ nodeId: name, attach, system: attach.node, marks, metadata: md, logger: silent });
  return { attach, rpc: svc.handlers() };
}

const code = torusCodeOf;

const STAGE = '/var/lib/kubelet/plugins/kubernetes.io/csi/torus.csi.coreos.com/abc/globalmount';
const POD1 = '/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount';
const POD2 = '/var/lib/kubelet/pods/p2/volumes/kubernetes.io~csi/pvc-1/mount';

let vid: string;

beforeEach(async () => {
  md = new MemoryMetadata({ clock: new ManualClock() });
  clusterId = (await md.initCluster({ blockSize: MiB, replication: 1 }, { force: false })).id;
  const v = await md.createVolume('pvc-1', 64 * MiB);
  vid = `${clusterId}/${v.id}`;
  cluster = new FakeCluster(md);
  marks = new MemoryFormatMarks();
});

const stage = (n: TestNode, cap: object = mountCap(), extra: object = {}) => n.rpc.NodeStageVolume({ volume_id: vid, staging_target_path: STAGE, volume_capability: cap, volume_context: {}, publish_context: {}, ...extra } as never);
const publish = (n: TestNode, target: string, cap: object = mountCap(), readonly = false) => n.rpc.NodePublishVolume({ volume_id: vid, staging_target_path: STAGE, target_path: target, volume_capability: cap, readonly, volume_context: {}, publish_context: {} } as never);
const unpublish = (n: TestNode, target: string) => n.rpc.NodeUnpublishVolume({ volume_id: vid, target_path: target } as never);
const unstage = (n: TestNode) => n.rpc.NodeUnstageVolume({ volume_id: vid, staging_target_path: STAGE } as never);

describe('NodeStageVolume and NodePublishVolume: a filesystem', () => {
  it('attaches, makes ext4 on the empty device, mounts it noatime at the staging path; binds into pods; every step repeats harmlessly', async () => {
    const a = node('node-a');
    await stage(a);
    const fake = a.attach.node;
    expect(fake.count('mkfs')).toBe(1);
    const staged = fake.mounts.find((m) => m.mountPoint === STAGE)!;
    expect(staged).toMatchObject({ source: '/dev/nbd0', fsType: 'ext4' });
    expect(staged.options).toContain('noatime');
    expect(marks.marks.size).toBe(1);
    await stage(a);
    expect(fake.count('mkfs')).toBe(1);
    expect(a.attach.calls.filter((c) => c.startsWith('attach'))).toEqual(['attach pvc-1']);
    await publish(a, POD1);
    await publish(a, POD1);
    await publish(a, POD2, mountCap(), true);
    expect(fake.mounts.find((m) => m.mountPoint === POD1)!.options).not.toContain('ro');
    expect(fake.mounts.find((m) => m.mountPoint === POD2)!.options).toContain('ro');
    // Published read-only is not the same publish as read-write.
    expect(await code(publish(a, POD2))).toBe('TORUS_ERR_CSI_VOLUME_INCOMPATIBLE');
    // Unstage while pods still use it: refused, nothing detached.
    expect(await code(unstage(a))).toBe('TORUS_ERR_VOLUME_IN_USE');
    await unpublish(a, POD1);
    await unpublish(a, POD1);
    await unpublish(a, POD2);
    expect(fake.mounts.map((m) => m.mountPoint)).toEqual([STAGE]);
    expect(fake.log).toContain(`remove ${POD1}`);
    await unstage(a);
    await unstage(a);
    expect(fake.mounts).toEqual([]);
    expect(fake.count('flush /dev/nbd0')).toBe(1);
    expect(a.attach.calls).toContain('detach /dev/nbd0');
    expect(await a.attach.list()).toEqual([]);
  });

  it('a second node cannot stage a writer while the first holds the volume (FAILED_PRECONDITION naming the holder); afterwards it stages without mkfs', async () => {
    const a = node('node-a');
    const b = node('node-b');
    await stage(a);
    const refused = await stage(b).catch((e: TorusError) => e);
    expect(refused).toMatchObject({ code: 'TORUS_ERR_VOLUME_IN_USE' });
    expect((refused as TorusError).message).toContain('node-a');
    expect(b.attach.node.mounts).toEqual([]);
    // A reader is refused too while the writer holds it.
    expect(await code(stage(b, mountCap('MULTI_NODE_READER_ONLY')))).toBe('TORUS_ERR_VOLUME_IN_USE');
    await unstage(a);
    await stage(b);
    expect(b.attach.node.count('mkfs')).toBe(0);
    expect(b.attach.node.mounts[0]).toMatchObject({ mountPoint: STAGE, fsType: 'ext4' });
  });

  it('MULTI_NODE_READER_ONLY: readers on several nodes, read-only devices mounted ro,noload, every publish read-only; a writer waits for all of them', async () => {
    const w = node('node-w');
    await stage(w);
    await unstage(w);
    const r1 = node('node-r1');
    const r2 = node('node-r2');
    for (const r of [r1, r2]) {
      await stage(r, mountCap('MULTI_NODE_READER_ONLY'));
      const m = r.attach.node.mounts.find((x) => x.mountPoint === STAGE)!;
      expect(m.options).toEqual(expect.arrayContaining(['ro', 'noload', 'noatime']));
      await publish(r, POD1, mountCap('MULTI_NODE_READER_ONLY'));
      expect(r.attach.node.mounts.find((x) => x.mountPoint === POD1)!.options).toContain('ro');
    }
    expect(r1.attach.calls).toContain('attach pvc-1 ro reader');
    const w2 = node('node-w2');
    const refused = await stage(w2).catch((e: TorusError) => e);
    expect(refused).toMatchObject({ code: 'TORUS_ERR_VOLUME_IN_USE' });
    expect((refused as TorusError).message).toMatch(/reader lock/);
    for (const r of [r1, r2]) {
      await unpublish(r, POD1);
      await unstage(r);
    }
    await stage(w2);
  });

  it('a reader stage of a volume that has no filesystem yet is refused and leaves nothing attached', async () => {
    const r = node('node-r');
    expect(await code(stage(r, mountCap('MULTI_NODE_READER_ONLY')))).toBe('TORUS_ERR_CSI_NOT_FORMATTED_RO');
    expect(await r.attach.list()).toEqual([]);
    expect(cluster.readers.get('pvc-1')?.size ?? 0).toBe(0);
  });

  it('another filesystem than asked for: refused with the CSI code, nothing changed, detached again', async () => {
    const a = node('node-a');
    cluster.diskOf('pvc-1').fs = 'xfs';
    const err = await stage(a).catch((e: TorusError) => e);
    expect(err).toMatchObject({ code: 'TORUS_ERR_CSI_FS_MISMATCH' });
    expect(cluster.diskOf('pvc-1').fs).toBe('xfs');
    expect(await a.attach.list()).toEqual([]);
    await stage(a, mountCap('SINGLE_NODE_WRITER', 'xfs'));
  });

  it('fsType falls back to the StorageClass\'s (volume_context), then ext4', async () => {
    const a = node('node-a');
    await stage(a, mountCap('SINGLE_NODE_WRITER', ''), { volume_context: { volume: 'pvc-1', fsType: 'xfs', writeLevel: 'one' } });
    expect(a.attach.node.mounts[0]!.fsType).toBe('xfs');
    expect(a.attach.calls[0]).toBe('attach pvc-1 one');
  });

  it('SINGLE_NODE_SINGLE_WRITER publishes once on the node', async () => {
    const a = node('node-a');
    const cap = mountCap('SINGLE_NODE_SINGLE_WRITER');
    await stage(a, cap);
    await publish(a, POD1, cap);
    expect(await code(publish(a, POD2, cap))).toBe('TORUS_ERR_VOLUME_IN_USE');
  });

  it('volume stats: bytes and inodes of the mounted filesystem; NOT_FOUND elsewhere', async () => {
    const a = node('node-a');
    await stage(a);
    await publish(a, POD1);
    a.attach.node.stats.set(POD1, { totalBytes: 1000, availableBytes: 600, usedBytes: 400, totalInodes: 100, freeInodes: 90, usedInodes: 10 });
    const r = (await a.rpc.NodeGetVolumeStats({ volume_id: vid, volume_path: POD1, staging_target_path: '' } as never)) as any;
    expect(r.usage).toEqual([
      { unit: 'BYTES', total: '1000', available: '600', used: '400' },
      { unit: 'INODES', total: '100', available: '90', used: '10' },
    ]);
    expect(await code(a.rpc.NodeGetVolumeStats({ volume_id: vid, volume_path: POD2 } as never))).toBe('TORUS_ERR_VOLUME_NOT_FOUND');
    expect(await code(a.rpc.NodeGetVolumeStats({ volume_id: `${clusterId}/99`, volume_path: POD1 } as never))).toBe('TORUS_ERR_VOLUME_NOT_FOUND');
    expect(await code(a.rpc.NodeGetVolumeStats({ volume_id: vid, volume_path: '' } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
  });
});

describe('raw block volumes', () => {
  it('stage attaches only; publish binds the device node onto a file; stats give its size; unpublish removes the file; unstage detaches', async () => {
    const a = node('node-a');
    const target = '/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/p1';
    await stage(a, blockCap());
    await stage(a, blockCap());
    expect(a.attach.node.mounts).toEqual([]);
    expect(a.attach.node.count('mkfs') + a.attach.node.count('probe')).toBe(0);
    await publish(a, target, blockCap());
    await publish(a, target, blockCap());
    expect(a.attach.node.mounts).toEqual([expect.objectContaining({ mountPoint: target, root: '/nbd0', fsType: 'devtmpfs' })]);
    const r = (await a.rpc.NodeGetVolumeStats({ volume_id: vid, volume_path: target } as never)) as any;
    expect(r.usage).toEqual([{ unit: 'BYTES', total: String(64 * MiB), available: '0', used: '0' }]);
    expect(await code(unstage(a))).toBe('TORUS_ERR_VOLUME_IN_USE');
    await unpublish(a, target);
    expect(a.attach.node.files.has(target)).toBe(false);
    await unstage(a);
    expect(await a.attach.list()).toEqual([]);
  });
});

describe('requests the node service refuses', () => {
  it('missing fields are INVALID_ARGUMENT; unknown and foreign volumes NOT_FOUND; publish before stage FAILED_PRECONDITION', async () => {
    const a = node('node-a');
    expect(await code(a.rpc.NodeStageVolume({ volume_id: '', staging_target_path: STAGE, volume_capability: mountCap() } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(a.rpc.NodeStageVolume({ volume_id: vid, staging_target_path: '', volume_capability: mountCap() } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(a.rpc.NodeStageVolume({ volume_id: vid, staging_target_path: STAGE, volume_capability: null } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(a.rpc.NodeStageVolume({ volume_id: vid, staging_target_path: STAGE, volume_capability: mountCap('MULTI_NODE_MULTI_WRITER') } as never))).toBe('TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED');
    expect(await code(a.rpc.NodeStageVolume({ volume_id: `${clusterId}/42`, staging_target_path: STAGE, volume_capability: mountCap() } as never))).toBe('TORUS_ERR_VOLUME_NOT_FOUND');
    expect(await code(a.rpc.NodeStageVolume({ volume_id: 'other-cluster/1', staging_target_path: STAGE, volume_capability: mountCap() } as never))).toBe('TORUS_ERR_VOLUME_NOT_FOUND');
    expect(await code(a.rpc.NodeUnstageVolume({ volume_id: vid, staging_target_path: '' } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(a.rpc.NodeUnstageVolume({ volume_id: '', staging_target_path: STAGE } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(publish(a, POD1))).toBe('TORUS_ERR_CSI_NOT_STAGED');
    expect(await code(a.rpc.NodePublishVolume({ volume_id: vid, staging_target_path: '', target_path: POD1, volume_capability: mountCap() } as never))).toBe('TORUS_ERR_CSI_NOT_STAGED');
    expect(await code(a.rpc.NodePublishVolume({ volume_id: vid, staging_target_path: STAGE, target_path: '', volume_capability: mountCap() } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(a.rpc.NodePublishVolume({ volume_id: vid, staging_target_path: STAGE, target_path: POD1, volume_capability: null } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(await code(a.rpc.NodeUnpublishVolume({ volume_id: vid, target_path: '' } as never))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    // Nothing staged or published: the undo calls succeed.
    await unpublish(a, POD1);
    await unstage(a);
  });

  it('a second call on a volume while one runs is ABORTED (operation pending)', async () => {
    const a = node('node-a');
    let open!: () => void;
    a.attach.gate = new Promise<void>((r) => (open = r));
    const first = stage(a);
    await new Promise((r) => setTimeout(r, 10));
    expect(await code(stage(a))).toBe('TORUS_ERR_CSI_BUSY');
    expect(await code(unstage(a))).toBe('TORUS_ERR_CSI_BUSY');
    open();
    await first;
  });

  it('a staging path that holds another mount is not mounted over; a foreign mount is not unmounted', async () => {
    const a = node('node-a');
    a.attach.node.mounts.push({ dev: '8:1', root: '/', mountPoint: STAGE, options: ['rw'], fsType: 'ext4', source: '/dev/sda1', superOptions: ['rw'] });
    expect(await code(stage(a))).toBe('TORUS_ERR_CSI_VOLUME_INCOMPATIBLE');
    expect(await a.attach.list()).toEqual([]);
    expect(await code(unstage(a))).toBe('TORUS_ERR_CSI_NOT_TORUS_MOUNT');
    a.attach.node.mounts.push({ dev: '8:1', root: '/', mountPoint: POD1, options: ['rw'], fsType: 'ext4', source: '/dev/sda1', superOptions: ['rw'] });
    expect(await code(unpublish(a, POD1))).toBe('TORUS_ERR_CSI_NOT_TORUS_MOUNT');
  });

  it('a failed mkfs leaves nothing attached; a device that failed for good is detached and staged again', async () => {
    const a = node('node-a');
    a.attach.node.mkfsFails = true;
    expect(await code(stage(a))).not.toBe('OK');
    expect(await a.attach.list()).toEqual([]);
    a.attach.node.mkfsFails = false;
    await stage(a, blockCap());
    const [att] = await a.attach.list();
    a.attach.fail(att!.device);
    expect(await code(publish(a, '/var/lib/kubelet/x/p1', blockCap()))).toBe('TORUS_ERR_ATTACH_LOCK_LOST');
    await stage(a, blockCap());
    expect((await a.attach.list())[0]!.state).toBe('serving');
  });

  it('a flush that fails keeps the device for a retry, unless another node holds the volume with a newer token (fenced off: detach)', async () => {
    const a = node('node-a');
    await stage(a);
    a.attach.node.flushFails = 'EIO';
    expect(await code(unstage(a))).toBe('TORUS_ERR_CSI_MOUNT_FAILED');
    expect(await a.attach.list()).toHaveLength(1);
    // Node A's lease ran out and node B took the volume: tokens 2, 3 are past A's 1.
    cluster.writers.delete('pvc-1');
    const s = await md.openSession({ ttlSeconds: 30 });
    await (await s.lockVolume('pvc-1', 'torusd on node-b')).release();
    await s.lockVolume('pvc-1', 'torusd on node-b');
    // torusd detaches, then says it could not make the final flush without
    // the lock: for a fenced-off device that is the expected end, not a failure.
    a.attach.detachError = new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', 'volume "pvc-1" was closed without its final flush (test)');
    expect(await code(unstage(a))).toBe('OK');
    expect(await a.attach.list()).toEqual([]);
  });

  it('a final flush that fails at detach on a device not fenced off is returned to kubelet; its retry finds the device gone', async () => {
    const a = node('node-a');
    await stage(a);
    a.attach.detachError = new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', 'volume "pvc-1" was closed without its final flush (test)');
    expect(await code(unstage(a))).toBe('TORUS_ERR_VOLUME_LOCK_LOST');
    expect(await code(unstage(a))).toBe('OK');
  });

  it('detaches a fenced-off device whose flush fails also when the node that took the volume has let go of it again', async () => {
    const a = node('node-a');
    await stage(a);
    a.attach.node.flushFails = 'EIO';
    // Node B took the volume with tokens past A's 1, used it and unstaged it:
    // no lock shows that now, the volume's fence does.
    cluster.writers.delete('pvc-1');
    const s = await md.openSession({ ttlSeconds: 30 });
    await (await s.lockVolume('pvc-1', 'torusd on node-b')).release();
    await (await s.lockVolume('pvc-1', 'torusd on node-b')).release();
    expect(await md.getVolumeLock(Number(vid.split('/')[1]))).toBeNull();
    await unstage(a);
    expect(await a.attach.list()).toEqual([]);
  });

  it('advertises staging, stats and single-node multi-writer; reports its node id', async () => {
    const a = node('node-a');
    expect(((await a.rpc.NodeGetCapabilities()) as any).capabilities.map((c: any) => c.rpc.type)).toEqual(['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'SINGLE_NODE_MULTI_WRITER']);
    expect(await a.rpc.NodeGetInfo()).toMatchObject({ node_id: 'node-a', max_volumes_per_node: '0' });
  });
});
