// The power-loss suite's one-peer run, INSIDE the test VM (the host side is
// test/vm/powerloss-host.mjs with TORUS_PL_CUT=peer; it boots the VM once
// and never kills it). Three torusd, replication 2, write level all: torusd 1
// and 2 keep their data dirs on /dev/vda, torusd 3 on /dev/vdb behind a
// device-mapper "flakey" target, so that torusd 3 alone can lose its power
// while the others run on:
//   1. torusd 3 is killed (SIGKILL: no more syscalls from it);
//   2. its disk starts dropping every write (dm-flakey drop_writes) and its
//      file system is unmounted into that void: what the kernel had not yet
//      written to the disk, its page cache and the journal's last commits,
//      is gone, as if the power had failed at the kill;
//   3. the disk works again, the file system is mounted (journal recovery)
//      and torusd 3 starts on what the disk kept.
// The writer writes generation after generation (powerloss-pattern.mjs's
// pattern, each generation ended by a FLUSH), and the power of torusd 3 goes
// at a FLUSH acknowledgement or at a random moment, with writes in flight
// either way. The cuts go through six kinds in turn (CYCLES below):
//   - a *replica* cut: the writer writes through torusd 1, so torusd 3 only
//     holds copies. "Paused": the writer finishes the generation it is in
//     and writes no more until the checks, so what torusd 3 acknowledged
//     unflushed and lost is not covered up by a later write; the cluster
//     must know of the loss. "Writing on": the writer goes on through
//     torusd 1 and 2 while torusd 3 is down (degraded writes, recorded
//     stale for it) and for a few generations after it is back (while it
//     catches up). The cluster as a whole never lost power, so every write
//     it acknowledged must read back exactly, flushed or not;
//   - a *coordinator* cut: the writer writes through torusd 3 itself, so the
//     cut also breaks the client's connection, as when the node a volume is
//     attached through dies. Now the NBD rule holds: what a FLUSH covered
//     must read back; the generation in flight (written, not flushed) may
//     read back old or new, sector by sector, but every peer must then
//     read it alike. "Writing on": the writer connects to torusd 1 as soon
//     as the volume's lock lets it (torusd 3's restart revokes its old
//     lease, or the lease runs out) and writes on.
// After each cut, once the writer stopped:
//   - the volume is read through torusd 3 at once (its coordinator prefers
//     its own copies, some of which the cut took back in time, and it may
//     still be catching up), judged as above;
//   - once `cluster status` says balanced, the volume is read through every
//     peer (together the reads cover every copy): each sector as that
//     first read found it, and judged as above; every block has exactly 2
//     equal copies on its ring owners, none suspect; no CRC failure was
//     counted or logged.
// At the end every torusd stops cleanly and both file systems are checked.
// "powerloss: " console lines are the protocol with the host (one
// "verified" line per cut, then "done").
import { existsSync } from 'node:fs';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { roundBase, runsOf, SECTOR_BYTES } from './powerloss-pattern.mjs';
import { fileSystem } from './powerloss-filesystems.mjs';
import {
  bootSettings, checkFs, clusterView, compareReads, crcLogged as crcLoggedBy, env, fail, failures, fillWithStaleData, kernelFsErrors, log, mountDisk, reportJudged, run, sleep, startPeer, stopPeers, tell, untilReady, writeGeneration,
} from './powerloss-cluster.mjs';

const { state: STATE, etcd: ETCD, volume: VOLUME, volumeId: VOLUME_ID, seed: SEED, fs: FS } = bootSettings();
/** Power cuts of torusd 3, of the kinds in CYCLES in turn. */
const CUTS = Number(env('TORUS_PL_CUTS'));
/**
 * The kinds of cut, in turn: whose torusd the writer uses (torusd 3's own:
 * a coordinator cut), when the power goes (at a FLUSH acknowledgement or a
 * random moment), and whether the writer goes on while torusd 3 is down.
 */
const CYCLES = [
  { coordinator: false, at: 'ack', writeOn: false },
  { coordinator: false, at: 'random', writeOn: false },
  { coordinator: true, at: 'ack', writeOn: false },
  { coordinator: false, at: 'ack', writeOn: true },
  { coordinator: false, at: 'random', writeOn: true },
  { coordinator: true, at: 'random', writeOn: true },
];
const PEERS = 3;
const REPLICATION = 2;
/** An ack cut comes at the N-th acknowledged FLUSH of the cycle; a random one this long (ms) after the cycle's writes began. */
const ACK_CUT_NTH = [1, 4];
const RANDOM_CUT_MS = [200, 4000];
/** Generations written after torusd 3 is back, before the writer stops for the checks (writes while it catches up). */
const GENS_AFTER_RESTART = 3;
const WRITER_TIMEOUT_MS = 300_000;
const DISK12 = '/dev/vda';
const DISK3 = '/dev/vdb';
const FLAKEY = 'torus-pl-peer3';
const FLAKEY_DEV = `/dev/mapper/${FLAKEY}`;
// The guest's / is the host's, read-only; /tmp is the guest's own tmpfs.
const MNT12 = '/tmp/powerloss-mnt';
const MNT3 = '/tmp/powerloss-mnt3';
// Without udev in the guest, libdevmapper makes the /dev/mapper nodes itself.
const DM_ENV = { DM_DISABLE_UDEV: '1' };

for (const d of [DISK12, DISK3]) if (!existsSync(d)) throw new Error(`${d} is missing: the VM needs two virtio disks (TORUS_VM_DRIVE)`);
await run('dmesg', ['-C'], { allowFail: true });
const fsys = fileSystem(FS);

// ------------------------------------------------------------ torusd 3's disk, behind dm-flakey

const disk3Sectors = Number((await run('blockdev', ['--getsz', DISK3])).stdout.trim());
/**
 * The flakey target's table: 'pass' (up for 180 s, down 0: every I/O passes)
 * or 'drop' (up 0 s, down 180 s with drop_writes: writes are acknowledged
 * and discarded, reads served). Loaded with --nolockfs: suspending the
 * device must not freeze, and so sync, the file system on it.
 */
const flakeyTable = (mode) => (mode === 'pass' ? `0 ${disk3Sectors} flakey ${DISK3} 0 180 0` : `0 ${disk3Sectors} flakey ${DISK3} 0 0 180 1 drop_writes`);
async function flakey(mode) {
  await run('dmsetup', ['suspend', '--nolockfs', FLAKEY], { env: DM_ENV });
  await run('dmsetup', ['load', FLAKEY, '--table', flakeyTable(mode)], { env: DM_ENV });
  await run('dmsetup', ['resume', FLAKEY], { env: DM_ENV });
}
await run('dmsetup', ['create', FLAKEY, '--table', flakeyTable('pass')], { env: DM_ENV });

for (const [dev, mnt] of [[DISK12, MNT12], [FLAKEY_DEV, MNT3]]) {
  await run(...fsys.mkfs(dev));
  const opts = await mountDisk(fsys, dev, mnt);
  log(`formatted ${dev} ${FS}, mounted on ${mnt} (${opts})`);
  fillWithStaleData(mnt);
}

// ------------------------------------------------------------ three torusd

const dataDir = (n) => (n === 3 ? path.join(MNT3, 'torusd-3') : path.join(MNT12, `torusd-${n}`));
function startPeerN(n, life) {
  return startPeer({ n, dataDir: dataDir(n), logFile: path.join(STATE, `torusd-p${n}${life > 0 ? `-after-cut${life}` : ''}.log`), etcd: ETCD });
}
const peers = [1, 2, 3].map((n) => startPeerN(n, 0));
/** Every process of this boot, torusd 3's earlier lives included: their logs are searched for CRC failures. */
const everyPeer = [...peers];
await Promise.all(peers.map(untilReady));
const cluster = clusterView({ etcd: ETCD, peers, volume: VOLUME, volumeId: VOLUME_ID, seed: SEED });
await cluster.stableRing(PEERS);
const SECTORS = await (async () => {
  const c = await cluster.connectTo(peers[0]);
  await c.disconnect();
  const n = c.size / SECTOR_BYTES;
  if (!Number.isInteger(n) || n <= 0) throw new Error(`volume size ${c.size} is not a whole number of sectors`);
  return n;
})();
/**
 * What each sector must read back with (powerloss-pattern.mjs's judge):
 * floor, the generation that last wrote it as the writer saw its writes and
 * FLUSH acknowledged (0: never written); later, for sectors a generation cut
 * short by a coordinator cut wrote, that generation (it may or may not have
 * landed). After each cut's checks, the first read becomes the floor.
 */
const model = new Uint32Array(SECTORS);
const expected = { floor: model, later: new Map() };
/** Generations are numbered on across writers and cuts. */
let nextGen = roundBase(1);

// ------------------------------------------------------------ the writer

/**
 * Writes generations through one NBD connection until stopped; counts the
 * acknowledged FLUSHes, and settles each `untilAcks` waiter the moment its
 * count is reached (or the writer fails).
 */
function startWriter(conn, cycle) {
  const w = { stop: false, acks: 0, error: null, done: null, inFlight: null, waiters: [] };
  const settle = () => {
    w.waiters = w.waiters.filter((x) => {
      if (w.error !== null) x.reject(w.error);
      else if (w.acks >= x.n) x.resolve();
      else return true;
      return false;
    });
  };
  w.done = (async () => {
    const deadline = Date.now() + WRITER_TIMEOUT_MS;
    while (!w.stop) {
      if (Date.now() > deadline) throw new Error(`the cycle did not end within ${WRITER_TIMEOUT_MS} ms of writing`);
      const gen = nextGen++;
      w.inFlight = gen;
      await writeGeneration(conn, SEED, gen, SECTORS);
      w.inFlight = null;
      for (const r of runsOf(SEED, gen, SECTORS)) {
        model.fill(gen, r.start, r.start + r.count);
        for (let s = r.start; s < r.start + r.count; s++) expected.later.delete(s);
      }
      w.acks++;
      tell(`ack round=${cycle} gen=${gen}`);
      settle();
    }
  })().catch((err) => {
    w.error = err;
    settle();
  });
  return w;
}
/** A generation a coordinator cut left unflushed: each of its sectors may hold it or what it held before. */
function leftInFlight(gen) {
  for (const r of runsOf(SEED, gen, SECTORS)) {
    for (let s = r.start; s < r.start + r.count; s++) {
      const l = expected.later.get(s);
      if (l === undefined) expected.later.set(s, [gen]);
      else if (!l.includes(gen)) l.push(gen);
    }
  }
}
/** Resolves once the writer has `n` FLUSHes acknowledged; rejects if it fails first (its own deadline bounds the wait). */
function untilAcks(w, n) {
  if (w.error !== null) return Promise.reject(w.error);
  if (w.acks >= n) return Promise.resolve();
  return new Promise((resolve, reject) => w.waiters.push({ n, resolve, reject }));
}

// ------------------------------------------------------------ one peer's power cut

/**
 * Blocks whose copy on a peer is older after its restart than the peer
 * reported just before the cut: writes the cut took back (acknowledged to
 * the coordinator, not yet on the disk). Shows that a cut lost something for
 * the cluster to make good; an undercount at worst (writes after the report,
 * or a catch-up before the second listing, hide some).
 */
function rolledBack(before, after) {
  const now = new Map(after.map((b) => [`${b.generation}/${b.index}`, b]));
  return before.filter((b) => b.state !== 'absent' && (now.get(`${b.generation}/${b.index}`)?.version ?? -1) < b.version).length;
}

/** Cuts torusd 3's power (see the top of this file) and starts it again on what its disk kept; returns what it took. */
async function cutPeer3(cycle) {
  const old = peers[2];
  const before = await cluster.copiesOf(old);
  const t = Date.now();
  old.child.kill('SIGKILL');
  await old.exit;
  await flakey('drop');
  await run('umount', [MNT3]);
  await flakey('pass');
  const mountStarted = Date.now();
  await mountDisk(fsys, FLAKEY_DEV, MNT3);
  const mountMs = Date.now() - mountStarted;
  const p = startPeerN(3, cycle);
  peers[2] = p;
  everyPeer.push(p);
  await untilReady(p);
  const rolled = rolledBack(before, await cluster.copiesOf(p));
  const lines = p.lines();
  const unclean = lines.filter((l) => /unclean stop/.test(l.msg ?? ''));
  const repairedBlocks = unclean.reduce((n, l) => n + (l.blocks ?? 0), 0);
  log(`torusd 3 back ${((Date.now() - t) / 1000).toFixed(1)} s after its power cut (mount with recovery ${mountMs} ms); ${rolled} blocks older than it reported before the cut${unclean.length ? `; ${unclean[0].msg} (${repairedBlocks} blocks)` : ''}`);
  return { downS: (Date.now() - t) / 1000, mountMs, repairedBlocks, rolledBack: rolled };
}

// ------------------------------------------------------------ cycles

for (let cycle = 1; cycle <= CUTS && failures.length === 0; cycle++) {
  const { coordinator, at, writeOn } = CYCLES[(cycle - 1) % CYCLES.length];
  let conn = await cluster.connectTo(coordinator ? peers[2] : peers[0]);
  let writer = startWriter(conn, cycle);
  let how;
  if (at === 'ack') {
    const nth = randomInt(ACK_CUT_NTH[0], ACK_CUT_NTH[1] + 1);
    await untilAcks(writer, nth);
    how = `at FLUSH ack ${nth}`;
  } else {
    const ms = randomInt(RANDOM_CUT_MS[0], RANDOM_CUT_MS[1] + 1);
    await sleep(ms);
    how = `random, ${ms} ms in`;
  }
  how = `${coordinator ? 'coordinator' : 'replica'}, ${how}, ${writeOn ? 'writing on' : 'paused'}`;
  const acksAtCut = writer.acks;
  tell(`cut round=${cycle} ${how}`);
  const cutting = cutPeer3(cycle);
  let unflushedGen = null;
  if (coordinator) {
    // The writer's connection dies with torusd 3: its generation in flight stays unflushed.
    await writer.done;
    if (writer.error === null) fail('the writer\'s connection to torusd 3 outlived its power cut');
    unflushedGen = writer.inFlight;
    if (unflushedGen !== null) leftInFlight(unflushedGen);
    log(`the writer's connection to torusd 3 broke (${writer.error?.message}); generation ${unflushedGen ?? '-'} was in flight`);
    if (writeOn) {
      conn = await cluster.connectTo(peers[0]);
      writer = startWriter(conn, cycle);
    }
  } else if (!writeOn) {
    // Paused: the generation in flight at the cut ends (its FLUSH included), then nothing until the checks.
    writer.stop = true;
  }
  const cut = await cutting;
  // A coordinator cut's writer is a new one (or none, paused): its acks came once the lock let it write.
  const acksWhileDown = coordinator ? (writeOn ? writer.acks : 0) : writer.acks - acksAtCut;
  if (writeOn) {
    await untilAcks(writer, writer.acks + GENS_AFTER_RESTART);
    writer.stop = true;
  }
  if (!coordinator || writeOn) {
    await writer.done;
    if (writer.error !== null) {
      fail(`the writer failed: ${writer.error.message}`);
      break;
    }
  }
  await conn.disconnect().catch(() => undefined);

  // At once through torusd 3: what it serves, it serves as written.
  const suspectBefore = await cluster.suspectBlocks();
  const early = await cluster.readThrough(peers[2], expected);
  reportJudged(early, 'through torusd 3 right after its restart');

  // Balanced: through every peer, as that first read found it; R equal copies of every block.
  const balancedS = await cluster.balanced();
  const differ = {};
  for (const p of peers) differ[p.n] = compareReads(early.now, await cluster.readThrough(p, expected), p.n, 'torusd 3 right after its restart');
  const check = await cluster.checkCopies(REPLICATION);
  const suspectAfter = await cluster.suspectBlocks();
  const crc = await cluster.crcFailures();
  const crcLogged = crcLoggedBy(everyPeer);
  const fsErrors = await kernelFsErrors();
  if (crc > 0 || crcLogged > 0) fail(`torusd counted ${crc} CRC failures (${crcLogged} logged)`);
  if (suspectAfter.suspect > 0) fail(`${suspectAfter.suspect} blocks are still suspect after every block was read`);
  if (fsErrors.length > 0) fail(`kernel log: ${fsErrors.slice(0, 3).join(' | ')}`);
  const written = model.reduce((n, g) => n + (g > 0 ? 1 : 0), 0);
  tell(`verified ${JSON.stringify({
    round: cycle, how, sectors: SECTORS, acksBeforeCut: acksAtCut, acksWhileDown, ...cut, writtenSectors: written,
    unflushedGen, unflushedSectors: expected.later.size, asWrittenEarly: early.counts.flushed, unflushedEarly: early.counts.unflushed,
    olderEarly: early.counts.lost, garbageEarly: early.counts.garbage, suspectBefore: suspectBefore.suspect, suspectAfter: suspectAfter.suspect,
    balancedS, readsDiffer: differ, copiesOk: check.ok, copyHistogram: check.histogram, crcFailures: crc, crcLogged, fsErrors: fsErrors.length,
  })}`);
  // From here on the first read is what the volume holds: a generation cut short is now either there or not.
  model.set(early.now);
  expected.later.clear();
}

// ------------------------------------------------------------ a clean stop, both file systems checked

await stopPeers(peers);
await run('umount', [MNT12]);
await run('umount', [MNT3]);
await checkFs(fsys, DISK12);
await checkFs(fsys, FLAKEY_DEV);
await run('dmsetup', ['remove', FLAKEY], { env: DM_ENV, allowFail: true });
tell(failures.length === 0 ? 'done ok' : `done failed ${failures.length}`);
process.exit(failures.length === 0 ? 0 : 1);
