// The host side of `npm run test:vm:powerloss` (test/vm/powerloss.sh runs it
// on Node 24 after install-deps). Starts etcd on loopback, creates the
// volume, then boots the VM (test/vm/harness/run-in-vm.sh) once per round on
// the same raw disk image, running test/vm/guest/powerloss.mjs inside. In a
// writing round it pulls the plug, SIGKILL to QEMU, either the moment a
// "powerloss: ack" line (a FLUSH acknowledged) arrives on the serial console,
// or at a random moment after writing began (writes in flight, unflushed).
// The next boot checks what survived; the last boot only checks and stops
// cleanly. Prints a summary and exits non-zero on any failure.
//
// With TORUS_PL_CUT=peer the power goes from one peer only: three torusd in
// the guest, the third on its own disk behind dm-flakey, and a single boot
// of test/vm/guest/peer-powerloss.mjs cuts that peer's power
// TORUS_PL_KILLS times while the others run; QEMU is never killed.
//
// Environment: TORUS_PL_FS (the data dir's file system: ext4, the default,
// with its journal and default options; xfs; or ext4-nojournal, ext4 made
// without a journal), TORUS_PL_KILLS (power losses, default 4, 6 with
// TORUS_PL_CUT=peer; in the whole-guest runs alternately
// right after a FLUSH ack and at a random moment), TORUS_PL_SEED (the data
// pattern's seed; random by default), TORUS_PL_KEEP=1 (keep the disk image
// after a passing run). Files go to test/vm/powerloss-run/<fs>/
// (gitignored): the torusd log of every boot, the console of every boot,
// summary.json.
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { fileSystem } from './guest/powerloss-filesystems.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The data dir's file system; the guest formats and checks it with the host's tools (it shares the host's root). */
const FS = process.env.TORUS_PL_FS ?? 'ext4';
const fsys = fileSystem(FS);
/** What loses its power: 'all' (the whole guest, every peer in it) or 'peer' (one of three, while the others run). */
const CUT = process.env.TORUS_PL_CUT ?? 'all';
if (CUT !== 'all' && CUT !== 'peer') throw new Error(`TORUS_PL_CUT=${CUT}: expected all or peer`);
/**
 * torusd processes in the guest: 1, or 3 with replication 2. With CUT 'all'
 * they share one disk, so one power cut takes every replica at once (a rack
 * losing power); with 'peer' the third has a disk of its own.
 */
const PEERS = Number(process.env.TORUS_PL_PEERS ?? (CUT === 'peer' ? 3 : 1));
if (PEERS !== 1 && PEERS !== 3) throw new Error(`TORUS_PL_PEERS=${process.env.TORUS_PL_PEERS}: expected 1 or 3`);
if (CUT === 'peer' && PEERS !== 3) throw new Error('TORUS_PL_CUT=peer runs three torusd (TORUS_PL_PEERS=3)');
const REPLICATION = PEERS === 1 ? 1 : 2;
const RUN = path.join(ROOT, 'test/vm/powerloss-run', CUT === 'peer' ? `${FS}-peer` : PEERS === 1 ? FS : `${FS}-r${REPLICATION}`);
const DISK = path.join(RUN, 'disk.img');
/** The cut peer's own disk (TORUS_PL_CUT=peer), as large as the other (XFS needs more than 300 MB). */
const DISK3 = path.join(RUN, 'disk3.img');
const PIDFILE = path.join(RUN, 'qemu.pid');
const STAGE_TAR = path.join(RUN, 'app.tar');
const DISK_BYTES = 512 * 1024 * 1024;
const VOLUME = 'powerloss';
const VOLUME_SIZE = '16MiB';
/** Small blocks: more block files, so the writes cross many block boundaries and dirty many files per FLUSH. */
const BLOCK_SIZE = '128KiB';
/** Power cuts: the one-peer run's six kinds once each by default (guest/peer-powerloss.mjs). */
const KILLS = Number(process.env.TORUS_PL_KILLS ?? (CUT === 'peer' ? 6 : 4));
/**
 * A replicated run's third writing round starts a fourth torusd right before
 * its writes, and cuts the power at an early FLUSH acknowledgement: in the
 * middle of the blocks' move to the new peer (guest/powerloss.mjs).
 */
const JOIN_ROUND = CUT === 'all' && PEERS > 1 && KILLS >= 3 ? 2 : -1;
const SEED = process.env.TORUS_PL_SEED !== undefined ? Number(process.env.TORUS_PL_SEED) >>> 0 : randomInt(1, 2 ** 31);
/** A random kill lands this long after writing began (ms). */
const RANDOM_KILL_MS = [300, 8000];
/** An ack kill comes at the N-th acknowledged FLUSH of the round, N in this range. */
const ACK_KILL_NTH = [1, 6];
const BOOT_TIMEOUT_S = 360;

const t0 = Date.now();
const secs = (from) => Number(((Date.now() - from) / 1000).toFixed(1));
const say = (...a) => console.log(`[host ${secs(t0)}s]`, ...a);

function requireTool(cmd, pkg) {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (existsSync(path.join(dir, cmd))) return path.join(dir, cmd);
  }
  throw new Error(`${cmd} is missing: apt-get install ${pkg}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function runOk(cmd, args) {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    c.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out}`))));
  });
}

// ------------------------------------------------------------ tools, etcd, the volume

requireTool('qemu-system-x86_64', 'qemu-system-x86');
const etcdBin = requireTool('etcd', 'etcd-server');
for (const [cmd] of [fsys.mkfs(''), fsys.fsck('')]) requireTool(cmd, fsys.package);
// The guest runs the host's dmsetup to put the cut peer's disk behind dm-flakey.
if (CUT === 'peer') requireTool('dmsetup', 'dmsetup');
if (!existsSync(path.join(ROOT, 'dist/cmd/torusd.js'))) throw new Error('dist/ is missing: npm run build');

rmSync(RUN, { recursive: true, force: true });
mkdirSync(RUN, { recursive: true });
// A sparse file: the image costs only what the guest writes.
for (const [file, bytes] of CUT === 'peer' ? [[DISK, DISK_BYTES], [DISK3, DISK_BYTES]] : [[DISK, DISK_BYTES]]) {
  closeSync(openSync(file, 'w'));
  await runOk('truncate', ['-s', String(bytes), file]);
}

// The build, packed once for the guest's tmpfs (test/vm/guest/stage.sh).
await runOk('bash', [path.join(ROOT, 'test/vm/guest/stage.sh'), '--pack', STAGE_TAR]);

const clientPort = await freePort();
const peerPort = await freePort();
const etcdUrl = `http://127.0.0.1:${clientPort}`;
const etcd = spawn(etcdBin, ['--name', 'powerloss', '--data-dir', path.join(RUN, 'etcd'), '--listen-client-urls', etcdUrl, '--advertise-client-urls', etcdUrl,
  '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-cluster', `powerloss=http://127.0.0.1:${peerPort}`,
  '--log-level', 'error', '--logger', 'zap'], { stdio: ['ignore', 'ignore', 'pipe'] });
let etcdErr = '';
etcd.stderr.on('data', (d) => (etcdErr = (etcdErr + d).slice(-4000)));
const stopEtcd = () => {
  if (etcd.exitCode === null) etcd.kill('SIGKILL');
};
process.on('exit', stopEtcd);
{
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (etcd.exitCode !== null) throw new Error(`etcd exited ${etcd.exitCode}: ${etcdErr}`);
    const ok = await fetch(`${etcdUrl}/health`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`etcd did not become healthy in 30 s: ${etcdErr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
const torusctl = (args) => runOk(process.execPath, [path.join(ROOT, 'dist/cmd/torusctl.js'), '-C', `127.0.0.1:${clientPort}`, ...args]);
await torusctl(['init', '--block-size', BLOCK_SIZE, '--replication', String(REPLICATION)]);
const created = JSON.parse(await torusctl(['-o', 'json', 'volume', 'create-block', VOLUME, VOLUME_SIZE]));
const volumeId = created.id ?? created.volume?.id;
if (!Number.isInteger(volumeId)) throw new Error(`torusctl volume create-block answered ${JSON.stringify(created)}`);
say(`etcd on 127.0.0.1:${clientPort} (the guest reaches it as 10.0.2.2:${clientPort}); volume ${VOLUME} (id ${volumeId}) ${VOLUME_SIZE}, block size ${BLOCK_SIZE}; ${PEERS === 1 ? 'one torusd' : `${PEERS} torusd, replication ${REPLICATION}, write level all`}; data dir${PEERS === 1 ? '' : 's'} on ${FS}; seed ${SEED}; ${KILLS} power losses${CUT === 'peer' ? ' of torusd 3 alone' : ''}`);

// ------------------------------------------------------------ one boot

/**
 * Boots the VM on the disk image and runs the guest script. `kill`: null
 * (let it finish), { kind: 'ack', nth } or { kind: 'random', afterMs }.
 */
async function boot(round, mode, lastAck, kill) {
  rmSync(PIDFILE, { force: true });
  const consoleLog = path.join(RUN, `console-round${round}.log`);
  const started = Date.now();
  const child = spawn('bash', [path.join(ROOT, 'test/vm/harness/run-in-vm.sh'), 'env',
    `TORUS_PL_ROUND=${round}`, `TORUS_PL_MODE=${mode}`, `TORUS_PL_FS=${FS}`, `TORUS_PL_STATE=${RUN}`, `TORUS_PL_ETCD=10.0.2.2:${clientPort}`,
    `TORUS_PL_VOLUME=${VOLUME}`, `TORUS_PL_VOLUME_ID=${volumeId}`, `TORUS_PL_PEERS=${PEERS}`, `TORUS_PL_REPLICATION=${REPLICATION}`, `TORUS_PL_JOIN_ROUND=${JOIN_ROUND}`, `TORUS_PL_SEED=${SEED}`, `TORUS_PL_LAST_ACK=${lastAck}`,
    `TORUS_VM_STAGE_TAR=${STAGE_TAR}`,
    // The guest runs this same node (Node 24 from scripts/node24.sh when the
    // system's is older): the checkout is shared at the same path.
    `PATH=${path.dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    ...(CUT === 'peer' ? [`TORUS_PL_CUTS=${KILLS}`, 'bash', 'test/vm/guest/stage.sh', 'peer-powerloss.mjs'] : ['bash', 'test/vm/guest/stage.sh', 'powerloss.mjs'])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env, TORUS_VM_DRIVE: CUT === 'peer' ? `${DISK} ${DISK3}` : DISK, TORUS_VM_PIDFILE: PIDFILE,
      TORUS_VM_TIMEOUT: String(CUT === 'peer' ? BOOT_TIMEOUT_S * (KILLS + 1) : BOOT_TIMEOUT_S),
    },
  });
  const exited = new Promise((r) => child.once('exit', (code) => r(code)));
  const r = { round, mode, kill: kill?.kind ?? null, acks: 0, lastAck: null, base: null, killedAfterMs: null, killLatencyMs: null, verified: null, verifiedAll: [], fails: [], done: null, bootS: 0, writeS: null };
  let killed = false;
  let writingAt = 0;
  let timer = null;
  const pullThePlug = (why) => {
    if (killed) return;
    const pid = Number(readFileSync(PIDFILE, 'utf8').trim());
    // The pid file is QEMU's own, written at start; check before killing.
    const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    if (!comm.startsWith('qemu-system')) throw new Error(`pid ${pid} from ${PIDFILE} is ${comm}, not QEMU`);
    process.kill(pid, 'SIGKILL');
    killed = true;
    r.killedAfterMs = Date.now() - writingAt;
    say(`round ${round}: power cut (SIGKILL to QEMU ${pid}) ${why}`);
  };
  const onLine = (line) => {
    appendFileSync(consoleLog, line + '\n');
    const m = /^powerloss: (\S+) ?(.*)$/.exec(line);
    if (m === null) {
      console.log(`  [${round}] ${line}`);
      return;
    }
    const [, what, rest] = m;
    if (what === 'writing') {
      writingAt = Date.now();
      r.base = Number(/base=(\d+)/.exec(rest)[1]);
      r.lastAck = r.base - 1;
      if (kill?.kind === 'random') timer = setTimeout(() => pullThePlug(`${kill.afterMs} ms after writing began (${r.acks} FLUSHes acknowledged)`), kill.afterMs);
    } else if (what === 'ack') {
      // Counted even when read after the kill: the guest printed it, so the
      // FLUSH was acknowledged before the power went.
      const gen = Number(/gen=(\d+)/.exec(rest)[1]);
      r.acks++;
      r.lastAck = Math.max(r.lastAck, gen);
      if (kill?.kind === 'ack' && r.acks === kill.nth) {
        const seen = Date.now();
        pullThePlug(`at FLUSH acknowledgement ${r.acks} (generation ${gen})`);
        r.killLatencyMs = Date.now() - seen;
      }
    } else if (what === 'verified') {
      r.verified = JSON.parse(rest);
      r.verifiedAll.push(r.verified);
      console.log(`  [${round}] ${line}`);
    } else if (what === 'fail') {
      r.fails.push(rest);
      console.log(`  [${round}] FAIL ${rest}`);
    } else if (what === 'done') {
      r.done = rest;
    }
  };
  const lines = readline.createInterface({ input: child.stdout });
  lines.on('line', (l) => onLine(l.replace(/\r$/, '')));
  child.stderr.on('data', (d) => process.stderr.write(d));
  const code = await exited;
  await new Promise((res) => (lines.closed ? res() : lines.once('close', res)));
  clearTimeout(timer);
  r.bootS = secs(started);
  if (writingAt > 0) r.writeS = secs(writingAt);
  if (mode === 'peer-cut' && r.verifiedAll.length !== KILLS && r.fails.length === 0) r.fails.push(`${r.verifiedAll.length} of ${KILLS} power cuts were checked`);
  if (mode === 'write' && !killed) r.fails.push(`the round ended (exit ${code}) before the power cut`);
  if (mode !== 'write' && (code !== 0 || r.done !== 'ok')) r.fails.push(`the checking boot exited ${code} (${r.done ?? 'no result'})`);
  if (killed && code !== 125 && code !== 137) r.fails.push(`run-in-vm.sh exited ${code} after the kill (expected 125: no exit status)`);
  return r;
}

// ------------------------------------------------------------ rounds

const rounds = [];
let lastAck = 0;
let failed = false;
if (CUT === 'peer') {
  say(`one boot: torusd 3 loses its power ${KILLS} times while torusd 1 and 2 run and the writer writes`);
  const r = await boot(0, 'peer-cut', 0, null);
  rounds.push(r);
  say(`${r.bootS} s; ${r.verifiedAll.length} power cuts checked${r.fails.length ? `; ${r.fails.length} failures` : ''}`);
  failed = r.fails.length > 0;
}
for (let round = 0; CUT === 'all' && round <= KILLS; round++) {
  const mode = round < KILLS ? 'write' : 'verify';
  const kill = mode === 'verify' ? null
    : round % 2 === 0 ? { kind: 'ack', nth: randomInt(ACK_KILL_NTH[0], ACK_KILL_NTH[1] + 1) }
      : { kind: 'random', afterMs: randomInt(RANDOM_KILL_MS[0], RANDOM_KILL_MS[1] + 1) };
  say(`round ${round}: boot (${mode}${round === JOIN_ROUND ? ', a fourth torusd joins before the writes' : ''}${kill ? `, then cut the power ${kill.kind === 'ack' ? `at FLUSH ack #${kill.nth}` : `${kill.afterMs} ms into the writes`}` : ''})`);
  const r = await boot(round, mode, lastAck, kill);
  rounds.push(r);
  say(`round ${round}: ${r.bootS} s; ${r.acks} FLUSHes acknowledged${r.fails.length ? `; ${r.fails.length} failures` : ''}`);
  if (r.lastAck !== null) lastAck = r.lastAck;
  if (r.fails.length > 0) {
    failed = true;
    break;
  }
}

// ------------------------------------------------------------ summary

const totalS = secs(t0);
writeFileSync(path.join(RUN, 'summary.json'), JSON.stringify({ when: new Date().toISOString(), fs: FS, cut: CUT, peers: PEERS, replication: REPLICATION, seed: SEED, totalS, failed, rounds }, null, 2) + '\n');
const setup = PEERS === 1 ? `data dir on ${FS}` : `${PEERS} torusd, replication ${REPLICATION}, data dirs on ${FS}${CUT === 'peer' ? ', torusd 3 cut alone' : ''}`;
console.log(`\npower-loss summary (${setup}, seed ${SEED})`);
// One peer's cuts (replica or coordinator, paused or writing on): the
// writer's FLUSH acks before the cut and while torusd 3 was down; how long
// it was down, the blocks its start found unclean and those whose copy was
// older after the restart than torusd 3 had reported just before the cut
// (what the cut took back); for a coordinator cut, the sectors of the
// generation it cut short and how many of them read back new (either is
// allowed);
// the read through torusd 3 right after its restart ("as written" of the
// sectors ever written; "older" must be 0), how long until balanced, the
// reads through every peer after that (sectors differing from what was
// written, must be 0) and the copy check.
if (CUT === 'peer') {
  console.log('cut | how                                        | acks before | acks while down | down   | unclean blocks | rolled back | written | cut short, read new | as written (torusd 3 at once) | older | garbage | balanced after | reads differ (1, 2, 3) | copies | CRC failures');
  for (const v of rounds[0]?.verifiedAll ?? []) {
    console.log([
      String(v.round).padStart(3), v.how.padEnd(42), String(v.acksBeforeCut).padStart(11), String(v.acksWhileDown).padStart(15), `${v.downS.toFixed(1)} s`.padStart(6),
      String(v.repairedBlocks).padStart(14), String(v.rolledBack).padStart(11), String(v.writtenSectors).padStart(7), (v.unflushedGen === null ? '-' : `${v.unflushedSectors}, ${v.unflushedEarly}`).padStart(19), `${v.asWrittenEarly}/${v.sectors}`.padStart(28), String(v.olderEarly).padStart(5), String(v.garbageEarly).padStart(7),
      (v.balancedS === null ? 'never' : `${v.balancedS.toFixed(1)} s`).padStart(14), Object.values(v.readsDiffer).join(', ').padStart(22),
      v.copiesOk ? `OK ${Object.entries(v.copyHistogram).map(([c, n]) => `${n}x${c}`).join(' ')}` : 'FAILED', String(v.crcFailures + v.crcLogged).padStart(12),
    ].join(' | '));
  }
}
// Per power cut, what the next boot found. "flushed": sectors some
// acknowledged FLUSH covered; of those, "as flushed" hold exactly that
// generation and "newer" a later, unacknowledged one (allowed); "lost" and
// "garbage" must be 0.
// A replicated run adds: sectors read differently through the other peers
// than through the first (must be 0), how long the cluster took to say
// balanced after those reads, and the copy check (R equal copies of every
// block on its ring owners).
const replicated = PEERS > 1 ? ' | reads differ (other peers) | balanced after | copies' : '';
if (CUT === 'all') console.log(`cut | how                      | FLUSH acks | torusd start after | flushed | as flushed | newer (unflushed) | lost | garbage | blocks suspect at start | suspect after reading | CRC failures${replicated}`);
for (let i = 0; CUT === 'all' && i < rounds.length; i++) {
  const r = rounds[i];
  if (r.mode !== 'write') continue;
  const v = rounds[i + 1]?.verified;
  const how = r.kill === 'ack' ? `at FLUSH ack ${r.acks} (+${r.killLatencyMs ?? '?'} ms)` : `random, ${r.killedAfterMs} ms in`;
  const col = (x, w) => (v ? String(x) : '-').padStart(w);
  console.log([
    String(r.round + 1).padStart(3), how.padEnd(24), String(r.acks).padStart(10), col(v ? `${v.startS.toFixed(1)} s` : '', 18), col(v?.flushedSectors, 7),
    col(v?.flushedWritten, 10), col(v?.flushedNewer, 17), col(v?.lost, 4), col(v?.garbage, 7), col(v?.suspectBefore, 23), col(v?.suspectAfter, 21), col(v?.crcFailures, 12),
    ...(PEERS > 1 ? [
      col(v ? Object.values(v.readsDiffer ?? {}).join(', ') : '', 26), col(v ? (v.balancedS === null ? 'never' : `${v.balancedS.toFixed(1)} s`) : '', 14),
      v ? (v.copiesOk ? `OK ${Object.entries(v.copyHistogram).map(([c, n]) => `${n}x${c}`).join(' ')}` : 'FAILED') : '-',
    ] : []),
  ].join(' | '));
}
for (const r of rounds) for (const f of r.fails) console.log(`FAIL round ${r.round}: ${f}`);
rmSync(STAGE_TAR, { force: true });
if (!failed && process.env.TORUS_PL_KEEP !== '1') for (const d of [DISK, DISK3]) rmSync(d, { force: true });
stopEtcd();
console.log(`vm powerloss suite, ${setup}: ${failed ? 'FAILED' : 'passed'}, ${KILLS} power cuts, ${totalS} s (files in ${path.relative(ROOT, RUN)})`);
process.exit(failed ? 1 : 0);
