/**
 * The FlexVolume driver run exactly as kubelet runs it: `torus init`,
 * `torus mount <dir> <json>` with the options kubelet adds, `torus unmount
 * <dir>`; JSON on stdout only, the exit code, the filesystem that ends up
 * mounted.
 *
 * - The installed driver is the static C program: it answers in a chroot that
 *   holds nothing but busybox and the driver, fails cleanly there without
 *   torusd, and reaches a real torusd through the socket bind-mounted in.
 * - The mount logic runs for real (mkfs, blkid, mount, bind mounts) on a
 *   real torus volume. This host has no kernel nbd driver, so the device comes
 *   from nbdfuse + a loop device (test/helpers/loop-attacher.ts). The same
 *   calls with torusd's real kernel attach run in the VM suite
 *   (test/vm/guest/flex.mjs).
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdFormatMarks } from '../../src/k8s/mount/etcd-format-marks.js';
import { flexHandler } from '../../src/k8s/flex/driver.js';
import { FlexMounter } from '../../src/k8s/flex/mounter.js';
import { parseMountInfo } from '../../src/k8s/mount/mountinfo.js';
import { FLEX_MOUNT_CODES } from '../../src/k8s/mount/filesystem.js';
import { NodeSystem } from '../../src/k8s/mount/node-system.js';
import { FlexServer } from '../../src/k8s/flex/server.js';
import { FileStateStore } from '../../src/k8s/flex/state.js';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { driverJson, ensureFlexDriver, flexC, flexTs, isStaticElf, runCmd } from '../helpers/flex-driver.js';
import { LoopAttacher } from '../helpers/loop-attacher.js';
import { run, runOk } from '../helpers/nbd-exec.js';
import { freePort } from '../helpers/ports.js';
import { startTorusblkServe, startTorusd, torusctlOk, type TorusblkServeHandle, type TorusdHandle } from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const silent = pino({ level: 'silent' });

let etcd: EtcdHandle | undefined;
let d: TorusdHandle | undefined;
let tmp: string;
let driver: string;
/** Every mount this file made, for cleanup in reverse order. */
const madeMounts: string[] = [];

function kubeletJson(podUid: string, extra: Record<string, string> = {}): string {
  return JSON.stringify({
    'kubernetes.io/fsType': 'ext4',
    'kubernetes.io/readwrite': 'rw',
    'kubernetes.io/pvOrVolumeName': 'etherpad',
    'kubernetes.io/pod.name': `etherpad-${podUid}`,
    'kubernetes.io/pod.namespace': 'default',
    'kubernetes.io/pod.uid': podUid,
    'kubernetes.io/serviceAccount.name': 'default',
    volume: 'pad',
    ...extra,
  });
}

function mounts() {
  return parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

function mountedAt(dir: string) {
  return mounts().filter((m) => m.mountPoint === dir);
}

beforeAll(async () => {
  for (const [tool, pkg] of [
    ['busybox', 'busybox-static'],
    ['chroot', 'coreutils'],
    ['mkfs.ext4', 'e2fsprogs'],
    ['blkid', 'util-linux'],
    ['blockdev', 'util-linux'],
    ['nbdkit', 'nbdkit'],
    ['nbdfuse', 'libnbd-bin'],
    ['losetup', 'mount'],
  ] as const) {
    requireTool(tool, pkg);
  }
  ensureBuilt();
  driver = ensureFlexDriver();
  tmp = await mkdtemp(path.join(os.tmpdir(), 'torus-flex-'));
  etcd = await startEtcd();
  d = await startTorusd({ etcd: etcd.endpoint, extraArgs: ['--flex-socket', path.join(tmp, 'torusd-run/flex.sock'), '--flex-state-dir', path.join(tmp, 'torusd-state')] });
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'pad', '128MiB']);
});

afterAll(async () => {
  for (const m of madeMounts.reverse()) if (mountedAt(m).length > 0) await run('umount', ['-l', m]);
  await d?.destroy();
  await etcd?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('the installed driver: a static executable that needs nothing on the node', () => {
  it('is statically linked', () => {
    expect(isStaticElf(driver)).toBe(true);
  });

  it('answers in a chroot holding only busybox and the driver, and reaches torusd through the bind-mounted socket', async () => {
    const busybox = requireTool('busybox', 'busybox-static');
    if (!isStaticElf(busybox)) throw new Error(`${busybox} is dynamically linked: apt-get install busybox-static`);
    const root = path.join(tmp, 'chroot');
    mkdirSync(path.join(root, 'bin'), { recursive: true });
    mkdirSync(path.join(root, 'run/torus'), { recursive: true });
    copyFileSync(busybox, path.join(root, 'bin/busybox'));
    copyFileSync(driver, path.join(root, 'torus'));
    await runOk('chmod', ['0755', path.join(root, 'bin/busybox'), path.join(root, 'torus')]);

    const init = await runCmd('chroot', [root, '/torus', 'init']);
    expect(init).toEqual({ code: 0, stdout: '{"status":"Success","capabilities":{"attach":false}}\n', stderr: '' });

    const viaShell = await runCmd('chroot', [root, '/bin/busybox', 'sh', '-c', '/torus getvolumename "{}"; echo "rc=$?"']);
    expect(viaShell.stdout).toBe('{"status":"Not supported","message":"torus does not implement the FlexVolume call \\"getvolumename\\""}\nrc=1\n');

    const alone = await runCmd('chroot', [root, '/torus', 'mount', '/pods/a', kubeletJson('a')]);
    expect(alone.code).toBe(1);
    expect(alone.stderr).toBe('');
    expect(driverJson(alone)).toEqual({
      status: 'Failure',
      message: 'TORUS_ERR_FLEX_UNREACHABLE: cannot reach torusd at /run/torus/flex.sock: No such file or directory; is the torus DaemonSet running on this node?',
    });

    // torusd's socket folder, bind-mounted where the driver looks by default.
    await runOk('mount', ['--bind', path.join(tmp, 'torusd-run'), path.join(root, 'run/torus')]);
    madeMounts.push(path.join(root, 'run/torus'));
    const reached = await runCmd('chroot', [root, '/torus', 'mount', '/pods/a', kubeletJson('a')]);
    expect(reached.code).toBe(1);
    expect(reached.stderr).toBe('');
    // This host's kernel has no nbd driver: torusd's kernel attach says so,
    // which proves the call crossed the socket and reached it.
    expect(driverJson(reached).message).toMatch(/^TORUS_ERR_ATTACH_(NO_MODULE|UNAVAILABLE): /);
    const bad = await runCmd('chroot', [root, '/torus', 'mount', '/pods/a', '{"volume":']);
    expect(driverJson(bad).message).toMatch(/^TORUS_ERR_FLEX_REQUEST_INVALID: the options are not valid JSON/);
    const unmount = await runCmd('chroot', [root, '/torus', 'unmount', '/pods/a']);
    expect(unmount).toEqual({ code: 0, stdout: '{"status":"Success"}\n', stderr: '' });
    await runOk('umount', [path.join(root, 'run/torus')]);
  });

  it('torusblk flex answers exactly as the C driver does', async () => {
    const socket = path.join(tmp, 'torusd-run/flex.sock');
    for (const args of [['init'], ['attach', '{}', 'node1'], ['mount', '/pods/b', kubeletJson('b')], ['mount', '/pods/b', '[]'], ['unmount', '/pods/b'], ['unmount']]) {
      const c = await flexC(socket, args);
      const ts = await flexTs(socket, args);
      expect({ args, ...ts }).toEqual({ args, ...c });
      expect(c.stderr).toBe('');
    }
    const gone = await flexTs(path.join(tmp, 'nowhere.sock'), ['mount', '/pods/b', kubeletJson('b')]);
    expect(gone.code).toBe(1);
    expect(driverJson(gone).message).toMatch(/^TORUS_ERR_FLEX_UNREACHABLE: cannot reach torusd at .*nowhere.sock: ENOENT/);
  });
});

/** A node's FlexVolume service with the loop attacher, as torusd would run it. */
async function startNode(name: string, uri: (volume: string) => string) {
  const attacher = new LoopAttacher(uri);
  const stateDir = path.join(tmp, `${name}-state`);
  const marks = new EtcdFormatMarks({ localEtcd: [etcd!.endpoint], logger: silent });
  const mounter = new FlexMounter({ attacher, system: new NodeSystem(FLEX_MOUNT_CODES), marks, state: new FileStateStore(stateDir), stagingRoot: path.join(stateDir, 'mounts'), logger: silent });
  const socket = path.join(tmp, `${name}-run/flex.sock`);
  const server = new FlexServer({ socketPath: socket, handler: flexHandler(mounter), logger: silent });
  await server.listen();
  return {
    attacher,
    marks,
    socket,
    stagingRoot: path.join(stateDir, 'mounts'),
    call: (...args: string[]) => flexC(socket, args),
    async close() {
      await server.close();
      await attacher.detachAll();
      await marks.close();
    },
  };
}

describe('mount and unmount for real: mkfs, ext4, bind mounts, the volume lock', () => {
  let nodeA: Awaited<ReturnType<typeof startNode>>;
  const pod = (p: string) => path.join(tmp, 'kubelet/pods', p, 'volumes/coreos.com~torus/etherpad');

  beforeAll(async () => {
    nodeA = await startNode('node-a', (v) => d!.nbdUri(v));
  });
  afterAll(async () => {
    for (const p of ['a', 'b', 'c']) if (mountedAt(pod(p)).length > 0) await run('umount', [pod(p)]);
    for (const m of mounts().filter((e) => e.mountPoint.startsWith(nodeA.stagingRoot))) await run('umount', [m.mountPoint]);
    await nodeA?.close();
  });

  it('init, then mount makes ext4 on the empty volume and binds the pod dir', async () => {
    expect(driverJson(await nodeA.call('init'))).toEqual({ status: 'Success', capabilities: { attach: false } });
    const r = await nodeA.call('mount', pod('a'), kubeletJson('a'));
    expect(r).toEqual({ code: 0, stdout: '{"status":"Success"}\n', stderr: '' });
    const [m] = mountedAt(pod('a'));
    expect(m).toMatchObject({ fsType: 'ext4' });
    expect(m!.source).toMatch(/^\/dev\/loop\d+$/);
    const staging = mounts().find((e) => e.mountPoint.startsWith(nodeA.stagingRoot))!;
    expect(staging.options).toContain('noatime');
    expect(staging.dev).toBe(m!.dev);
    expect((await runOk('blkid', ['-p', '-o', 'value', '-s', 'TYPE', m!.source])).stdout.trim()).toBe('ext4');
    expect(await nodeA.marks.get('pad', null)).toMatchObject({ fsType: 'ext4' });
    await writeFile(path.join(pod('a'), 'pad.txt'), 'hello from pod a\n');
  });

  it('a retried mount is a no-op; a second pod shares the device', async () => {
    expect((await nodeA.call('mount', pod('a'), kubeletJson('a'))).code).toBe(0);
    expect((await nodeA.call('mount', pod('b'), kubeletJson('b'))).code).toBe(0);
    expect(nodeA.attacher.calls.filter((c) => c.startsWith('attach'))).toHaveLength(1);
    expect(await readFile(path.join(pod('b'), 'pad.txt'), 'utf8')).toBe('hello from pod a\n');
    expect(mountedAt(pod('b'))[0]!.dev).toBe(mountedAt(pod('a'))[0]!.dev);
  });

  it('another node cannot mount the volume read-write while this one does', async () => {
    let gateway: TorusblkServeHandle | undefined;
    let nodeB: Awaited<ReturnType<typeof startNode>> | undefined;
    try {
      gateway = await startTorusblkServe({ etcd: etcd!.endpoint });
      nodeB = await startNode('node-b', (v) => gateway!.nbdUri(v));
      const r = await nodeB.call('mount', pod('remote'), kubeletJson('remote'));
      expect(r.code).toBe(1);
      expect(r.stderr).toBe('');
      expect(driverJson(r).message).toMatch(/^TORUS_ERR_VOLUME_IN_USE: .*server policy prevents NBD_OPT_GO/);
      // The gateway refused because torusd on node A holds the volume lock.
      expect(gateway.output()).toMatch(/TORUS_ERR_VOLUME_IN_USE/);
      expect(mountedAt(pod('remote'))).toEqual([]);
    } finally {
      await nodeB?.close();
      await gateway?.stop();
    }
  });

  it('refuses another filesystem type and changes nothing', async () => {
    const r = await nodeA.call('mount', pod('c'), kubeletJson('c', { 'kubernetes.io/fsType': 'xfs' }));
    expect(driverJson(r).message).toMatch(/^TORUS_ERR_FLEX_FS_MISMATCH: volume pad is mounted on this node as ext4, not xfs/);
    expect(mountedAt(pod('c'))).toEqual([]);
  });

  it('unmount keeps the device while another pod uses it, then unmounts, flushes and detaches; repeated unmounts succeed', async () => {
    expect((await nodeA.call('unmount', pod('a'))).stdout).toBe('{"status":"Success"}\n');
    expect(mountedAt(pod('a'))).toEqual([]);
    expect(await readFile(path.join(pod('b'), 'pad.txt'), 'utf8')).toBe('hello from pod a\n');
    expect((await nodeA.call('unmount', pod('b'))).code).toBe(0);
    expect(mountedAt(pod('b'))).toEqual([]);
    expect(mounts().filter((e) => e.mountPoint.startsWith(nodeA.stagingRoot))).toEqual([]);
    expect(nodeA.attacher.calls.at(-1)).toMatch(/^detach \/dev\/loop\d+$/);
    expect(await nodeA.call('unmount', pod('b'))).toEqual({ code: 0, stdout: '{"status":"Success"}\n', stderr: '' });
  });

  it('a read-only mount: read-only device, ro,noload, the data there, writes refused', async () => {
    const r = await nodeA.call('mount', pod('c'), kubeletJson('c', { 'kubernetes.io/readwrite': 'ro' }));
    expect(r.code).toBe(0);
    expect(nodeA.attacher.calls.at(-1)).toBe('attach pad ro');
    const staging = mounts().find((e) => e.mountPoint.startsWith(nodeA.stagingRoot))!;
    expect(staging.options).toContain('ro');
    expect((await runOk('blockdev', ['--getro', staging.source])).stdout.trim()).toBe('1');
    expect(await readFile(path.join(pod('c'), 'pad.txt'), 'utf8')).toBe('hello from pod a\n');
    await expect(writeFile(path.join(pod('c'), 'new.txt'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    expect((await nodeA.call('unmount', pod('c'))).code).toBe(0);
    // No mkfs ever ran again: the file written first is still there.
    expect((await nodeA.call('mount', pod('a'), kubeletJson('a'))).code).toBe(0);
    expect(await readFile(path.join(pod('a'), 'pad.txt'), 'utf8')).toBe('hello from pod a\n');
    expect((await nodeA.call('unmount', pod('a'))).code).toBe(0);
  });
});

describe('a read fault while mounting', () => {
  it('fails the mount and leaves the data alone: no mkfs on a device that reads as zeroes but errors', async () => {
    requireTool('nbdkit', 'nbdkit');
    // All zeroes: exactly what an empty volume looks like, except that reads fail.
    const image = path.join(tmp, 'faulty.img');
    await writeFile(image, Buffer.alloc(0));
    await runOk('truncate', ['-s', `${64 * MiB}`, image]);
    const before = createHash('sha256').update(await readFile(image)).digest('hex');
    const port = await freePort();
    const nbdkit = (await import('node:child_process')).spawn(
      'nbdkit',
      ['-f', '-i', '127.0.0.1', '-p', String(port), '--filter=error', 'file', image, 'error-pread=EIO', 'error-pread-rate=100%'],
      { stdio: 'ignore' },
    );
    const node = await startNode('node-fault', () => `nbd://127.0.0.1:${port}`);
    try {
      await waitFor('nbdkit to listen', async () => (await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}`])).code === 0, 15_000);
      const dir = path.join(tmp, 'kubelet/pods/fault/volumes/coreos.com~torus/pad');
      const r = await node.call('mount', dir, kubeletJson('fault'));
      expect(r.code).toBe(1);
      expect(r.stderr).toBe('');
      expect(driverJson(r).message).toMatch(/^TORUS_ERR_FLEX_DEVICE_READ: reading \/dev\/loop\d+ \(volume pad\) failed, so it cannot be proven empty; nothing was written/);
      expect(mountedAt(dir)).toEqual([]);
      expect(node.attacher.calls.map((c) => c.split(' ')[0])).toEqual(['attach', 'detach']);
      expect(createHash('sha256').update(await readFile(image)).digest('hex')).toBe(before);
      expect(existsSync(image)).toBe(true);
    } finally {
      await node.close();
      nbdkit.kill('SIGTERM');
    }
  });
});
