// The CSI driver on a real kernel, INSIDE the test VM (test/vm/csi.sh boots
// it): two "nodes", each a torusd with kernel attach and a `torusblk csi`
// plugin, called over gRPC as kubelet calls them (NodeStage, NodePublish,
// NodeUnpublish, NodeUnstage) with kubelet's kind of paths. Checks ext4 made
// and mounted, a file moving from node A to node B, raw block devices, the
// write lock between nodes, shared readers, and node death: once A's lease
// has expired B stages the volume, and A's later writes are refused.
// Plain JS, like scenarios.mjs: ends with "N passed, N failed".
//
// Topology: the ring holds node B only (replication 1): node A keeps no
// blocks, so freezing A loses nothing acknowledged and B can take over.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DIST = path.join(ROOT, 'dist');
const require = createRequire(path.join(ROOT, 'package.json'));
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { AttachClient } = await import(path.join(DIST, 'src/attach/api-client.js'));

const WORK = '/tmp/torus-vm-csi';
const ETCD = '127.0.0.1:2379';
/** Short, so that node death is over quickly; long enough for an emulated torusd to keep its lease alive. */
const LEASE_TTL = Number(process.env.TORUS_VM_LEASE_TTL ?? 15);
const MiB = 1024 * 1024;
const only = process.env.TORUS_VM_ONLY ? new Set(process.env.TORUS_VM_ONLY.split(',')) : null;

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
let passed = 0;
let failed = 0;
const timings = {};

function run(cmd, args, { timeoutMs = 120_000, allowFail = false } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      if (code !== 0 && !allowFail) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr || stdout || err?.message}`));
      else resolve({ code, stdout, stderr });
    });
  });
}
const sh = (script, opts) => run('bash', ['-c', script], opts);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** A line this often while waiting: the harness (run-in-vm.sh) takes a silent guest for a hung one. */
const HEARTBEAT_MS = 60_000;
async function waitFor(what, probe, timeoutMs, intervalMs = 250) {
  const started = Date.now();
  const deadline = started + timeoutMs;
  let beat = started + HEARTBEAT_MS;
  let last;
  for (;;) {
    if (Date.now() >= beat) {
      beat += HEARTBEAT_MS;
      log(`  still waiting for ${what} (${Math.round((Date.now() - started) / 1000)} s of ${timeoutMs / 1000} s)`);
    }
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(intervalMs);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}
async function check(name, fn) {
  if (only && !only.has(name.split(':')[0])) return;
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

// ------------------------------------------------------------ the CSI client

const def = protoLoader.loadSync(path.join(ROOT, 'src/k8s/csi/csi.proto'), { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const csiPkg = grpc.loadPackageDefinition(def).csi.v1;

function csiClient(socket) {
  const wrap = (Client) => {
    const c = new Client(`unix://${socket}`, grpc.credentials.createInsecure());
    return new Proxy({}, {
      get: (_t, rpc) => (req) =>
        new Promise((resolve, reject) =>
          c[rpc](req, { deadline: Date.now() + 300_000 }, (err, res) => (err ? reject(Object.assign(new Error(`${String(rpc)}: ${grpc.status[err.code]}: ${err.details}`), { status: grpc.status[err.code], details: err.details })) : resolve(res))),
        ),
    });
  };
  return { identity: wrap(csiPkg.Identity), controller: wrap(csiPkg.Controller), node: wrap(csiPkg.Node) };
}
async function statusOf(p) {
  try {
    await p;
    return { status: 'OK', details: '' };
  } catch (err) {
    if (!err.status) throw err;
    return { status: err.status, details: err.details };
  }
}
const mountCap = (mode = 'SINGLE_NODE_WRITER') => ({ mount: { fs_type: 'ext4', mount_flags: [] }, access_mode: { mode } });
const blockCap = (mode = 'SINGLE_NODE_WRITER') => ({ block: {}, access_mode: { mode } });

// ------------------------------------------------------------ nodes

/** A node: torusd (kernel attach) and its CSI plugin, as the DaemonSet runs them. */
class Node {
  constructor(name, torusdArgs) {
    this.name = name;
    this.dir = path.join(WORK, name);
    this.kubelet = path.join(WORK, `${name}-kubelet`);
    this.socket = path.join(WORK, `${name}-csi/csi.sock`);
    this.torusdArgs = torusdArgs;
  }
  /** Starts torusd and the plugin together (the emulated CPUs are the bottleneck: two processes use both) and waits until the plugin's Probe says ready. */
  async start() {
    const started = Date.now();
    const out = openSync(path.join(WORK, `${this.name}-torusd.log`), 'a');
    this.torusd = spawn(process.execPath, [path.join(DIST, 'cmd/torusd.js'), '-C', ETCD, '--data-dir', this.dir, '--size', '1GiB', '--port', '0', ...this.torusdArgs], {
      stdio: ['ignore', out, out],
      env: { ...process.env, TORUS_LEASE_TTL_SECONDS: String(LEASE_TTL), TORUS_NODE_NAME: this.name },
    });
    const csiOut = openSync(path.join(WORK, `${this.name}-csi.log`), 'a');
    this.csi = spawn(process.execPath, [path.join(DIST, 'cmd/torusblk.js'), '-C', ETCD, 'csi', '--endpoint', `unix://${this.socket}`, '--node-id', this.name, '--data-dir', this.dir], { stdio: ['ignore', csiOut, csiOut] });
    await waitFor(`torusd ${this.name} ready`, async () => {
      if (this.torusd.exitCode !== null) throw new Error(`torusd ${this.name} exited`);
      return readFileSync(path.join(WORK, `${this.name}-torusd.log`), 'utf8').includes('"msg":"torusd ready"');
    }, 300_000);
    await waitFor(`csi ${this.name} ready`, async () => {
      if (this.csi.exitCode !== null) throw new Error(`csi ${this.name} exited`);
      return readFileSync(path.join(WORK, `${this.name}-csi.log`), 'utf8').includes('"msg":"torusblk csi ready"');
    }, 300_000);
    this.rpc = csiClient(this.socket);
    // As kubelet and the provisioner would: use the plugin once it says it is ready.
    await waitFor(`csi ${this.name} Probe ready`, async () => (await this.rpc.identity.Probe({})).ready?.value === true, 120_000, 500);
    log(`node ${this.name}: torusd and CSI plugin ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  staging(pv) {
    return path.join(this.kubelet, `plugins/kubernetes.io/csi/torus.csi.coreos.com/${pv}/globalmount`);
  }
  target(pv, pod) {
    return path.join(this.kubelet, `pods/${pod}/volumes/kubernetes.io~csi/${pv}/mount`);
  }
  blockTarget(pv, pod) {
    return path.join(this.kubelet, `plugins/kubernetes.io/csi/volumeDevices/publish/${pv}/${pod}`);
  }
  async stage(volumeId, pv, cap = mountCap()) {
    // kubelet makes the staging directory's parent; the plugin makes the rest.
    mkdirSync(path.dirname(this.staging(pv)), { recursive: true });
    return this.rpc.node.NodeStageVolume({ volume_id: volumeId, staging_target_path: this.staging(pv), volume_capability: cap, volume_context: {} });
  }
  async publish(volumeId, pv, pod, cap = mountCap(), readonly = false) {
    const target = cap.block ? this.blockTarget(pv, pod) : this.target(pv, pod);
    mkdirSync(path.dirname(target), { recursive: true });
    await this.rpc.node.NodePublishVolume({ volume_id: volumeId, staging_target_path: this.staging(pv), target_path: target, volume_capability: cap, readonly });
    return target;
  }
  async unpublish(volumeId, target) {
    await this.rpc.node.NodeUnpublishVolume({ volume_id: volumeId, target_path: target });
  }
  async unstage(volumeId, pv) {
    await this.rpc.node.NodeUnstageVolume({ volume_id: volumeId, staging_target_path: this.staging(pv) });
  }
  /** torusd's attachments on this node, from its attach API. */
  async attachments() {
    return new AttachClient(path.join(this.dir, 'attach.sock')).list();
  }
  tail(which) {
    const f = path.join(WORK, `${this.name}-${which}.log`);
    return existsSync(f) ? readFileSync(f, 'utf8').split('\n').filter((l) => !l.includes('"level":30')).slice(-25).join('\n') : '';
  }
}

function mountAt(dir) {
  const line = readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === dir);
  if (!line) return null;
  const [source, , fstype, options] = line.split(' ');
  return { source, fstype, options: options.split(',') };
}
const nbdMounts = () => readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => l.startsWith('/dev/nbd'));

// ------------------------------------------------------------ setup

rmSync(WORK, { recursive: true, force: true });
mkdirSync(WORK, { recursive: true });
// V8's code cache on disk: the first process compiles torus and its
// dependencies, the next three start from the cache. Under software
// emulation compiling is most of a start.
process.env.NODE_COMPILE_CACHE = path.join(WORK, 'compile-cache');
log(`kernel ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}, node ${process.version}, lease TTL ${LEASE_TTL} s`);
await run('modprobe', ['nbd'], { allowFail: true });
const etcd = spawn('etcd', ['--name', 'vm', '--data-dir', path.join(WORK, 'etcd'), '--listen-client-urls', `http://${ETCD}`, '--advertise-client-urls', `http://${ETCD}`, '--listen-peer-urls', 'http://127.0.0.1:2380', '--log-level', 'error'], { stdio: 'ignore' });
await waitFor('etcd', async () => (await fetch(`http://${ETCD}/health`)).ok, 60_000);
const torusctl = (...args) => run(process.execPath, [path.join(DIST, 'cmd/torusctl.js'), '-C', ETCD, ...args]);
await torusctl('init', '--replication', '1');
const B = new Node('node-b', ['--peer-address', '127.0.0.1:40001', '--nbd-address', '127.0.0.1:10810', '--auto-join']);
const A = new Node('node-a', ['--peer-address', '127.0.0.1:40000', '--nbd-address', '127.0.0.1:10809']);
// B first, so that it is in the ring before anything is written; A's
// start overlaps B's wait for readiness.
const bReady = B.start();
await sleep(5_000);
await Promise.all([bReady, A.start()]);

const created = {};
async function createVolume(name, bytes) {
  const r = await A.rpc.controller.CreateVolume({ name, capacity_range: { required_bytes: bytes }, volume_capabilities: [mountCap(), blockCap()], parameters: {} });
  created[name] = r.volume.volume_id;
  return r.volume.volume_id;
}

// ------------------------------------------------------------ checks

await check('move: ext4 staged and published on node A, a file written (a read-only publish beside it refuses writes), unpublished and unstaged; staged on node B, the file is there', async () => {
  // (That a CSI volume shows in `torusctl volume list` is checked by the integration suite.)
  const id = await createVolume('pvc-move', 64 * MiB);
  await A.stage(id, 'pv-move');
  const staged = mountAt(A.staging('pv-move'));
  assert(staged && /^\/dev\/nbd\d+$/.test(staged.source) && staged.fstype === 'ext4' && staged.options.includes('noatime'), `staging mount: ${JSON.stringify(staged)}`);
  const t = await A.publish(id, 'pv-move', 'pod-1');
  const pub = mountAt(t);
  assert(pub && pub.source === staged.source && !pub.options.includes('ro'), `publish mount: ${JSON.stringify(pub)}`);
  // Repeated calls change nothing (kubelet retries).
  await A.stage(id, 'pv-move');
  await A.publish(id, 'pv-move', 'pod-1');
  writeFileSync(path.join(t, 'hello.txt'), 'written on node A\n');
  await run('sync', ['-f', path.join(t, 'hello.txt')]);
  // Read-only honoured by the kernel: a read-only publish beside the read-write one refuses writes.
  const tro = await A.publish(id, 'pv-move', 'pod-ro', mountCap(), true);
  assert(mountAt(tro)?.options.includes('ro'), `read-only publish mount: ${JSON.stringify(mountAt(tro))}`);
  assert(readFileSync(path.join(tro, 'hello.txt'), 'utf8') === 'written on node A\n', 'the read-only publish does not show the file');
  let roWrite = 'accepted';
  try {
    writeFileSync(path.join(tro, 'nope.txt'), 'x');
  } catch (err) {
    roWrite = err.code;
  }
  assert(roWrite === 'EROFS', `a write through the read-only publish: ${roWrite}`);
  await A.unpublish(id, tro);
  const stats = await A.rpc.node.NodeGetVolumeStats({ volume_id: id, volume_path: t });
  const bytes = stats.usage.find((u) => u.unit === 'BYTES');
  const inodes = stats.usage.find((u) => u.unit === 'INODES');
  assert(Number(bytes.total) > 50 * MiB && Number(bytes.used) > 0 && Number(inodes.total) > 0, `stats ${JSON.stringify(stats.usage)}`);
  await A.unpublish(id, t);
  assert(!existsSync(t), 'the publish target was not removed');
  await A.unstage(id, 'pv-move');
  assert(mountAt(A.staging('pv-move')) === null && nbdMounts().length === 0, `mounts left: ${nbdMounts().join('; ')}`);
  assert((await A.attachments()).length === 0, 'node A still has an attachment');
  await B.stage(id, 'pv-move');
  const tb = await B.publish(id, 'pv-move', 'pod-2');
  assert(readFileSync(path.join(tb, 'hello.txt'), 'utf8') === 'written on node A\n', 'node B does not read the file node A wrote');
  await B.unpublish(id, tb);
  await B.unstage(id, 'pv-move');
});

await check('lock: a second SINGLE_NODE_WRITER stage on another node is refused (FAILED_PRECONDITION naming the holder) while the first holds it', async () => {
  const id = created['pvc-move'];
  await A.stage(id, 'pv-move');
  const r = await statusOf(B.stage(id, 'pv-move'));
  assert(r.status === 'FAILED_PRECONDITION' && r.details.startsWith('TORUS_ERR_VOLUME_IN_USE') && r.details.includes('node-a'), `second writer: ${JSON.stringify(r)}`);
  const ro = await statusOf(B.stage(id, 'pv-move', mountCap('MULTI_NODE_READER_ONLY')));
  assert(ro.status === 'FAILED_PRECONDITION', `reader beside a writer: ${JSON.stringify(ro)}`);
  assert(mountAt(B.staging('pv-move')) === null && (await B.attachments()).length === 0, 'the refused stage left something behind on node B');
  const del = await statusOf(A.rpc.controller.DeleteVolume({ volume_id: id }));
  assert(del.status === 'FAILED_PRECONDITION', `delete while staged: ${JSON.stringify(del)}`);
  await A.unstage(id, 'pv-move');
});

await check('readers: MULTI_NODE_READER_ONLY stages on both nodes, read-only devices mounted ro,noload; a writer is refused until they are gone', async () => {
  const id = created['pvc-move'];
  const targets = {};
  for (const n of [A, B]) {
    await n.stage(id, 'pv-move', mountCap('MULTI_NODE_READER_ONLY'));
    const m = mountAt(n.staging('pv-move'));
    // The kernel lists ext4's noload under its other name, norecovery.
    assert(m && m.options.includes('ro') && (m.options.includes('noload') || m.options.includes('norecovery')), `${n.name} reader mount ${JSON.stringify(m)}`);
    const ro = (await run('blockdev', ['--getro', m.source])).stdout.trim();
    assert(ro === '1', `${n.name}: the reader's device is not read-only`);
    targets[n.name] = await n.publish(id, 'pv-move', `reader-${n.name}`, mountCap('MULTI_NODE_READER_ONLY'));
    assert(readFileSync(path.join(targets[n.name], 'hello.txt'), 'utf8') === 'written on node A\n', `${n.name} reads the file`);
  }
  const w = await statusOf(A.rpc.controller.DeleteVolume({ volume_id: id }));
  assert(w.status === 'FAILED_PRECONDITION', `delete while read: ${JSON.stringify(w)}`);
  for (const n of [A, B]) {
    await n.unpublish(id, targets[n.name]);
    await n.unstage(id, 'pv-move');
  }
  // Readers gone: a writer stages again.
  await B.stage(id, 'pv-move');
  await B.unstage(id, 'pv-move');
});

await check('block: a raw block volume is published as a device node; what is written through it is read back on the other node', async () => {
  const id = await createVolume('pvc-blk', 16 * MiB);
  await A.stage(id, 'pv-blk', blockCap());
  const t = await A.publish(id, 'pv-blk', 'pod-b1', blockCap());
  assert(statSync(t).isBlockDevice(), `${t} is not a block device node`);
  await run('dd', ['if=/dev/urandom', `of=${WORK}/pattern`, 'bs=1M', 'count=2']);
  await run('dd', [`if=${WORK}/pattern`, `of=${t}`, 'bs=1M', 'seek=3', 'oflag=direct', 'conv=fsync']);
  const size = (await run('blockdev', ['--getsize64', t])).stdout.trim();
  assert(size === String(16 * MiB), `device size ${size}`);
  await A.unpublish(id, t);
  assert(!existsSync(t), 'the block target file was not removed');
  await A.unstage(id, 'pv-blk');
  await B.stage(id, 'pv-blk', blockCap());
  const tb = await B.publish(id, 'pv-blk', 'pod-b2', blockCap());
  await run('dd', [`if=${tb}`, `of=${WORK}/readback`, 'bs=1M', 'skip=3', 'count=2', 'iflag=direct']);
  assert(readFileSync(`${WORK}/readback`).equals(readFileSync(`${WORK}/pattern`)), 'node B reads other bytes than node A wrote');
  await B.unpublish(id, tb);
  await B.unstage(id, 'pv-blk');
});

await check('death: node A frozen; once its lease expired node B stages the volume; node A\'s later writes are refused (fencing)', async () => {
  const id = await createVolume('pvc-death', 64 * MiB);
  await A.stage(id, 'pv-death');
  const ta = await A.publish(id, 'pv-death', 'pod-d1');
  await sh(`echo before > ${ta}/before.txt && sync -f ${ta}/before.txt`);
  // The whole node stops: torusd and its plugin (a kernel panic, a partition).
  A.torusd.kill('SIGSTOP');
  A.csi.kill('SIGSTOP');
  const frozen = Date.now();
  let refusals = 0;
  await waitFor('node B to stage the volume', async () => {
    const r = await statusOf(B.stage(id, 'pv-death'));
    if (r.status === 'OK') return true;
    assert(r.status === 'FAILED_PRECONDITION', `stage on B while A's lease lives: ${JSON.stringify(r)}`);
    refusals++;
    return false;
  }, (LEASE_TTL + 60) * 1000, 1000);
  timings.takeoverS = (Date.now() - frozen) / 1000;
  log(`  node B staged the volume ${timings.takeoverS} s after node A froze (${refusals} refusals before; lease TTL ${LEASE_TTL} s)`);
  const tb = await B.publish(id, 'pv-death', 'pod-d2');
  assert(readFileSync(path.join(tb, 'before.txt'), 'utf8') === 'before\n', 'node B lacks what node A had synced');
  await sh(`echo after > ${tb}/after.txt && sync -f ${tb}/after.txt`);
  // Node A comes back, still believing it has the volume.
  A.torusd.kill('SIGCONT');
  A.csi.kill('SIGCONT');
  const late = await run('dd', ['if=/dev/urandom', `of=${ta}/late.bin`, 'bs=64k', 'count=4', 'conv=fsync'], { allowFail: true, timeoutMs: 180_000 });
  assert(late.code !== 0, `node A's late write was acknowledged: ${late.stderr}`);
  log(`  node A's late write: exit ${late.code}: ${late.stderr.trim().split('\n')[0]}`);
  const aLog = readFileSync(path.join(WORK, 'node-a-torusd.log'), 'utf8');
  assert(/TORUS_ERR_VOLUME_LOCK_LOST|TORUS_ERR_VOLUME_FENCED|TORUS_ERR_SESSION_LOST/.test(aLog), 'node A\'s torusd does not say its lock was lost');
  // What the volume holds, read fresh on node B: B's file, not A's late one.
  await B.unpublish(id, tb);
  await B.unstage(id, 'pv-death');
  // Staged as a raw block device on B: the volume's bytes, nothing mounted.
  await B.stage(id, 'pv-death-raw', blockCap());
  const dev = (await B.attachments()).find((a) => a.volume === 'pvc-death').device;
  const fsck = await run('e2fsck', ['-fn', dev], { allowFail: true });
  const ls = await run('debugfs', ['-R', 'ls -l /', dev], { allowFail: true });
  await B.unstage(id, 'pv-death-raw');
  assert(fsck.code === 0, `e2fsck of the volume: ${fsck.stdout}${fsck.stderr}`);
  assert(/before\.txt/.test(ls.stdout) && /after\.txt/.test(ls.stdout) && !/late\.bin/.test(ls.stdout), `the volume holds: ${ls.stdout}`);
  // Node A cleans up: kubelet's unpublish and unstage succeed, and detach.
  await A.unpublish(id, ta);
  await A.unstage(id, 'pv-death');
  assert(!(await A.attachments()).some((a) => a.volume === 'pvc-death'), 'node A kept the fenced device attached');
});

if (failed > 0) {
  for (const n of [A, B]) console.log(`---- ${n.name} torusd\n${n.tail('torusd')}\n---- ${n.name} csi\n${n.tail('csi')}`);
  console.log((await run('dmesg', [], { allowFail: true })).stdout.split('\n').slice(-30).join('\n'));
}
for (const n of [A, B]) {
  n.csi?.kill('SIGKILL');
  n.torusd?.kill('SIGKILL');
}
etcd.kill('SIGKILL');
if (timings.takeoverS !== undefined) console.log(`VM_TAKEOVER_S=${timings.takeoverS}`);
console.log(`vm csi: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
