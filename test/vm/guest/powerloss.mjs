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
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { expectations, roundBase, SECTOR_BYTES } from './powerloss-pattern.mjs';
import { fileSystem } from './powerloss-filesystems.mjs';
import {
  bootSettings, checkFs, clusterView, compareReads, crcLogged as crcLoggedBy, env, fail, failures, fillWithStaleData, kernelFsErrors, log, mountDisk, run, startPeer, stopPeers, tell, untilReady, waitFor, writeDurably, writeGeneration,
} from './powerloss-cluster.mjs';

const ROUND = Number(env('TORUS_PL_ROUND'));
const MODE = env('TORUS_PL_MODE'); // write | verify
/** FS: the data dir's file system (powerloss-host.mjs): ext4, xfs or ext4-nojournal. */
const { state: STATE, etcd: ETCD, volume: VOLUME, volumeId: VOLUME_ID, seed: SEED, fs: FS } = bootSettings();
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
const DISK = '/dev/vda';
// The guest's / is the host's, read-only; /tmp is the guest's own tmpfs.
const MNT = '/tmp/powerloss-mnt';
const DATA_DIR = path.join(MNT, 'torusd');
// ------------------------------------------------------------ the disk and torusd

if (!existsSync(DISK)) throw new Error(`${DISK} is missing: the VM has no virtio disk (TORUS_VM_DRIVE) or no virtio_blk`);
await run('dmesg', ['-C'], { allowFail: true });
const fsys = fileSystem(FS);
if (ROUND === 0) {
  const f = await run(...fsys.mkfs(DISK));
  log(`formatted ${DISK} ${FS} ${f.stdout.trim()}`);
}
const mounted = Date.now();
const mountOpts = await mountDisk(fsys, DISK, MNT);
log(`mounted ${DISK} (${FS}) on ${MNT} (${mountOpts}) in ${Date.now() - mounted} ms`);
if (ROUND === 0) fillWithStaleData(MNT);
mkdirSync(DATA_DIR, { recursive: true });

// Two rounds in four checkpoint every 500 ms, so that cuts land in
// checkpoints (block headers rewritten, synced, the epoch's dirty log
// deleted) and the next start trusts headers a checkpoint wrote; the others
// keep the default 60 s, so that a whole round's writes are in one epoch
// and the next start recomputes all of them from the dirty log.
const CHECKPOINT_INTERVAL = ROUND % 4 >= 2 ? '500ms' : '60s';
/** One torusd of this boot: peer i (0-based) has its own data dir on the same disk. */
function startPeerN(i) {
  return startPeer({
    n: i + 1,
    dataDir: i === 0 ? DATA_DIR : path.join(MNT, `torusd-${i + 1}`),
    logFile: path.join(STATE, `torusd-round${ROUND}${i === 0 ? '' : `-p${i + 1}`}.log`),
    etcd: ETCD,
    args: ['--checkpoint-interval', CHECKPOINT_INTERVAL, ...(JOINS ? ['--rebalance-rate', JOIN_ROUND_RATE] : [])],
  });
}

const started = Date.now();
const peers = Array.from({ length: PEERS_AT_START }, (_, i) => startPeerN(i));
await Promise.all(peers.map(untilReady));
const startS = (Date.now() - started) / 1000;
const cluster = clusterView({ etcd: ETCD, peers, volume: VOLUME, volumeId: VOLUME_ID, seed: SEED });
const lines0 = cluster.logLines();
const repairedLines = lines0.filter((l) => /unclean stop/.test(l.msg ?? ''));
const repaired = repairedLines.length === 0 ? null : { msg: repairedLines[0].msg, blocks: repairedLines.reduce((n, l) => n + (l.blocks ?? 0), 0) };
const revoked = lines0.some((l) => l.msg === 'revoked the lease of the previous run');
log(`${PEERS === 1 ? 'torusd' : `${peers.length} torusd (replication ${REPLICATION})`} ready in ${startS} s (nbd ${peers.map((p) => p.ready.nbd).join(', ')}, checkpoints every ${CHECKPOINT_INTERVAL})${repaired ? `; after the unclean stop: ${repaired.msg} (${repaired.blocks} blocks)` : ''}${revoked ? '; revoked the previous run\'s lease' : ''}`);

// Writes go to the first peer; with replication, only once every peer is a
// ring member (the first round's joins have settled), so that every write
// has its R owners.
if (PEERS > 1) await cluster.stableRing(PEERS_AT_START);

let nbd = await cluster.connectTo(peers[0]);
const SECTORS = nbd.size / SECTOR_BYTES;
if (!Number.isInteger(SECTORS) || SECTORS <= 0) throw new Error(`volume size ${nbd.size} is not a whole number of sectors`);

// ------------------------------------------------------------ check what the power loss left

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
    differ[p.n] = compareReads(found, await cluster.readThrough(p, exp), p.n);
  }
  nbd = await cluster.connectTo(peers[0]);
  const balancedS = await cluster.balanced();
  const check = await cluster.checkCopies(REPLICATION);
  return { readsDiffer: differ, balancedS, copiesOk: check.ok, copyHistogram: check.histogram };
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
  const suspectBefore = await cluster.suspectBlocks();
  const checkStarted = Date.now();
  const r = await cluster.checkVolume(nbd, exp);
  const readS = (Date.now() - checkStarted) / 1000;
  found = r.now;
  const replicas = PEERS > 1 ? await checkReplicas(exp) : null;
  const suspectAfter = await cluster.suspectBlocks();
  const crc = await cluster.crcFailures();
  const crcLogged = crcLoggedBy(peers);
  const fsErrors = await kernelFsErrors();
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
  const joiner = startPeerN(peers.length);
  peers.push(joiner);
  await untilReady(joiner);
  const ring = await waitFor(`torusd ${joiner.n} in the ring`, async () => {
    const r = await cluster.torusctlJson(['ring', 'get']);
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
    await writeGeneration(nbd, SEED, gen, SECTORS);
    tell(`ack round=${ROUND} gen=${gen}`);
  }
  fail(`the host did not cut the power within ${WRITE_SECONDS_MAX} s of writing`);
}

// ------------------------------------------------------------ the last boot: a clean stop

if (MODE === 'verify' || failures.length > 0) {
  await nbd.disconnect().catch(() => undefined);
  await stopPeers(peers);
  await run('umount', [MNT]);
  await checkFs(fsys, DISK);
}
tell(failures.length === 0 ? 'done ok' : `done failed ${failures.length}`);
process.exit(failures.length === 0 ? 0 : 1);
