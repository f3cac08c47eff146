// One boot of the power-loss suite, run INSIDE the test VM (the host side is
// test/vm/powerloss-host.mjs, which boots the VM once per round and kills
// QEMU with SIGKILL). torusd keeps its data dir on the guest's virtio disk
// (/dev/vda), formatted in the first round as TORUS_PL_FS says (ext4, xfs or
// ext4 without a journal) over the bytes of a deleted file; etcd runs on the
// host, reached at 10.0.2.2.
//
// Every boot after the first checks what the last power loss left: each 4 KiB
// sector must hold exactly the generation the last acknowledged FLUSH made
// durable for it, or one of the unacknowledged generations that wrote it
// (powerloss-pattern.mjs), never anything else; the whole volume must read;
// torusd must count no CRC failure and keep no suspect block once every block
// was read. Then, in a writing round, it records the volume as it found it
// (map.bin in the state folder on the host, not on the disk under test) and
// writes generation after generation, each ended by a FLUSH, printing
// "powerloss: ack round=R gen=G" on the serial console the moment the FLUSH
// is acknowledged, until the host pulls the plug. The last boot only checks,
// stops torusd cleanly and runs e2fsck on the unmounted filesystem.
//
// Console lines starting with "powerloss: " are the protocol with the host;
// everything else is for people.
import { spawn, execFile } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SECTOR_BYTES, STALE_CHUNK, classify, expectations, judge, readsDiffer, roundBase, runsOf, sectorBytes } from './powerloss-pattern.mjs';
import { loadNbdClient } from './nbd-client.mjs';
import { fileSystem } from './powerloss-filesystems.mjs';
import { checkCopies, describeCheck } from '../../bench/lib/copies.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DIST = path.join(ROOT, 'dist');
const NbdClient = await loadNbdClient(DIST);
const { ownersOf } = await import(path.join(DIST, 'src/replication/owners.js'));

const env = (k) => {
  const v = process.env[k];
  if (v === undefined || v === '') throw new Error(`${k} is not set (the host script sets it)`);
  return v;
};
const ROUND = Number(env('TORUS_PL_ROUND'));
const MODE = env('TORUS_PL_MODE'); // write | verify
const STATE = env('TORUS_PL_STATE');
const ETCD = env('TORUS_PL_ETCD');
const VOLUME = env('TORUS_PL_VOLUME');
const VOLUME_ID = Number(env('TORUS_PL_VOLUME_ID'));
const SEED = Number(env('TORUS_PL_SEED')) >>> 0;
/** The data dir's file system (powerloss-host.mjs): ext4, xfs or ext4-nojournal. */
const FS = env('TORUS_PL_FS');
/** The previous round's last generation the host saw acknowledged (its base - 1 when none). */
const LAST_ACK = ROUND > 0 ? Number(env('TORUS_PL_LAST_ACK')) : 0;
/** The writer stops by itself (and fails the round) if the host never pulls the plug. */
const WRITE_SECONDS_MAX = Number(process.env.TORUS_PL_WRITE_SECONDS ?? 120);
/** torusd processes in the guest (one power cut takes them all) and the cluster's replication (powerloss-host.mjs). */
const PEERS = Number(process.env.TORUS_PL_PEERS ?? 1);
const REPLICATION = Number(process.env.TORUS_PL_REPLICATION ?? 1);
/**
 * In this writing round of a replicated run one more torusd joins, right
 * before the writes: the ring moves blocks to it while the writer writes,
 * so the cut lands in the middle of that move (-1: no join). From the next
 * round on it is one of the peers.
 */
const JOIN_ROUND = Number(process.env.TORUS_PL_JOIN_ROUND ?? -1);
const JOINS = MODE === 'write' && ROUND === JOIN_ROUND;
/**
 * In that round every peer copies slowly (torusd's default is 100MiB/s), so
 * that the move still runs when the writes start and the power goes: the new
 * peer's share of the written blocks, a few MiB, takes seconds.
 */
const JOIN_ROUND_RATE = '256KiB';
const PEERS_AT_START = JOIN_ROUND >= 0 && ROUND > JOIN_ROUND ? PEERS + 1 : PEERS;
/** How long the cluster may take to be balanced after the checking reads (replicated runs). */
const BALANCED_TIMEOUT_MS = 240_000;
const DISK = '/dev/vda';
// The guest's / is the host's, read-only; /tmp is the guest's own tmpfs.
const MNT = '/tmp/powerloss-mnt';
const DATA_DIR = path.join(MNT, 'torusd');
/** Writes in flight at once, and bytes per read while checking. */
const WRITE_QUEUE_MAX = 8;
const READ_CHUNK_BYTES = 256 * 1024;
const READ_QUEUE_MAX = 4;

const t0 = Date.now();
const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
const log = (...a) => console.log(`[guest ${elapsed()}]`, ...a);
/** A protocol line for the host; written straight to the console (a tty: synchronous). */
const tell = (line) => writeSync(1, `powerloss: ${line}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function run(cmd, args, { timeoutMs = 120_000, allowFail = false } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      if (code !== 0 && !allowFail) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr || stdout || err?.message}`));
      else resolve({ code, stdout, stderr });
    });
  });
}

async function waitFor(what, probe, timeoutMs, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      if (err.fatal) throw err;
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(intervalMs);
  }
}

/** Writes a file on the host's share durably: the next boot reads it after a power loss. */
function writeDurably(file, data) {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  syncDir(path.dirname(file));
}

// ------------------------------------------------------------ the disk and torusd

const failures = [];
const fail = (what) => {
  failures.push(what);
  tell(`fail ${what}`);
};

if (!existsSync(DISK)) throw new Error(`${DISK} is missing: the VM has no virtio disk (TORUS_VM_DRIVE) or no virtio_blk`);
await run('dmesg', ['-C'], { allowFail: true });
const fsys = fileSystem(FS);
if (ROUND === 0) {
  const f = await run(...fsys.mkfs(DISK));
  log(`formatted ${DISK} ${FS} ${f.stdout.trim()}`);
}
mkdirSync(MNT, { recursive: true });
// The file system's default mount options (ext4: data=ordered; barriers on): what a node runs.
const mounted = Date.now();
await run('mount', ['-t', fsys.type, DISK, MNT]);
const mountOpts = readFileSync('/proc/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === MNT)?.split(' ')[3];
log(`mounted ${DISK} (${FS}) on ${MNT} (${mountOpts}) in ${Date.now() - mounted} ms`);
if (ROUND === 0) fillWithStaleData();
mkdirSync(DATA_DIR, { recursive: true });

/**
 * Before torusd's first start, fills the file system's free space with a
 * deleted file's bytes (STALE_CHUNK, durable, then the file unlinked), so
 * that the blocks torusd's files are given were someone else's. A crash that
 * left a block file pointing at disk blocks its data never reached would then
 * read back as "a deleted file's bytes" and fail the check, where on a fresh
 * image it would read as zeroes and pass unseen.
 */
function fillWithStaleData() {
  const file = path.join(MNT, 'stale.fill');
  const started = Date.now();
  const fd = openSync(file, 'w');
  let bytes = 0;
  try {
    for (;;) {
      try {
        bytes += writeSync(fd, STALE_CHUNK);
      } catch (err) {
        if (err.code === 'ENOSPC') break;
        throw err;
      }
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  unlinkSync(file);
  syncDir(MNT);
  log(`filled ${(bytes / 1048576).toFixed(0)} MiB of free space with a deleted file's bytes in ${Date.now() - started} ms`);
}

function syncDir(dir) {
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

// Two rounds in four checkpoint every 500 ms, so that cuts land in
// checkpoints (block headers rewritten, synced, the epoch's dirty log
// deleted) and the next start trusts headers a checkpoint wrote; the others
// keep the default 60 s, so that a whole round's writes are in one epoch
// and the next start recomputes all of them from the dirty log.
const CHECKPOINT_INTERVAL = ROUND % 4 >= 2 ? '500ms' : '60s';
/** One torusd of this boot: peer i (0-based) has its own data dir and fixed peer port on the same disk. */
function startPeer(i) {
  const logFile = path.join(STATE, `torusd-round${ROUND}${i === 0 ? '' : `-p${i + 1}`}.log`);
  const dataDir = i === 0 ? DATA_DIR : path.join(MNT, `torusd-${i + 1}`);
  mkdirSync(dataDir, { recursive: true });
  const out = openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(DIST, 'cmd/torusd.js'), '-C', ETCD, '--data-dir', dataDir, '--size', '256MiB',
    // A fixed peer port like a real node's (it is recorded in etcd and must be
    // the same after the reboot); the guest's loopback belongs to this test.
    '--peer-address', `127.0.0.1:${40000 + i}`, '--nbd-address', '127.0.0.1:0', '--port', '0', '--auto-join', '--checkpoint-interval', CHECKPOINT_INTERVAL,
    ...(JOINS ? ['--rebalance-rate', JOIN_ROUND_RATE] : [])], {
    stdio: ['ignore', out, out],
    env: { ...process.env },
  });
  closeSync(out);
  const exit = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const lines = () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return [];
    }
  });
  return { n: i + 1, child, exit, logFile, lines, ready: null, http: null };
}

const started = Date.now();
async function untilReady(p) {
  p.ready = await waitFor(`torusd ${p.n} ready`, () => {
    if (p.child.exitCode !== null) throw Object.assign(new Error(`torusd ${p.n} exited ${p.child.exitCode}: ${readFileSync(p.logFile, 'utf8').slice(-2000)}`), { fatal: true });
    return p.lines().find((l) => l.msg === 'torusd ready');
  }, 240_000);
  p.http = `http://${p.ready.http}`;
}
const peers = Array.from({ length: PEERS_AT_START }, (_, i) => startPeer(i));
await Promise.all(peers.map(untilReady));
const startS = (Date.now() - started) / 1000;
const logLines = () => peers.flatMap((p) => p.lines());
const lines0 = logLines();
const repairedLines = lines0.filter((l) => /unclean stop/.test(l.msg ?? ''));
const repaired = repairedLines.length === 0 ? null : { msg: repairedLines[0].msg, blocks: repairedLines.reduce((n, l) => n + (l.blocks ?? 0), 0) };
const revoked = lines0.some((l) => l.msg === 'revoked the lease of the previous run');
log(`${PEERS === 1 ? 'torusd' : `${peers.length} torusd (replication ${REPLICATION})`} ready in ${startS} s (nbd ${peers.map((p) => p.ready.nbd).join(', ')}, checkpoints every ${CHECKPOINT_INTERVAL})${repaired ? `; after the unclean stop: ${repaired.msg} (${repaired.blocks} blocks)` : ''}${revoked ? '; revoked the previous run\'s lease' : ''}`);

async function getJson(url) {
  const r = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  if (!r.ok) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}
async function torusctlJson(args) {
  const r = await run(process.execPath, [path.join(DIST, 'cmd/torusctl.js'), '-C', ETCD, ...args, '-o', 'json']);
  return JSON.parse(r.stdout);
}
/** Every peer's copies of the volume (GET /v1/blocks), by peer uuid. */
async function copiesByPeer() {
  const lists = await Promise.all(peers.map((p) => getJson(`${p.http}/v1/blocks?volume=${VOLUME_ID}`)));
  return Object.fromEntries(peers.map((p, i) => [p.ready.uuid, lists[i].blocks]));
}
/** Blocks listed and suspect copies, summed over the peers. */
async function suspectBlocks() {
  const all = Object.values(await copiesByPeer()).flat();
  return { blocks: all.length, suspect: all.filter((b) => b.suspect).length };
}
async function crcFailures() {
  let sum = 0;
  for (const p of peers) {
    const r = await fetch(`${p.http}/metrics`, { signal: AbortSignal.timeout(30_000) });
    const text = await r.text();
    const m = /^torus_store_crc_failures_total (\S+)$/m.exec(text);
    if (m === null) throw new Error(`torus_store_crc_failures_total is missing from torusd ${p.n}'s /metrics`);
    sum += Number(m[1]);
  }
  return sum;
}

// Writes go to the first peer; with replication, only once every peer is a
// ring member (the first round's joins have settled), so that every write
// has its R owners.
if (PEERS > 1) {
  const ringStarted = Date.now();
  const ring = await waitFor(`a stable ring of ${PEERS_AT_START} peers`, async () => {
    const r = await torusctlJson(['ring', 'get']);
    return r.transition === null && r.members.length === PEERS_AT_START ? r : null;
  }, 240_000, 1000);
  log(`ring version ${ring.version} stable with ${PEERS_AT_START} members ${((Date.now() - ringStarted) / 1000).toFixed(1)} s after the peers were ready`);
}

/** An NBD connection to the volume through peer p. The lock of the killed run's session is dropped when torusd revokes that run's lease; should it not have, the lock lives until the lease's TTL. */
function connectTo(p) {
  const [host, port] = p.ready.nbd.split(':');
  return waitFor(`NBD export ${VOLUME} on torusd ${p.n}`, () => NbdClient.connect(host, Number(port), VOLUME), 90_000, 1000);
}
let nbd = await connectTo(peers[0]);
const SECTORS = nbd.size / SECTOR_BYTES;
if (!Number.isInteger(SECTORS) || SECTORS <= 0) throw new Error(`volume size ${nbd.size} is not a whole number of sectors`);

// ------------------------------------------------------------ check what the power loss left

/** Reads the whole volume through one NBD connection; returns the generation each sector holds. */
async function checkVolume(nbd, exp) {
  const now = new Uint32Array(SECTORS);
  const counts = { flushed: 0, flushedWritten: 0, flushedNewer: 0, unflushed: 0, windowOld: 0, lost: 0, garbage: 0, unknown: 0 };
  const examples = [];
  let next = 0;
  const worker = async () => {
    while (next < nbd.size) {
      const offset = next;
      const length = Math.min(READ_CHUNK_BYTES, nbd.size - offset);
      next += length;
      let buf;
      try {
        buf = await nbd.read(offset, length);
      } catch (err) {
        fail(`reading ${offset}+${length} failed: ${err.message}`);
        continue;
      }
      for (let at = 0; at < length; at += SECTOR_BYTES) {
        const s = (offset + at) / SECTOR_BYTES;
        const got = classify(SEED, s, buf, at);
        now[s] = got.gen ?? 0;
        if (exp === null) continue;
        const verdict = judge(exp, s, got);
        counts[verdict]++;
        // In the unacknowledged window but old: those writes did not land (or never started).
        if (verdict === 'flushed' && exp.later.has(s)) counts.windowOld++;
        if (verdict === 'flushed' && exp.floor[s] > 0) counts.flushedWritten++;
        if (verdict === 'unflushed' && exp.floor[s] > 0) counts.flushedNewer++;
        if (verdict !== 'flushed' && verdict !== 'unflushed' && examples.length < 8) {
          examples.push(`sector ${s}: ${verdict}, holds ${got.garbage ?? `generation ${got.gen}`}, flushed generation ${exp.floor[s]}, unflushed ${JSON.stringify(exp.later.get(s) ?? [])}`);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: READ_QUEUE_MAX }, worker));
  return { now, counts, examples };
}

/**
 * A replicated run's checks after the first peer's read (whose generations
 * are in `found`):
 * - the volume reads the same, sector by sector, through every other peer.
 *   A peer reads the copies it holds itself first (the coordinator prefers
 *   its local replica), so together the reads cover every copy of every
 *   block: a replica the power cut left behind that any read could reach
 *   shows here, and each read is judged against the flushed generations too;
 * - once the cluster says balanced, every block has exactly R equal copies
 *   (state, version, digest), none suspect, on its ring owners
 *   (test/bench/lib/copies.mjs, the bench's own check).
 */
async function checkReplicas(exp) {
  await nbd.disconnect();
  const differ = {};
  for (const p of peers.slice(1)) {
    const other = await connectTo(p);
    const again = await checkVolume(other, exp);
    await other.disconnect();
    const d = readsDiffer(found, again.now);
    for (const e of d.examples) log(`  sector ${e.sector}: generation ${e.a} through torusd 1, ${e.b} through torusd ${p.n}`);
    differ[p.n] = d.count;
    for (const e of again.examples) log(`  through torusd ${p.n}: ${e}`);
    if (d.count > 0) fail(`${d.count} sectors read differently through torusd ${p.n} than through torusd 1`);
    const bad = again.counts.lost + again.counts.garbage + again.counts.unknown;
    if (bad > 0) fail(`through torusd ${p.n}: ${again.counts.lost} sectors lost a flushed write, ${again.counts.garbage} garbage, ${again.counts.unknown} of an unknown generation`);
  }
  nbd = await connectTo(peers[0]);
  const balancedStarted = Date.now();
  let balanced = true;
  try {
    await waitFor('the cluster balanced', async () => (await torusctlJson(['cluster', 'status'])).balanced === true, BALANCED_TIMEOUT_MS, 1000);
  } catch (err) {
    balanced = false;
    fail(err.message);
  }
  const balancedS = (Date.now() - balancedStarted) / 1000;
  const ring = await torusctlJson(['ring', 'get']);
  const vol = (await torusctlJson(['volume', 'list'])).volumes.find((v) => v.id === VOLUME_ID);
  const volume = { id: VOLUME_ID, generation: vol.generation, blocks: Math.ceil(vol.size / vol.blockSize) };
  const check = checkCopies({ volume, ring, copiesByPeer: await copiesByPeer(), replication: REPLICATION, expectFull: false, ownersOf });
  log(describeCheck(`volume ${VOLUME}`, check));
  if (!check.ok) {
    for (const p of check.problems) log(`  ${p}`);
    fail(describeCheck(`volume ${VOLUME}`, check));
  }
  return { readsDiffer: differ, balancedS: balanced ? balancedS : null, copiesOk: check.ok, copyHistogram: check.histogram };
}

let found = new Uint32Array(SECTORS);
let verified = null;
if (ROUND > 0) {
  const prev = JSON.parse(readFileSync(path.join(STATE, 'state.json'), 'utf8'));
  if (prev.round !== ROUND - 1 || prev.seed !== SEED || prev.sectors !== SECTORS) throw new Error(`state.json is from another run: ${JSON.stringify(prev)}`);
  const raw = readFileSync(path.join(STATE, 'map.bin'));
  const before = new Uint32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
  if (before.length !== SECTORS) throw new Error(`map.bin holds ${before.length} sectors, the volume ${SECTORS}`);
  const exp = expectations(SEED, SECTORS, before, prev.base, LAST_ACK);
  const suspectBefore = await suspectBlocks();
  const checkStarted = Date.now();
  const r = await checkVolume(nbd, exp);
  const readS = (Date.now() - checkStarted) / 1000;
  found = r.now;
  const replicas = PEERS > 1 ? await checkReplicas(exp) : null;
  const suspectAfter = await suspectBlocks();
  const crc = await crcFailures();
  const crcLogged = logLines().filter((l) => l.msg === 'block page failed its checksum' || /CRC_MISMATCH/.test(JSON.stringify(l))).length;
  const fsErrors = (await run('dmesg', [], { allowFail: true })).stdout.split('\n').filter((l) => /EXT4-fs error|I\/O error|Remounting filesystem read-only|journal.*(error|abort)|XFS \(.*\):.*(corrupt|error|shutdown)/i.test(l));
  const flushedSectors = exp.floor.reduce((n, g) => n + (g > 0 ? 1 : 0), 0);
  verified = {
    round: ROUND - 1, lastAck: LAST_ACK, startS, readS, sectors: SECTORS, flushedSectors, ...r.counts,
    repairedBlocks: repaired?.blocks ?? 0, suspectBefore: suspectBefore.suspect, suspectAfter: suspectAfter.suspect, blocks: suspectAfter.blocks,
    crcFailures: crc, crcLogged, fsErrors: fsErrors.length, leaseRevoked: revoked, ...(replicas ?? {}),
  };
  for (const e of r.examples) log(`  ${e}`);
  if (r.counts.lost > 0) fail(`${r.counts.lost} sectors lost a write a FLUSH had acknowledged`);
  if (r.counts.garbage > 0) fail(`${r.counts.garbage} sectors hold neither the old nor a new generation (torn or damaged)`);
  if (r.counts.unknown > 0) fail(`${r.counts.unknown} sectors hold a generation that never wrote them in this window`);
  if (crc > 0 || crcLogged > 0) fail(`torusd counted ${crc} CRC failures (${crcLogged} logged)`);
  if (suspectAfter.suspect > 0) fail(`${suspectAfter.suspect} blocks are still suspect after every block was read`);
  if (fsErrors.length > 0) fail(`kernel log: ${fsErrors.slice(0, 3).join(' | ')}`);
  tell(`verified ${JSON.stringify(verified)}`);
}

// ------------------------------------------------------------ write until the power goes

if (MODE === 'write' && failures.length === 0 && JOINS) {
  const joiner = startPeer(peers.length);
  peers.push(joiner);
  await untilReady(joiner);
  const ring = await waitFor(`torusd ${joiner.n} in the ring`, async () => {
    const r = await torusctlJson(['ring', 'get']);
    return r.members.some((m) => m.uuid === joiner.ready.uuid) ? r : null;
  }, 120_000, 250);
  log(`torusd ${joiner.n} joined: ring version ${ring.version}, ${ring.transition === null ? 'stable already (no move to cut into)' : `phase ${ring.transition.phase}; writing while blocks move to it at ${JOIN_ROUND_RATE}/s per peer`}`);
}

if (MODE === 'write' && failures.length === 0) {
  const base = roundBase(ROUND);
  writeDurably(path.join(STATE, 'map.bin'), Buffer.from(found.buffer));
  writeDurably(path.join(STATE, 'state.json'), JSON.stringify({ round: ROUND, base, seed: SEED, sectors: SECTORS }) + '\n');
  tell(`writing round=${ROUND} base=${base}`);
  const deadline = Date.now() + WRITE_SECONDS_MAX * 1000;
  for (let gen = base; Date.now() < deadline; gen++) {
    const writes = [];
    for (const r of runsOf(SEED, gen, SECTORS)) {
      const data = Buffer.allocUnsafe(r.count * SECTOR_BYTES);
      for (let i = 0; i < r.count; i++) sectorBytes(SEED, r.start + i, gen, data, i * SECTOR_BYTES);
      writes.push({ offset: r.start * SECTOR_BYTES, data });
    }
    let i = 0;
    await Promise.all(Array.from({ length: WRITE_QUEUE_MAX }, async () => {
      while (i < writes.length) {
        const w = writes[i++];
        await nbd.write(w.offset, w.data);
      }
    }));
    await nbd.flush();
    tell(`ack round=${ROUND} gen=${gen}`);
  }
  fail(`the host did not cut the power within ${WRITE_SECONDS_MAX} s of writing`);
}

// ------------------------------------------------------------ the last boot: a clean stop

if (MODE === 'verify' || failures.length > 0) {
  await nbd.disconnect().catch(() => undefined);
  await Promise.all(peers.map(async (p) => {
    p.child.kill('SIGTERM');
    const st = await Promise.race([p.exit, sleep(60_000).then(() => null)]);
    if (st === null) {
      p.child.kill('SIGKILL');
      fail(`torusd ${p.n} did not stop within 60 s of SIGTERM`);
    } else if (st.code !== 0) fail(`torusd ${p.n} exited ${st.code ?? st.signal} on SIGTERM`);
  }));
  await run('umount', [MNT]);
  const [fsckCmd, fsckArgs] = fsys.fsck(DISK);
  const fsck = await run(fsckCmd, fsckArgs, { allowFail: true });
  if (fsck.code !== 0) fail(`${fsckCmd} ${fsckArgs.join(' ')} exited ${fsck.code}: ${(fsck.stdout + fsck.stderr).slice(-500)}`);
  else log(`${fsckCmd} ${fsckArgs.join(' ')}: the file system is clean`);
}
tell(failures.length === 0 ? 'done ok' : `done failed ${failures.length}`);
process.exit(failures.length === 0 ? 0 : 1);
