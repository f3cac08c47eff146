import pino from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { flexHandler } from '../../src/k8s/flex/driver.js';
import { MemoryFormatMarks } from '../../src/k8s/mount/format-marks.js';
import { FlexMounter, PROBE_BYTES } from '../../src/k8s/flex/mounter.js';
import type { FlexResult } from '../../src/k8s/flex/protocol.js';
import { MemoryStateStore } from '../../src/k8s/flex/state.js';
import { FakeAttacher, FakeNode, disk } from '../helpers/flex-fakes.js';

const POD_A = '/var/lib/kubelet/pods/aaaa/volumes/coreos.com~torus/etherpad';
const POD_B = '/var/lib/kubelet/pods/bbbb/volumes/coreos.com~torus/etherpad';
const STAGING_ROOT = '/var/lib/kubelet/plugins/coreos.com~torus/mounts';

/** The options kubelet sends for the walkthrough's etherpad volume. */
function kubeletJson(extra: Record<string, string> = {}): string {
  return JSON.stringify({
    'kubernetes.io/fsType': 'ext4',
    'kubernetes.io/readwrite': 'rw',
    'kubernetes.io/pvOrVolumeName': 'etherpad',
    'kubernetes.io/pod.name': 'etherpad-1',
    'kubernetes.io/pod.namespace': 'default',
    'kubernetes.io/pod.uid': 'aaaa',
    'kubernetes.io/serviceAccount.name': 'default',
    volume: 'pad',
    etcd: '10.3.0.100:2379',
    ...extra,
  });
}

let node: FakeNode;
let attacher: FakeAttacher;
let marks: MemoryFormatMarks;
let state: MemoryStateStore;
let call: (...argv: string[]) => Promise<FlexResult>;

beforeEach(() => {
  node = new FakeNode();
  attacher = new FakeAttacher(node);
  attacher.disks.set('pad', disk());
  marks = new MemoryFormatMarks();
  state = new MemoryStateStore();
  const mounter = new FlexMounter({ attacher, system: node, marks, state, stagingRoot: STAGING_ROOT, logger: pino({ level: 'silent' }) });
  const handler = flexHandler(mounter);
  call = (...argv) => handler(argv);
});

function mountsAt(dir: string) {
  return node.mounts.filter((m) => m.mountPoint === dir);
}

describe('FlexVolume driver calls (torusd side)', () => {
  it('init reports attach: false', async () => {
    expect(await call('init')).toEqual({ status: 'Success', capabilities: { attach: false } });
  });

  it('answers calls it does not implement with Not supported', async () => {
    for (const c of ['attach', 'getvolumename', 'mountdevice', 'expandvolume', 'bogus']) {
      expect((await call(c, '{}')).status).toBe('Not supported');
    }
  });

  it('fails bad JSON, a missing volume and wrong arity with a message', async () => {
    const bad = await call('mount', POD_A, '{not json');
    expect(bad).toMatchObject({ status: 'Failure', message: expect.stringContaining('TORUS_ERR_FLEX_REQUEST_INVALID') });
    const noVol = await call('mount', POD_A, JSON.stringify({ 'kubernetes.io/fsType': 'ext4' }));
    expect(noVol.message).toMatch(/TORUS_ERR_FLEX_REQUEST_INVALID: the "volume" option is missing/);
    expect((await call('mount', POD_A)).message).toMatch(/mount takes 2 arguments, got 1/);
    expect((await call('unmount')).message).toMatch(/unmount takes 1 argument, got 0/);
    expect((await call('mount', 'relative/dir', kubeletJson())).message).toMatch(/not an absolute path/);
    expect(attacher.calls).toEqual([]);
  });
});

describe('mount', () => {
  it('attaches, proves the device empty, makes ext4 once, mounts with noatime and binds the pod dir', async () => {
    expect(await call('mount', POD_A, kubeletJson())).toEqual({ status: 'Success' });
    expect(attacher.calls).toHaveLength(1);
    expect(attacher.calls[0]).toMatchObject({ op: 'attach', volume: 'pad', opts: { readOnly: false, etcd: ['10.3.0.100:2379'] } });
    const size = 64 * 1024 * 1024;
    // Both ends read before blkid is asked, and mkfs only after that.
    const order = node.log.filter((l) => /^(read|probe|mkfs|mount|bind)/.test(l));
    expect(order.slice(0, 4)).toEqual([`read /dev/nbd0 0 ${PROBE_BYTES}`, `read /dev/nbd0 ${size - PROBE_BYTES} ${PROBE_BYTES}`, 'probe /dev/nbd0', 'mkfs /dev/nbd0 ext4']);
    expect(node.count('mkfs')).toBe(1);
    const staging = node.mounts.find((m) => m.source === '/dev/nbd0' && m.mountPoint.startsWith(STAGING_ROOT))!;
    expect(staging.options).toEqual(['noatime']);
    expect(mountsAt(POD_A)).toHaveLength(1);
    expect(mountsAt(POD_A)[0]!.dev).toBe(staging.dev);
    expect(await marks.get('pad', ['10.3.0.100:2379'])).toMatchObject({ fsType: 'ext4' });
  });

  it('is idempotent: a retried mount of a mounted dir changes nothing', async () => {
    await call('mount', POD_A, kubeletJson());
    const before = node.log.length;
    expect(await call('mount', POD_A, kubeletJson())).toEqual({ status: 'Success' });
    expect(attacher.calls).toHaveLength(1);
    expect(node.log.slice(before)).toEqual([]);
    expect(mountsAt(POD_A)).toHaveLength(1);
  });

  it('mounts an existing filesystem without mkfs and records the mark', async () => {
    attacher.disks.set('pad', disk(64 * 1024 * 1024, 'ext4'));
    expect(await call('mount', POD_A, kubeletJson())).toEqual({ status: 'Success' });
    expect(node.count('mkfs')).toBe(0);
    expect(await marks.get('pad', ['10.3.0.100:2379'])).not.toBeNull();
  });

  it('refuses a different existing filesystem type and leaves it alone', async () => {
    attacher.disks.set('pad', disk(64 * 1024 * 1024, 'xfs'));
    const r = await call('mount', POD_A, kubeletJson());
    expect(r.status).toBe('Failure');
    expect(r.message).toMatch(/TORUS_ERR_FLEX_FS_MISMATCH: volume pad holds a xfs filesystem but the pod asks for ext4/);
    expect(node.count('mkfs')).toBe(0);
    expect(attacher.attachedCount).toBe(0);
    expect(node.mounts).toEqual([]);
    expect((await state.load()).size).toBe(0);
  });

  it('a read fault at the start or the end of the device fails the mount with no mkfs', async () => {
    for (const faultAt of [0, 64 * 1024 * 1024 - 4096]) {
      const d = disk();
      d.readFaultFrom = faultAt;
      attacher.disks.set('pad', d);
      const r = await call('mount', POD_A, kubeletJson());
      expect(r.status).toBe('Failure');
      expect(r.message).toMatch(/TORUS_ERR_FLEX_DEVICE_READ: reading \/dev\/nbd\d+ \(volume pad\) failed, so it cannot be proven empty/);
      expect(node.count('mkfs')).toBe(0);
      expect(node.count('probe')).toBe(0);
      expect(d.fs).toBeNull();
      expect(attacher.attachedCount).toBe(0);
      expect((await state.load()).size).toBe(0);
    }
  });

  it('never formats a volume recorded as formatted, even when blkid sees nothing', async () => {
    await marks.set('pad', ['10.3.0.100:2379'], 'ext4');
    const r = await call('mount', POD_A, kubeletJson());
    expect(r.message).toMatch(/TORUS_ERR_FLEX_FS_MISSING: volume pad was formatted \(ext4/);
    expect(node.count('mkfs')).toBe(0);
  });

  it('does not format when the mark cannot be read', async () => {
    marks.failGet = new Error('etcd at 10.3.0.100:2379 is unavailable');
    const r = await call('mount', POD_A, kubeletJson());
    expect(r.status).toBe('Failure');
    expect(node.count('mkfs')).toBe(0);
    expect(attacher.attachedCount).toBe(0);
  });

  it('refuses data blkid cannot name', async () => {
    attacher.disks.get('pad')!.ambiguous = true;
    const r = await call('mount', POD_A, kubeletJson());
    expect(r.message).toMatch(/TORUS_ERR_FLEX_PROBE_AMBIGUOUS/);
    expect(node.count('mkfs')).toBe(0);
  });

  it('defaults fsType to ext4 and makes xfs when asked', async () => {
    expect(await call('mount', POD_A, kubeletJson({ 'kubernetes.io/fsType': '' }))).toEqual({ status: 'Success' });
    expect(node.log).toContain('mkfs /dev/nbd0 ext4');
    attacher.disks.set('db', disk());
    expect(await call('mount', POD_B, kubeletJson({ volume: 'db', 'kubernetes.io/fsType': 'xfs' }))).toEqual({ status: 'Success' });
    expect(node.log).toContain('mkfs /dev/nbd1 xfs');
    expect((await call('mount', '/x/y', kubeletJson({ 'kubernetes.io/fsType': 'btrfs' }))).message).toMatch(/TORUS_ERR_FLEX_FS_TYPE_UNSUPPORTED/);
  });

  it('adds discard with trim: "true"', async () => {
    await call('mount', POD_A, kubeletJson({ trim: 'true' }));
    expect(node.mounts.find((m) => m.source === '/dev/nbd0' && m.mountPoint.startsWith(STAGING_ROOT))!.options).toEqual(['noatime', 'discard']);
  });

  it('mounts ro on a read-only device with ro,noload (no journal replay)', async () => {
    attacher.disks.set('pad', disk(64 * 1024 * 1024, 'ext4'));
    const r = await call('mount', POD_A, kubeletJson({ 'kubernetes.io/readwrite': 'ro' }));
    expect(r).toEqual({ status: 'Success' });
    expect(attacher.calls[0]!.opts).toMatchObject({ readOnly: true });
    expect(node.mounts.find((m) => m.source === '/dev/nbd0' && m.mountPoint.startsWith(STAGING_ROOT))!.options).toEqual(['noatime', 'ro', 'noload']);
    expect(node.log).toContain(`bind ${node.mounts[0]!.mountPoint} ${POD_A} ro`);
  });

  it('refuses a read-only mount of a volume with no filesystem yet', async () => {
    const r = await call('mount', POD_A, kubeletJson({ 'kubernetes.io/readwrite': 'ro' }));
    expect(r.message).toMatch(/TORUS_ERR_FLEX_NOT_FORMATTED_RO/);
    expect(node.count('mkfs')).toBe(0);
  });

  it('passes the attacher refusal of a second read-write writer through', async () => {
    attacher.heldElsewhere.add('pad');
    const r = await call('mount', POD_A, kubeletJson());
    expect(r).toEqual({ status: 'Failure', message: 'TORUS_ERR_VOLUME_IN_USE: volume "pad" is open for writing by torusd 1234 on node-b (pid 7)' });
    expect(node.mounts).toEqual([]);
  });

  it('refuses to mount over a directory that is already something else', async () => {
    node.mounts.push({ dev: '8:1', root: '/', mountPoint: POD_A, options: ['rw'], fsType: 'ext4', source: '/dev/sda1', superOptions: ['rw'] });
    const r = await call('mount', POD_A, kubeletJson());
    expect(r.message).toMatch(/TORUS_ERR_FLEX_MOUNT_FAILED: .* is already a mount point \(\/dev\/sda1, ext4\)/);
    expect(attacher.calls).toEqual([]);
  });

  it('undoes the attach when mkfs fails', async () => {
    node.mkfsFails = true;
    const r = await call('mount', POD_A, kubeletJson());
    expect(r.message).toMatch(/mkfs.ext4 exited 1/);
    expect(attacher.calls.map((c) => c.op)).toEqual(['attach', 'detach']);
    expect((await state.load()).size).toBe(0);
    expect(await marks.get('pad', ['10.3.0.100:2379'])).toBeNull();
  });
});

describe('two pods on one node', () => {
  it('share one device through reference-counted bind mounts', async () => {
    await call('mount', POD_A, kubeletJson());
    expect(await call('mount', POD_B, kubeletJson({ 'kubernetes.io/pod.uid': 'bbbb' }))).toEqual({ status: 'Success' });
    expect(attacher.calls.filter((c) => c.op === 'attach')).toHaveLength(1);
    expect(mountsAt(POD_B)[0]!.dev).toBe(mountsAt(POD_A)[0]!.dev);

    expect(await call('unmount', POD_A)).toEqual({ status: 'Success' });
    expect(mountsAt(POD_A)).toEqual([]);
    expect(attacher.attachedCount).toBe(1);
    expect(mountsAt(POD_B)).toHaveLength(1);

    expect(await call('unmount', POD_B)).toEqual({ status: 'Success' });
    expect(node.mounts).toEqual([]);
    // The volume's own mount goes, then a flush, then the detach.
    const tail = node.log.slice(-3);
    expect(tail[0]).toBe(`umount ${POD_B}`);
    expect(tail[1]).toMatch(/^umount \/var\/lib\/kubelet\/plugins\/coreos.com~torus\/mounts\/pad@/);
    expect(tail[2]).toBe('flush /dev/nbd0');
    expect(attacher.calls.at(-1)).toEqual({ op: 'detach', device: '/dev/nbd0' });
    expect((await state.load()).size).toBe(0);
  });

  it('a read-only pod can join a read-write one; a read-write pod cannot join a read-only one', async () => {
    await call('mount', POD_A, kubeletJson());
    expect(await call('mount', POD_B, kubeletJson({ 'kubernetes.io/readwrite': 'ro' }))).toEqual({ status: 'Success' });
    expect(mountsAt(POD_B)[0]!.options).toEqual(['ro']);
    await call('unmount', POD_A);
    await call('unmount', POD_B);

    attacher.disks.set('pad', disk(64 * 1024 * 1024, 'ext4'));
    await call('mount', POD_A, kubeletJson({ 'kubernetes.io/readwrite': 'ro' }));
    const r = await call('mount', POD_B, kubeletJson());
    expect(r.message).toMatch(/TORUS_ERR_FLEX_MODE_CONFLICT: volume pad is attached read-only on this node/);
  });

  it('concurrent calls are serialised: one attach for two pods', async () => {
    const [a, b] = await Promise.all([call('mount', POD_A, kubeletJson()), call('mount', POD_B, kubeletJson())]);
    expect([a.status, b.status]).toEqual(['Success', 'Success']);
    expect(attacher.calls.filter((c) => c.op === 'attach')).toHaveLength(1);
    expect(node.count('mkfs')).toBe(1);
  });
});

describe('unmount', () => {
  it('is idempotent: a second unmount succeeds and does nothing', async () => {
    await call('mount', POD_A, kubeletJson());
    expect(await call('unmount', POD_A)).toEqual({ status: 'Success' });
    const before = [node.log.length, attacher.calls.length];
    expect(await call('unmount', POD_A)).toEqual({ status: 'Success' });
    expect([node.log.length, attacher.calls.length]).toEqual(before);
  });

  it('finishes a teardown that failed half way on the retry', async () => {
    await call('mount', POD_A, kubeletJson());
    const detach = attacher.detach.bind(attacher);
    let fail = true;
    attacher.detach = async (d) => {
      if (fail) throw new Error('netlink: device busy');
      return detach(d);
    };
    const r = await call('unmount', POD_A);
    expect(r.message).toMatch(/TORUS_ERR_FLEX_MOUNT_FAILED: detaching \/dev\/nbd0 \(volume pad\) failed: netlink: device busy/);
    expect((await state.load()).size).toBe(1);
    fail = false;
    expect(await call('unmount', POD_A)).toEqual({ status: 'Success' });
    expect(attacher.attachedCount).toBe(0);
    expect((await state.load()).size).toBe(0);
  });

  it('a mount after a half-finished teardown releases the stale attachment first', async () => {
    await call('mount', POD_A, kubeletJson());
    // As if the volume's mount vanished (container restart without propagation, reboot).
    node.mounts = [];
    expect(await call('mount', POD_B, kubeletJson())).toEqual({ status: 'Success' });
    expect(attacher.calls.map((c) => c.op)).toEqual(['attach', 'detach', 'attach']);
    expect(node.count('mkfs')).toBe(1);
  });

  it('refuses to unmount a mount torus did not make', async () => {
    node.mounts.push({ dev: '8:1', root: '/', mountPoint: POD_A, options: ['rw'], fsType: 'ext4', source: '/dev/sda1', superOptions: ['rw'] });
    expect((await call('unmount', POD_A)).message).toMatch(/TORUS_ERR_FLEX_NOT_TORUS_MOUNT/);
    expect(node.mounts).toHaveLength(1);
  });
});

describe('options.etcd: the volume must be in the node torusd\'s own cluster', () => {
  it('attaches with the local torusd when the named etcd holds the same cluster id, refuses another cluster', async () => {
    const { ownClusterOnly } = await import('../../src/k8s/flex/cluster-check.js');
    const seen: unknown[] = [];
    const inner = { attach: async (_v: string, o: unknown) => (seen.push(o), { device: '/dev/nbd0' }), detach: async () => undefined };
    const ids: Record<string, string> = { '10.3.0.100:2379': 'c-1', 'other:2379': 'c-2' };
    const a = ownClusterOnly(inner, { localClusterId: 'c-1', clusterIdAt: async (e) => ids[e.join(',')]! });
    expect(await a.attach('pad', { readOnly: false, etcd: ['10.3.0.100:2379'] })).toEqual({ device: '/dev/nbd0' });
    expect(await a.attach('pad', { readOnly: true, etcd: null })).toEqual({ device: '/dev/nbd0' });
    expect(seen).toEqual([{ readOnly: false, etcd: null }, { readOnly: true, etcd: null }]);
    await expect(a.attach('pad', { readOnly: false, etcd: ['other:2379'] })).rejects.toThrow(/TORUS_ERR_FLEX_FOREIGN_CLUSTER|holds cluster c-2, but this node's torusd belongs to cluster c-1/);
    expect(seen).toHaveLength(2);
  });
});

describe('kernelAttacher: the adapter over torusd\'s attach manager', () => {
  it('attaches with the read-only flag, and treats "not attached" as detached', async () => {
    const { kernelAttacher } = await import('../../src/k8s/flex/attacher.js');
    const { TorusError } = await import('../../src/errors/torus-error.js');
    const calls: unknown[] = [];
    const a = kernelAttacher({
      attach: async (req) => (calls.push(req), { device: '/dev/nbd3', index: 3 }),
      detach: async (device) => {
        calls.push(device);
        if (device === '/dev/nbd9') throw Object.assign(new Error('/dev/nbd9 is not attached by this torusd'), { code: 'TORUS_ERR_ATTACH_NOT_FOUND' });
        if (device === '/dev/nbd8') throw new TorusError('TORUS_ERR_ASSERTION', 'netlink refused');
        return { detached: true };
      },
    });
    expect(await a.attach('pad', { readOnly: true, etcd: null })).toEqual({ device: '/dev/nbd3' });
    await a.detach('/dev/nbd3');
    await a.detach('/dev/nbd9');
    await expect(a.detach('/dev/nbd8')).rejects.toThrow(/netlink refused/);
    expect(calls).toEqual([{ volume: 'pad', readOnly: true }, '/dev/nbd3', '/dev/nbd9', '/dev/nbd8']);
  });
});

describe('after a node reboot', () => {
  it('unmount of a stale record never detaches a device that now carries another mount', async () => {
    await call('mount', POD_A, kubeletJson());
    // Reboot: every mount is gone, and nbd0 now serves something else.
    node.mounts = [{ dev: '43:9', root: '/', mountPoint: '/mnt/other', options: ['rw'], fsType: 'ext4', source: '/dev/nbd0', superOptions: ['rw'] }];
    expect(await call('unmount', POD_A)).toEqual({ status: 'Success' });
    expect(attacher.calls.map((c) => c.op)).toEqual(['attach']);
    expect((await state.load()).size).toBe(0);
    expect(node.mounts).toHaveLength(1);
  });
});
