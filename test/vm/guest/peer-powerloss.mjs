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
// The writer writes generation after generation through torusd 1
// (powerloss-pattern.mjs's pattern, each generation ended by a FLUSH), and
// the power of torusd 3 goes at a FLUSH acknowledgement or at a random
// moment, with writes in flight either way. The cuts alternate two ways on:
//   - "paused": the writer finishes the generation it is in and writes no
//     more until the checks. What torusd 3 acknowledged unflushed and lost
//     is then told apart only by what the cluster knows of the loss: the
//     writer's coordinator's list of blocks each replica holds unflushed,
//     and torusd 3's dirty log (its suspect blocks). No later write to
//     those blocks covers it up;
//   - "writing on": the writer goes on through torusd 1 and 2 while torusd
//     3 is down (degraded writes, recorded stale for it) and for a few
//     generations after it is back (while it catches up).
// The cluster never lost power, so every write it acknowledged must read
// back, flushed or not. After each cut, once the writer stopped:
//   - the volume is read through torusd 3 at once (its coordinator prefers
//     its own copies, some of which the cut took back in time, and it may
//     still be catching up): every sector must hold exactly the generation
//     that last wrote it;
//   - once `cluster status` says balanced, the volume is read through every
//     peer (together the reads cover every copy), each sector exactly as
//     written; every block has exactly 2 equal copies on its ring owners,
//     none suspect; no CRC failure was counted or logged.
// At the end every torusd stops cleanly and both file systems are checked.
// "powerloss: " console lines are the protocol with the host (one
// "verified" line per cut, then "done").
import { existsSync } from 'node:fs';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { roundBase, runsOf, SECTOR_BYTES } from './powerloss-pattern.mjs';
import { fileSystem } from './powerloss-filesystems.mjs';
import {
  bootSettings, checkFs, clusterView, compareReads, crcLogged as crcLoggedBy, env, fail, failures, fillWithStaleData, kernelFsErrors, log, mountDisk, run, sleep, startPeer, stopPeers, tell, untilReady, waitFor, writeGeneration,
} from './powerloss-cluster.mjs';

const { state: STATE, etcd: ETCD, volume: VOLUME, volumeId: VOLUME_ID, seed: SEED, fs: FS } = bootSettings();
/** Power cuts of torusd 3, alternately at a FLUSH acknowledgement and at a random moment. */
const CUTS = Number(env('TORUS_PL_CUTS'));
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
async function flakey(mode) {
  const table = mode === 'pass' ? `0 ${disk3Sectors} flakey ${DISK3} 0 180 0` : `0 ${disk3Sectors} flakey ${DISK3} 0 0 180 1 drop_writes`;
  await run('dmsetup', ['suspend', '--nolockfs', FLAKEY], { env: DM_ENV });
  await run('dmsetup', ['load', FLAKEY, '--table', table], { env: DM_ENV });
  await run('dmsetup', ['resume', FLAKEY], { env: DM_ENV });
}
await run('dmsetup', ['create', FLAKEY, '--table', `0 ${disk3Sectors} flakey ${DISK3} 0 180 0`], { env: DM_ENV });

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
let nbd = await cluster.connectTo(peers[0]);
const SECTORS = nbd.size / SECTOR_BYTES;
if (!Number.isInteger(SECTORS) || SECTORS <= 0) throw new Error(`volume size ${nbd.size} is not a whole number of sectors`);
/** The generation that last wrote each sector, as the writer saw its writes and FLUSH acknowledged (0: never written). */
const model = new Uint32Array(SECTORS);
const exact = { floor: model, later: new Map() };

// ------------------------------------------------------------ the writer

/** Writes generations through torusd 1 until stopped; counts the acknowledged FLUSHes. */
function startWriter(cycle) {
  const w = { stop: false, acks: 0, error: null, done: null };
  w.done = (async () => {
    const deadline = Date.now() + WRITER_TIMEOUT_MS;
    for (let gen = roundBase(cycle); !w.stop; gen++) {
      if (Date.now() > deadline) throw new Error(`the cycle did not end within ${WRITER_TIMEOUT_MS} ms of writing`);
      await writeGeneration(nbd, SEED, gen, SECTORS);
      for (const r of runsOf(SEED, gen, SECTORS)) model.fill(gen, r.start, r.start + r.count);
      w.acks++;
      tell(`ack round=${cycle} gen=${gen}`);
    }
  })().catch((err) => {
    w.error = err;
  });
  return w;
}
const untilAcks = (w, n) => waitFor(`FLUSH acknowledgement ${n}`, () => {
  if (w.error !== null) throw Object.assign(w.error, { fatal: true });
  return w.acks >= n;
}, WRITER_TIMEOUT_MS, 20);

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
  return before.filter((b) => b.state !== 'absent' && compareVersions(now.get(`${b.generation}/${b.index}`)?.version, b.version) < 0).length;
}
const compareVersions = (a, b) => (a === undefined ? -1 : a < b ? -1 : a > b ? 1 : 0);

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
  const kind = cycle % 2 === 1 ? 'ack' : 'random';
  // Cuts 1 and 2 of every 4 pause the writer, 3 and 4 write on: with 4 cuts, each way at an ack and at a random moment.
  const writeOn = cycle % 4 === 3 || cycle % 4 === 0;
  const writer = startWriter(cycle);
  let how;
  if (kind === 'ack') {
    const nth = randomInt(ACK_CUT_NTH[0], ACK_CUT_NTH[1] + 1);
    await untilAcks(writer, nth);
    how = `at FLUSH ack ${nth}, ${writeOn ? 'writing on' : 'paused'}`;
  } else {
    const ms = randomInt(RANDOM_CUT_MS[0], RANDOM_CUT_MS[1] + 1);
    await sleep(ms);
    how = `random, ${ms} ms in, ${writeOn ? 'writing on' : 'paused'}`;
  }
  const acksAtCut = writer.acks;
  tell(`cut round=${cycle} ${how}`);
  const cutting = cutPeer3(cycle);
  // Paused: the generation in flight at the cut ends (its FLUSH included), then nothing until the checks.
  if (!writeOn) writer.stop = true;
  const cut = await cutting;
  const acksWhileDown = writer.acks - acksAtCut;
  if (writeOn) {
    await untilAcks(writer, writer.acks + GENS_AFTER_RESTART);
    writer.stop = true;
  }
  await writer.done;
  if (writer.error !== null) {
    fail(`the writer failed: ${writer.error.message}`);
    break;
  }
  await nbd.disconnect();

  // At once through torusd 3: what it serves, it serves as written.
  const suspectBefore = await cluster.suspectBlocks();
  const c3 = await cluster.connectTo(peers[2]);
  const early = await cluster.checkVolume(c3, exact);
  await c3.disconnect();
  for (const e of early.examples) log(`  through torusd 3 right after its restart: ${e}`);
  const earlyBad = early.counts.lost + early.counts.garbage + early.counts.unknown;
  if (earlyBad > 0) fail(`through torusd 3 right after its restart: ${early.counts.lost} sectors older than acknowledged, ${early.counts.garbage} garbage, ${early.counts.unknown} of an unknown generation`);

  // Balanced: through every peer, exactly as written; R equal copies of every block.
  const balancedS = await cluster.balanced();
  const differ = {};
  for (const p of peers) {
    const c = await cluster.connectTo(p);
    const again = await cluster.checkVolume(c, exact);
    await c.disconnect();
    differ[p.n] = compareReads(model, again, p.n, 'the writer');
  }
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
    round: cycle, how, sectors: SECTORS, acksBeforeCut: acksAtCut, acksWhileDown, acks: writer.acks, ...cut, writtenSectors: written, asWrittenEarly: early.counts.flushed,
    olderEarly: early.counts.lost, garbageEarly: early.counts.garbage, suspectBefore: suspectBefore.suspect, suspectAfter: suspectAfter.suspect,
    balancedS, readsDiffer: differ, copiesOk: check.ok, copyHistogram: check.histogram, crcFailures: crc, crcLogged, fsErrors: fsErrors.length,
  })}`);
  nbd = await cluster.connectTo(peers[0]);
}

// ------------------------------------------------------------ a clean stop, both file systems checked

await nbd.disconnect().catch(() => undefined);
await stopPeers(peers);
await run('umount', [MNT12]);
await run('umount', [MNT3]);
await checkFs(fsys, DISK12);
await checkFs(fsys, FLAKEY_DEV);
await run('dmsetup', ['remove', FLAKEY], { env: DM_ENV, allowFail: true });
tell(failures.length === 0 ? 'done ok' : `done failed ${failures.length}`);
process.exit(failures.length === 0 ? 0 : 1);
