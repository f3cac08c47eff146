// Re-replication: how fast the cluster gets back to R copies of every block
// after a peer dies and is force-removed, next to a plain file copy of the
// same amount of data on the same disk.
import { rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { checkCopies } from './copies.mjs';
import { cpuSeconds } from './cpu.mjs';
import { BenchError, runOk, sleep } from './procs.mjs';
import { summarize } from './stats.mjs';

const POLL_MS = 250;

/** Bytes a set of copies stands for (data blocks only; the last block of a volume may be short). */
function dataBytes(copies, volume) {
  let n = 0;
  for (const c of copies) {
    if (c.generation !== volume.generation || c.state !== 'data') continue;
    n += Math.min(volume.blockSize, volume.size - c.index * volume.blockSize);
  }
  return n;
}

async function copiedBytesTotal(cluster, peers) {
  const all = await Promise.all(peers.map((p) => cluster.metrics(p)));
  return all.reduce((n, m) => n + (m.torus_replication_copied_bytes_total ?? 0), 0);
}

/**
 * When the copying itself ran, from samples { atMs, bytes } of torusd's
 * copied-bytes counter (summed over the peers) taken while waiting: from
 * the last sample before the counter first moved to the first sample that
 * shows its final value. The window is at least as long as the copying, so
 * the rate it gives is a lower bound. Pure.
 */
export function copyWindow(samples) {
  if (samples.length < 2) return null;
  const base = samples[0].bytes;
  const final = samples.at(-1).bytes;
  if (final <= base) return null;
  const firstMoved = samples.findIndex((s) => s.bytes > base);
  const startMs = samples[firstMoved - 1].atMs;
  const endMs = samples.find((s) => s.bytes === final).atMs;
  return { startMs, endMs, bytes: final - base };
}

/**
 * Polls until every survivor's view of the ring is stable with exactly the
 * survivors as members, torusctl agrees, and every block has R equal copies
 * on its owners. Returns the times (ms since t0) each condition was first
 * seen, the final copy check, and samples of the copied-bytes counter.
 */
async function waitRestored({ cluster, survivors, volume, ownersOf, t0, timeoutMs, copiedSamples }) {
  const deadline = t0 + timeoutMs;
  let ringStableMs = null;
  let lastCheck = null;
  let polls = 0;
  for (;;) {
    copiedSamples.push({ atMs: Date.now() - t0, bytes: await copiedBytesTotal(cluster, survivors).catch(() => copiedSamples.at(-1)?.bytes ?? 0) });
    if (Date.now() > deadline) {
      throw new BenchError(
        `${cluster.name}: not restored within ${timeoutMs / 1000}s: ring ${ringStableMs === null ? 'still in transition' : 'stable'}` +
          (lastCheck ? `; copies: ${lastCheck.problemCount} problem(s), first: ${lastCheck.problems[0] ?? ''}` : ''),
      );
    }
    for (const p of survivors) if (p.handle.done) throw new BenchError(`${p.label} exited during re-replication`);
    polls++;
    if (ringStableMs === null) {
      const views = await Promise.all(survivors.map((p) => cluster.peerStatus(p).catch(() => null)));
      const stable = views.every((v) => v && v.ring.phase === 'stable' && v.ring.members === survivors.length);
      if (stable) {
        const at = Date.now() - t0;
        const ring = await cluster.ring();
        const want = survivors.map((p) => p.uuid).sort().join(',');
        if (ring.transition === null && ring.members.map((m) => m.uuid).sort().join(',') === want) ringStableMs = at;
      }
    }
    if (ringStableMs !== null) {
      const at = Date.now() - t0;
      const ring = await cluster.ring();
      lastCheck = checkCopies({
        volume,
        ring,
        copiesByPeer: await cluster.copiesByPeer(volume.id, survivors),
        replication: cluster.replication,
        expectFull: true,
        ownersOf,
      });
      if (lastCheck.ok) {
        copiedSamples.push({ atMs: Date.now() - t0, bytes: await copiedBytesTotal(cluster, survivors) });
        return { ringStableMs, copiesCompleteMs: Math.max(at, ringStableMs), check: lastCheck, polls };
      }
    }
    await sleep(POLL_MS);
  }
}

/**
 * kill -9 one peer, `torusctl peer remove --force --no-wait` it, and time
 * until the ring is stable again and every block has R copies. The bytes
 * re-copied are the data the dead peer held (what the survivors must copy);
 * torusd's own count of bytes copied is reported beside it.
 */
export async function measureRebuild({ cluster, volume, victim, ownersOf, timeoutMs, say, rateNote }) {
  const survivors = cluster.live().filter((p) => p !== victim);
  const before = await cluster.copiesByPeer(volume.id);
  const lost = (before[victim.uuid] ?? []).filter((c) => c.generation === volume.generation && c.state !== 'absent');
  const bytesToCopy = dataBytes(lost, volume);
  const copiedBefore = await copiedBytesTotal(cluster, survivors);
  say(`${cluster.name}: kill -9 ${victim.label} (${victim.uuid.slice(0, 8)}, holds ${lost.length} blocks = ${(bytesToCopy / 1e6).toFixed(0)} MB), then peer remove --force (${rateNote})`);

  const cpu0 = cpuSeconds(survivors.map((p) => p.handle.pid));
  const copiedSamples = [{ atMs: 0, bytes: copiedBefore }];
  const t0 = Date.now();
  await cluster.sup.kill9(victim.handle);
  const remove = await cluster.ctl(['peer', 'remove', '--force', '--no-wait', victim.uuid], 60_000);
  const removeMs = Date.now() - t0;
  if (remove.code !== 0) throw new BenchError(`torusctl peer remove --force --no-wait ${victim.uuid} exited ${remove.code}: ${(remove.stderr || remove.stdout).trim()}`);
  const done = await waitRestored({ cluster, survivors, volume, ownersOf, t0, timeoutMs, copiedSamples });
  const seconds = done.copiesCompleteMs / 1000;
  const cpu1 = cpuSeconds(survivors.map((p) => p.handle.pid));
  const cpuWallSeconds = (Date.now() - t0) / 1000;
  const cpuBySurvivor = Object.fromEntries(survivors.map((p) => [p.label, cpu1[p.handle.pid] - cpu0[p.handle.pid]]));
  const copiedAfter = await copiedBytesTotal(cluster, survivors);
  const metrics = await Promise.all(survivors.map((p) => cluster.metrics(p)));
  return {
    rateNote,
    victim: { label: victim.label, uuid: victim.uuid },
    survivors: survivors.map((p) => ({ label: p.label, uuid: p.uuid, rebalanceRate: p.rebalanceRate })),
    blocksLost: lost.length,
    bytesToCopy,
    torusCopiedBytes: copiedAfter - copiedBefore,
    removeCommandMs: removeMs,
    ringStableSeconds: done.ringStableMs / 1000,
    seconds,
    mbPerSec: bytesToCopy / seconds / 1e6,
    copying: copyingFigures(copiedSamples),
    /** CPU cores the survivors kept busy, from kill to restored (includes the copy checks' polling). */
    survivorCores: Object.values(cpuBySurvivor).reduce((a, b) => a + b, 0) / cpuWallSeconds,
    cpuSecondsBySurvivor: cpuBySurvivor,
    check: done.check,
    degradedChanges: metrics.reduce((n, m) => n + (m.torus_replication_degraded_changes_total ?? 0), 0),
    failedChanges: metrics.reduce((n, m) => n + (m.torus_replication_failed_changes_total ?? 0), 0),
  };
}

/**
 * A new peer joins a cluster that holds the volume (--auto-join starts a
 * ring transition that moves its share of the blocks to it). Timed from the
 * start of its process to a stable ring with every copy in place.
 */
export async function measureJoin({ cluster, volume, ownersOf, extraArgs, timeoutMs, say, rateNote }) {
  const t0 = Date.now();
  const peer = await cluster.addPeer(extraArgs);
  peer.rebalanceRate = rateNote;
  say(`${cluster.name}: ${peer.label} (${peer.uuid.slice(0, 8)}) joined; waiting for the ring to be stable and every block in place`);
  const survivors = cluster.live();
  const copiedSamples = [{ atMs: Date.now() - t0, bytes: await copiedBytesTotal(cluster, survivors) }];
  const done = await waitRestored({ cluster, survivors, volume, ownersOf, t0, timeoutMs, copiedSamples });
  const copies = await cluster.blocksOf(peer, volume.id);
  const bytes = dataBytes(copies, volume);
  const seconds = done.copiesCompleteMs / 1000;
  return {
    rateNote,
    peer: { label: peer.label, uuid: peer.uuid },
    blocksMoved: copies.length,
    bytesMoved: bytes,
    seconds,
    mbPerSec: bytes / seconds / 1e6,
    copying: copyingFigures(copiedSamples),
    check: done.check,
  };
}

/** The copy phase alone: when it started and ended (s since the kill or start) and its rate in MB/s. */
function copyingFigures(samples) {
  const w = copyWindow(samples);
  if (!w) return null;
  const seconds = (w.endMs - w.startMs) / 1000;
  return { startedAfterSeconds: w.startMs / 1000, endedAfterSeconds: w.endMs / 1000, seconds, bytes: w.bytes, mbPerSec: w.bytes / seconds / 1e6 };
}

/**
 * The plain-copy baseline: `cp` of a file as large as the volume to a new file on the same
 * disk, then `sync` of that file (fsync: torus makes each copied block
 * durable too). The source was written before and may be in the page
 * cache, as torus's blocks are.
 */
export async function measureFileCopy({ src, work, rounds }) {
  const bytes = statSync(src).size;
  await runOk('sync', []);
  const seconds = [];
  for (let i = 0; i < rounds; i++) {
    const dst = path.join(work, `cp-baseline-${i}.img`);
    const t0 = process.hrtime.bigint();
    await runOk('cp', [src, dst], { timeoutMs: 600_000 });
    await runOk('sync', [dst], { timeoutMs: 600_000 });
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
    rmSync(dst, { force: true });
    await runOk('sync', []);
  }
  const mbPerSec = summarize(seconds.map((s) => bytes / s / 1e6));
  return { command: `cp SRC DST && sync DST`, bytes, seconds, mbPerSec };
}
