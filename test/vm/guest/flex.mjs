// The FlexVolume driver run exactly as kubelet runs it, INSIDE the test VM
// (test/vm/flex.sh boots it), where Debian's kernel has the nbd driver: the
// static driver native/build/flex/torus with `init`, `mount <dir> <json>`
// (with the options kubelet adds) and `unmount <dir>`, against two real
// torusds with --flex-socket, whose kernel attach gives real /dev/nbdN.
// Checks the JSON, the exit codes, the mounted filesystem, the refused
// second read-write mount, a ro mount, and a read fault while mounting.
// Plain JS, like scenarios.mjs: ends with "N passed, N failed".
//
// Topology: node B stores every block (ring = B, replication 1); node A and
// node B each run the FlexVolume service, as two Kubernetes nodes would.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DIST = path.join(ROOT, 'dist');
const { headerBytes } = await import(path.join(DIST, 'src/store/block-file.js'));
const DRIVER = path.join(ROOT, 'native/build/flex/torus');
const WORK = '/tmp/torus-vm-flex';
const ETCD = '127.0.0.1:2379';
const MiB = 1024 * 1024;

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
let passed = 0;
let failed = 0;

function run(cmd, args, { timeoutMs = 300_000, allowFail = false, env } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8', env: env ?? process.env }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      if (code !== 0 && !allowFail) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr || stdout || err?.message}`));
      else resolve({ code, stdout, stderr });
    });
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** A line this often while waiting: the harness (run-in-vm.sh) takes a silent guest for a hung one. */
const HEARTBEAT_MS = 60_000;
async function waitFor(what, probe, timeoutMs, intervalMs = 250) {
  const started = Date.now();
  const deadline = started + timeoutMs;
  let beat = started + HEARTBEAT_MS;
  for (;;) {
    if (Date.now() >= beat) {
      beat += HEARTBEAT_MS;
      log(`  still waiting for ${what} (${Math.round((Date.now() - started) / 1000)} s of ${timeoutMs / 1000} s)`);
    }
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}
async function check(name, fn) {
  const started = Date.now();
  log(`>>> ${name}`);
  try {
    await fn();
    passed++;
    log(`PASS ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (err) {
    failed++;
    log(`FAIL ${name}: ${err.stack ?? err}`);
  }
}

/** A node: torusd with its FlexVolume socket, and the driver pointed at it. */
class Node {
  constructor(name, extra) {
    this.name = name;
    this.dir = path.join(WORK, name);
    this.socket = path.join(WORK, `${name}-run/flex.sock`);
    this.stateDir = path.join(WORK, `${name}-flex`);
    this.logFile = path.join(WORK, `${name}.log`);
    this.extra = extra;
  }
  async start() {
    const out = openSync(this.logFile, 'a');
    this.child = spawn(
      process.execPath,
      [path.join(DIST, 'cmd/torusd.js'), '-C', ETCD, '--data-dir', this.dir, '--size', '1GiB', '--port', '0', '--flex-socket', this.socket, '--flex-state-dir', this.stateDir, ...this.extra],
      { stdio: ['ignore', out, out] },
    );
    await waitFor(`torusd ${this.name} ready`, async () => {
      if (this.child.exitCode !== null) throw new Error(`torusd ${this.name} exited`);
      return readFileSync(this.logFile, 'utf8').includes('"msg":"torusd ready"');
    }, 180_000);
  }
  /** The driver, as kubelet runs it: argv, an environment that names only the socket. */
  async driver(...args) {
    const r = await run(DRIVER, args, { allowFail: true, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', TORUS_FLEX_SOCKET: this.socket } });
    assert(r.stderr === '', `the driver wrote to stderr: ${JSON.stringify(r.stderr)}`);
    assert(/^\{[^\n]*\}\n$/.test(r.stdout), `the driver's stdout is not one JSON line: ${JSON.stringify(r.stdout)}`);
    const json = JSON.parse(r.stdout);
    assert(r.code === (json.status === 'Success' ? 0 : 1), `exit code ${r.code} with status ${json.status}`);
    return { code: r.code, json };
  }
  tail() {
    return readFileSync(this.logFile, 'utf8').split('\n').filter((l) => !l.includes('"level":30')).slice(-30).join('\n');
  }
}

/** What kubelet passes for a pod volume {driver: coreos.com/torus, fsType: ext4, options: {volume}}. */
function kubeletJson(volume, podUid, extra = {}) {
  return JSON.stringify({
    'kubernetes.io/fsType': 'ext4',
    'kubernetes.io/readwrite': 'rw',
    'kubernetes.io/pvOrVolumeName': 'data',
    'kubernetes.io/pod.name': `pod-${podUid}`,
    'kubernetes.io/pod.namespace': 'default',
    'kubernetes.io/pod.uid': podUid,
    'kubernetes.io/serviceAccount.name': 'default',
    volume,
    etcd: ETCD,
    ...extra,
  });
}
const podDir = (uid) => path.join(WORK, 'kubelet/pods', uid, 'volumes/coreos.com~torus/data');
function mountAt(dir) {
  const line = readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === dir);
  if (!line) return null;
  const [source, , fstype, options] = line.split(' ');
  return { source, fstype, options: options.split(',') };
}
const nbdMounts = () => readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => l.startsWith('/dev/nbd'));
function mkdirPod(uid) {
  // kubelet makes the directory before it calls mount.
  mkdirSync(podDir(uid), { recursive: true });
  return podDir(uid);
}

// ------------------------------------------------------------ setup

rmSync(WORK, { recursive: true, force: true });
mkdirSync(WORK, { recursive: true });
log(`kernel ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}, node ${process.version}, driver ${DRIVER} (${statSync(DRIVER).size} bytes)`);
await run('modprobe', ['nbd'], { allowFail: true });
const etcd = spawn('etcd', ['--name', 'vm', '--data-dir', path.join(WORK, 'etcd'), '--listen-client-urls', `http://${ETCD}`, '--advertise-client-urls', `http://${ETCD}`, '--listen-peer-urls', 'http://127.0.0.1:2380', '--log-level', 'error'], { stdio: 'ignore' });
await waitFor('etcd', async () => (await fetch(`http://${ETCD}/health`)).ok, 60_000);
const torusctl = (...args) => run(process.execPath, [path.join(DIST, 'cmd/torusctl.js'), '-C', ETCD, ...args]);
await torusctl('init', '--replication', '1');
await torusctl('volume', 'create-block', 'pad', '64MiB');
await torusctl('volume', 'create-block', 'faulty', '64MiB');
log('cluster initialised, volumes pad and faulty created (torusctl)');
const B = new Node('b', ['--peer-address', '127.0.0.1:40001', '--nbd-address', '127.0.0.1:10810', '--auto-join']);
const A = new Node('a', ['--peer-address', '127.0.0.1:40000', '--nbd-address', '127.0.0.1:10809']);
await B.start();
log('torusd B ready');
await A.start();
log('torusd A ready');

// ------------------------------------------------------------ checks

await check('init answers attach: false', async () => {
  const r = await A.driver('init');
  assert(r.code === 0 && JSON.stringify(r.json) === '{"status":"Success","capabilities":{"attach":false}}', JSON.stringify(r));
  const ns = await A.driver('getvolumename', kubeletJson('pad', 'x'));
  assert(ns.json.status === 'Not supported' && ns.code === 1, JSON.stringify(ns));
});

await check('mount: a fresh volume gets ext4 on /dev/nbdN, mounted noatime; a retry and a second pod share the device', async () => {
  const dir = mkdirPod('p1');
  const r = await A.driver('mount', dir, kubeletJson('pad', 'p1'));
  assert(r.code === 0 && r.json.status === 'Success', JSON.stringify(r.json));
  const m = mountAt(dir);
  assert(m && /^\/dev\/nbd\d+$/.test(m.source) && m.fstype === 'ext4', `mounted at ${dir}: ${JSON.stringify(m)}`);
  const staging = nbdMounts().find((l) => l.includes(`${A.stateDir}/mounts/`));
  assert(staging && staging.split(' ')[3].split(',').includes('noatime'), `staging mount ${staging}`);
  const probe = await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', m.source]);
  assert(probe.stdout.trim() === 'ext4', `blkid says ${probe.stdout}`);
  const mark = await run('etcdctl', ['--endpoints', ETCD, 'get', '--prefix', '/torus/flex/formatted/'], { env: { ...process.env, ETCDCTL_API: '3' } });
  assert(/"fsType":"ext4"/.test(mark.stdout), `no format mark in etcd: ${mark.stdout}`);
  writeFileSync(path.join(dir, 'hello.txt'), 'written by pod p1\n');
  await run('sync', []);
  const again = await A.driver('mount', dir, kubeletJson('pad', 'p1'));
  assert(again.code === 0, `retried mount: ${JSON.stringify(again.json)}`);
  const dir2 = mkdirPod('p2');
  const second = await A.driver('mount', dir2, kubeletJson('pad', 'p2'));
  assert(second.code === 0, JSON.stringify(second.json));
  assert(readFileSync(path.join(dir2, 'hello.txt'), 'utf8') === 'written by pod p1\n', 'the second pod does not see the file');
  const devices = new Set(nbdMounts().map((l) => l.split(' ')[0]));
  assert(devices.size === 1, `expected one nbd device for two pods, got ${[...devices].join(', ')}`);
});

await check('another node: a read-write mount is refused while node A writes; a ro mount works (read-only device, ro,noload)', async () => {
  const dir = mkdirPod('remote-rw');
  const r = await B.driver('mount', dir, kubeletJson('pad', 'remote-rw'));
  assert(r.code === 1 && /^TORUS_ERR_VOLUME_IN_USE: /.test(r.json.message), `second rw mount: ${JSON.stringify(r.json)}`);
  assert(mountAt(dir) === null, 'the refused mount left a mount behind');
  const ro = mkdirPod('remote-ro');
  const m = await B.driver('mount', ro, kubeletJson('pad', 'remote-ro', { 'kubernetes.io/readwrite': 'ro' }));
  assert(m.code === 0, `ro mount: ${JSON.stringify(m.json)}`);
  const mo = mountAt(ro);
  assert(mo && mo.options.includes('ro'), `ro mount options ${JSON.stringify(mo)}`);
  const staging = nbdMounts().find((l) => l.includes(`${B.stateDir}/mounts/`));
  const opts = staging.split(' ')[3].split(',');
  assert(opts.includes('ro') && opts.includes('noatime'), `node B staging mount: ${staging}`);
  const ro1 = await run('blockdev', ['--getro', staging.split(' ')[0]]);
  assert(ro1.stdout.trim() === '1', `the ro device is not read-only: ${ro1.stdout}`);
  assert(readFileSync(path.join(ro, 'hello.txt'), 'utf8') === 'written by pod p1\n', 'node B does not read the file');
  let refused = null;
  try {
    writeFileSync(path.join(ro, 'x'), 'x');
  } catch (err) {
    refused = err.code;
  }
  assert(refused === 'EROFS', `a write on the ro mount gave ${refused}`);
  const u = await B.driver('unmount', ro);
  assert(u.code === 0 && mountAt(ro) === null, `ro unmount ${JSON.stringify(u.json)}`);
});

await check('unmount: the device stays for the other pod, then is unmounted, flushed and detached; repeated unmounts succeed', async () => {
  const u1 = await A.driver('unmount', podDir('p1'));
  assert(u1.code === 0 && mountAt(podDir('p1')) === null && mountAt(podDir('p2')) !== null, `first unmount ${JSON.stringify(u1.json)}`);
  const u2 = await A.driver('unmount', podDir('p2'));
  assert(u2.code === 0 && nbdMounts().length === 0, `second unmount ${JSON.stringify(u2.json)}; nbd mounts: ${nbdMounts().join('; ')}`);
  const list = JSON.parse(readFileSync(path.join(A.dir, 'attachments.json'), 'utf8'));
  assert(JSON.stringify(list).indexOf('"pad"') < 0, `node A still records an attachment of pad: ${JSON.stringify(list)}`);
  const u3 = await A.driver('unmount', podDir('p2'));
  assert(u3.code === 0, `repeated unmount ${JSON.stringify(u3.json)}`);
  // Node B can now take it read-write, and finds the file: no mkfs ran again.
  const dir = mkdirPod('moved');
  const m = await B.driver('mount', dir, kubeletJson('pad', 'moved'));
  assert(m.code === 0 && readFileSync(path.join(dir, 'hello.txt'), 'utf8') === 'written by pod p1\n', `mount on node B: ${JSON.stringify(m.json)}`);
  assert((await B.driver('unmount', dir)).code === 0, 'unmount on node B');
});

await check('a different fsType is refused and changes nothing', async () => {
  const dir = mkdirPod('xfs');
  const r = await A.driver('mount', dir, kubeletJson('pad', 'xfs', { 'kubernetes.io/fsType': 'xfs' }));
  assert(r.code === 1 && /^TORUS_ERR_FLEX_FS_MISMATCH: volume pad holds a ext4 filesystem/.test(r.json.message), JSON.stringify(r.json));
  assert(nbdMounts().length === 0, 'left a mount behind');
});

await check('a read fault while mounting fails the mount and leaves the data alone (no mkfs)', async () => {
  // The volume reads as zeroes, exactly like a new one, but its first block
  // fails its checksum on node B (the only copy): every read of it is EIO.
  const dev = (await run(process.execPath, [path.join(DIST, 'cmd/torusblk.js'), 'nbd', '--background', '--data-dir', A.dir, 'faulty'])).stdout.match(/\/dev\/nbd\d+/)[0];
  await run('dd', ['if=/dev/zero', `of=${dev}`, 'bs=1M', 'count=1', 'oflag=direct']);
  await run('dd', ['if=/dev/zero', `of=${dev}`, 'bs=1M', `seek=${64 - 1}`, 'count=1', 'oflag=direct']);
  await run(process.execPath, [path.join(DIST, 'cmd/torusblk.js'), 'nbd', '--data-dir', A.dir, '-d', dev]);
  const id = JSON.parse((await torusctl('-o', 'json', 'volume', 'list')).stdout).volumes.find((v) => v.name === 'faulty')?.id;
  assert(Number.isInteger(id), 'no id for volume faulty');
  const blocks = path.join(B.dir, 'store/blocks', id.toString(16));
  const files = [];
  const walk = (d) => readdirSync(d, { withFileTypes: true }).forEach((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : files.push(path.join(d, e.name))));
  walk(blocks);
  assert(files.length >= 2, `expected block files under ${blocks}, found ${files.length}`);
  // Corrupt a data byte of block 0 (past its header page): its CRC no longer matches.
  const first = files.find((f) => path.basename(f) === '0') ?? files.sort()[0];
  const buf = readFileSync(first);
  buf[buf.length - 1] ^= 0xff;
  writeFileSync(first, buf);
  // The data of each block file, past its header: the header (CRC table,
  // version) reaches the file at node B's store checkpoints, every 60 s, so
  // it may be rewritten in this window for the writes above without anything
  // writing to the volume.
  const dataOf = (f) => {
    const b = readFileSync(f);
    for (let bs = 4096; bs <= 64 * MiB; bs *= 2) if (headerBytes(bs) + bs === b.length) return b.subarray(headerBytes(bs));
    throw new Error(`${f} (${b.length} bytes) is not a data block file`);
  };
  const hashes = () => files.map((f) => createHash('sha256').update(dataOf(f)).digest('hex')).join(',');
  const before = hashes();
  const dir = mkdirPod('fault');
  const r = await A.driver('mount', dir, kubeletJson('faulty', 'fault'));
  assert(r.code === 1 && /^TORUS_ERR_FLEX_DEVICE_READ: /.test(r.json.message), `mount under a read fault: ${JSON.stringify(r.json)}`);
  assert(mountAt(dir) === null && nbdMounts().length === 0, 'left a mount behind');
  assert(hashes() === before, 'the volume\'s blocks changed: something wrote to it');
  const marks = await run('etcdctl', ['--endpoints', ETCD, 'get', '--prefix', '/torus/flex/formatted/', '--keys-only'], { env: { ...process.env, ETCDCTL_API: '3' } });
  assert(marks.stdout.trim().split('\n').filter(Boolean).length === 1, `a format mark was written for the faulty volume: ${marks.stdout}`);
  log(`  ${r.json.message}`);
});

if (failed > 0) {
  for (const n of [A, B]) console.log(`---- torusd ${n.name} log tail\n${n.tail()}`);
  console.log((await run('dmesg', [], { allowFail: true })).stdout.split('\n').slice(-30).join('\n'));
}
for (const n of [A, B]) n.child?.kill('SIGKILL');
etcd.kill('SIGKILL');
console.log(`vm flex: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
