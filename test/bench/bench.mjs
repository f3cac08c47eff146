#!/usr/bin/env node
// `npm run bench` (through run.sh): the same fio jobs (--ioengine=nbd)
// against
//   nbdkit-file    nbdkit's file plugin, the reference, on the same disk
//   nbdkit-memory  nbdkit's memory plugin  } ceilings of NBD over loopback
//   nbdkit-null    nbdkit's null plugin    } on this machine
//   torusd         one torusd, replication 1
//   torusd-r2      three torusd on one etcd, replication 2, write level all;
//                  fio talks NBD to the first peer
// in one run, interleaved: every round runs every job on every target, the
// order of targets rotating from round to round. Reported: median and
// spread over rounds, issue 7's ratios, peak RSS per target, honesty checks
// of the replicated cluster (nothing degraded, every block exactly R equal
// copies on its owners), and the time to re-replicate the volume after a
// peer is force-removed, next to a plain file copy. See README "Benchmark".
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs, resolveConfig, USAGE } from './lib/config.mjs';
import { checkCopies, describeCheck } from './lib/copies.mjs';
import { FILL_JOB, JOBS, figureOf, fioArgs, readFio } from './lib/fio.mjs';
import { NbdkitTarget } from './lib/nbdkit.mjs';
import { BenchError, logTail, run, runOk, sleep, Supervisor } from './lib/procs.mjs';
import {
  coresTable,
  ceilingTable,
  cpuCeilings,
  goalTally,
  IDLE_CORES_MAX,
  idleLines,
  idleVerdicts,
  latencyTable,
  pairedTable,
  ratios,
  ratioTable,
  RSS_MAX_BYTES,
  rssLines,
  rssVerdicts,
  spreadWarnings,
  throughputTable,
} from './lib/report.mjs';
import { measureFileCopy, measureJoin, measureRebuild } from './lib/rebuild.mjs';
import { coresOver, cpuSeconds, treeCpuSeconds } from './lib/cpu.mjs';
import { descendantsOf, RssSampler } from './lib/rss.mjs';
import { describeDataFs, freePageReporting, hostPhrase, warmFreePages } from './lib/host.mjs';
import { median, SPREAD_WARN, summarize } from './lib/stats.mjs';
import { quietState, TorusCluster } from './lib/torus.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DISK_FREE_MIN_BYTES = 16 * 2 ** 30;
/**
 * torusd counters read from every peer after every job.
 * violation: must stay 0 on a healthy cluster (the bench fails): a change
 *   acknowledged without every owner, or not at all; an owner recorded
 *   stale; a checksum failure; an error reply to the NBD client.
 * anomaly: should stay 0 on a healthy, quiet cluster; loud warning: copies
 *   found different at one version, copies repaired.
 * activity: background work (scrub, copies) that ran alongside the jobs.
 */
const METRICS = {
  violation: [
    'torus_replication_degraded_changes_total',
    'torus_replication_failed_changes_total',
    'torus_replication_stale_recorded_total',
    'torus_store_crc_failures_total',
    'torus_nbd_errors_total',
  ],
  anomaly: ['torus_replication_divergent_blocks_total', 'torus_replication_repaired_blocks_total'],
  activity: ['torus_replication_scrubbed_blocks_total', 'torus_replication_copied_bytes_total', 'torus_replication_moved_blocks_total', 'torus_replication_caught_up_blocks_total'],
};
const ALL_METRICS = [...METRICS.violation, ...METRICS.anomaly, ...METRICS.activity];

const benchStart = Date.now();
const say = (msg) => {
  const s = Math.round((Date.now() - benchStart) / 1000);
  console.log(`bench [${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}]: ${msg}`);
};

let cfg;
try {
  const args = parseArgs(process.argv.slice(2), process.env);
  if (args.help) {
    console.log(USAGE);
    process.exit(0);
  }
  cfg = resolveConfig(args.env, REPO);
  // run.sh works from the repository root; a relative --json names a file where the caller was.
  cfg.out = path.resolve(process.env.BENCH_CALLER_CWD || process.cwd(), cfg.out);
} catch (err) {
  console.error(`bench: ${err.message}\n\n${USAGE}`);
  process.exit(2);
}

const sup = new Supervisor({ say });
const sampler = new RssSampler({ intervalMs: 200 });
mkdirSync(cfg.dir, { recursive: true });
const work = mkdtempSync(path.join(cfg.dir, 'run-'));
// Where the host takes free pages back, each prefill starts on pages just freed (runFio).
const pageReporting = freePageReporting();
const warmPages = pageReporting !== false;
/** Beyond the device's size: the prefill's own pages plus the server's other writes (headers, logs). */
const WARM_EXTRA_MIB = 256;
mkdirSync(path.join(work, 'fio'));

let exiting = false;
async function shutdown(code) {
  if (exiting) return;
  exiting = true;
  sampler.stop();
  await sup.stopAll();
  if (cfg.keep) {
    say(`run folder kept: ${work}`);
  } else if (code !== 0) {
    // Keep what explains the failure (logs, fio output), not the gigabytes of data.
    for (const name of readdirSync(work)) {
      if (/\.img$|-data$|-etcd$/.test(name)) rmSync(path.join(work, name), { recursive: true, force: true });
    }
    say(`logs and fio output kept in ${work}`);
  } else {
    rmSync(work, { recursive: true, force: true });
  }
  process.exit(code);
}
process.on('SIGINT', () => {
  say('interrupted; stopping everything');
  void shutdown(130);
});
process.on('SIGTERM', () => void shutdown(143));

main().then(
  (code) => shutdown(code),
  (err) => {
    // After Ctrl-C, what fails is the work being torn down: not worth a message.
    if (exiting) return;
    console.error(`bench: error: ${err instanceof BenchError ? err.message : err?.stack ?? err}`);
    void shutdown(1);
  },
);

// ---------------------------------------------------------------------------

async function main() {
  const startedAt = Date.now();
  const loadAtStart = os.loadavg();
  const { ownersOf } = await import(pathToFileURL(path.join(REPO, 'dist/src/replication/owners.js')).href);
  const fs = statfsSync(work);
  const freeBytes = Number(fs.bavail) * Number(fs.bsize);
  if (freeBytes < DISK_FREE_MIN_BYTES) throw new BenchError(`${(freeBytes / 2 ** 30).toFixed(1)} GiB free under ${work}; the bench needs ${DISK_FREE_MIN_BYTES / 2 ** 30} GiB`);
  say(`work folder ${work} (${(freeBytes / 2 ** 30).toFixed(0)} GiB free on its disk)`);
  if (warmPages) say(`free page reporting ${pageReporting ? 'on' : 'unknown'}: each prefill starts right after ${cfg.sizeMiB + WARM_EXTRA_MIB} MiB written to a file and deleted, so every target writes into pages just freed`);
  say(
    `${cfg.rounds} round(s) x ${JOBS.length} jobs x ${cfg.targets.length} targets, ${cfg.seconds} s per timed job after ${cfg.rampSeconds} s ramp` +
      `${cfg.quick ? ' (quick)' : ''}; idle CPU over ${cfg.idleSeconds} s; re-replication: ${cfg.rebuild === '0' ? 'skipped' : cfg.rebuild}`,
  );
  sampler.start();
  sampler.setPhase('setup');

  // --- targets ---------------------------------------------------------------
  const targets = [];
  const honesty = { violations: [], anomalies: [], checks: [], activity: {} };
  for (const plugin of ['file', 'memory', 'null']) {
    const name = `nbdkit-${plugin}`;
    if (!cfg.targets.includes(name)) continue;
    const t = new NbdkitTarget({ name, plugin, work, sup, sampler, size: `${cfg.sizeMiB}M` });
    await t.start();
    say(`${name} ready: ${t.mainCommandLine}`);
    targets.push(nbdkitTarget(t));
  }
  const clusters = [];
  let frontLocality = null;
  if (cfg.targets.includes('torusd')) {
    const c = new TorusCluster({ name: 'torusd', repo: REPO, work, sup, sampler, say, replication: 1, size: cfg.torusSize });
    await c.startEtcd();
    const p = await c.addPeer();
    await c.waitRingOf([p]);
    const volume = await c.createVolume('bench', volumeSize());
    say(`torusd ready: NBD ${p.nbd}, replication 1, volume bench (id ${volume.id})`);
    clusters.push(c);
    targets.push(torusTarget(c, volume, p, honesty, ownersOf));
  }
  if (cfg.targets.includes('torusd-r2')) {
    const c = new TorusCluster({ name: 'torusd-r2', repo: REPO, work, sup, sampler, say, replication: 2, size: cfg.torusSize, peerArgs: ['--write-level', 'all'] });
    await c.startEtcd();
    // One at a time: each --auto-join is a ring transition.
    for (let i = 0; i < 3; i++) {
      await c.addPeer();
      await c.waitRingOf(c.peers);
    }
    const volume = await c.createVolume('bench', volumeSize());
    const front = c.peers[0];
    const ring = await c.ring();
    let local = 0;
    for (let index = 0; index < volume.blocks; index++) {
      if (ownersOf(ring, { volumeId: volume.id, generation: volume.generation, index }).now.includes(front.uuid)) local++;
    }
    frontLocality = { peer: front.label, ownedBlocks: local, blocks: volume.blocks };
    say(
      `torusd-r2 ready: 3 peers, replication 2, write level all; fio connects to ${front.label} (NBD ${front.nbd}), volume bench (id ${volume.id}). ` +
        `${front.label} owns ${local} of its ${volume.blocks} blocks: every write also goes to another peer over the peer protocol, and reads of the other ${volume.blocks - local} blocks do`,
    );
    clusters.push(c);
    targets.push(torusTarget(c, volume, front, honesty, ownersOf));
  }
  const quietWarnings = [];
  const quietWaits = [];
  const quiesce = async (label) => {
    const waits = await Promise.all(clusters.map((c) => c.waitBalanced(cfg.quietTimeoutS * 1000).then((w) => ({ cluster: c.name, ...w }))));
    for (const w of waits) {
      delete w.status;
      if (!w.ok) {
        const msg = `${w.cluster} was still busy after ${cfg.quietTimeoutS}s before ${label} (${w.because.join('; ')}); ran anyway`;
        say(`WARNING: ${msg}`);
        quietWarnings.push(msg);
      }
    }
    return waits;
  };

  // --- warm-up: the same fill on every target ---------------------------------
  sampler.setPhase('fill');
  const fills = {};
  for (const t of targets) {
    await quiesce(`${t.name} fill`);
    say(`fill ${t.name}: one sequential 1 MiB pass over ${sizeText()}`);
    fills[t.name] = await runFio(t, FILL_JOB, t.uri(), 0);
    await t.checkAfter?.(FILL_JOB.name, 0, t.volume, true);
  }
  for (const c of clusters) {
    const w = await c.waitBalanced(cfg.quietTimeoutS * 1000);
    say(`${c.name}: background check of the filled volume ${w.ok ? `done after ${(w.waitedMs / 1000).toFixed(1)} s` : `NOT done after ${cfg.quietTimeoutS} s`}`);
    if (!w.ok) quietWarnings.push(`${c.name}: not balanced ${cfg.quietTimeoutS}s after the fill (${w.because.join('; ')})`);
  }

  // --- rounds ------------------------------------------------------------------
  sampler.setPhase('jobs');
  const results = Object.fromEntries(JOBS.map((j) => [j.name, Object.fromEntries(targets.map((t) => [t.name, []]))]));
  for (let round = 1; round <= cfg.rounds; round++) {
    // Rotate the order of targets each round, so no target always runs right after the same one.
    const order = targets.map((_, i) => targets[(i + round - 1) % targets.length]);
    for (const job of JOBS) {
      for (const t of order) {
        const device = job.fresh ? await t.fresh(round) : { uri: t.uri(), volume: t.volume, release: async () => {} };
        const waits = await quiesce(`${job.name} on ${t.name}`);
        quietWaits.push(...waits.map((w) => w.waitedMs));
        say(`round ${round}/${cfg.rounds} ${job.name}: ${t.name}`);
        // Each job is its own phase: the RSS report names the job a peak came in.
        sampler.setPhase(`jobs:${job.name}`);
        const r = await runFio(t, job, device.uri, round);
        results[job.name][t.name].push(r);
        await t.checkAfter?.(job.name, round, device.volume, job.fresh);
        await device.release();
      }
    }
  }

  // --- the replicated run ends clean ----------------------------------------------
  sampler.setPhase('checks');
  for (const t of targets) await t.finalCheck?.();

  // --- idle CPU ---------------------------------------------------------------------
  // After the load, once every cluster is quiet: the state a torusd spends
  // most of its life in. Nothing polls the targets during the window.
  let idle = null;
  if (cfg.idleSeconds > 0) {
    sampler.setPhase('idle');
    await quiesce('the idle window');
    say(`idle CPU: ${cfg.idleSeconds} s with no client and no polling of any target`);
    idle = await measureIdle(targets, cfg.idleSeconds);
  }

  // --- re-replication -------------------------------------------------------------
  const r2 = clusters.find((c) => c.name === 'torusd-r2');
  const rebuild = { mode: cfg.rebuild, runs: [], join: null, fileCopy: null };
  if (r2 && cfg.rebuild !== '0') {
    sampler.setPhase('rebuild');
    const volume = targets.find((t) => t.name === 'torusd-r2').volume;
    const timeoutMs = cfg.rebuildTimeoutS * 1000;
    say(`re-replication: restarting the torusd-r2 peers with --rebalance-rate ${cfg.rebuildRate} so the rate is not the limit`);
    for (const p of r2.peers) {
      await r2.restartPeer(p, ['--rebalance-rate', cfg.rebuildRate]);
      p.rebalanceRate = cfg.rebuildRate;
    }
    await r2.waitRingOf(r2.live());
    await settleAndCheck(r2, volume, 'after restarting with a high rebalance rate', honesty, ownersOf);
    const fast = await measureRebuild({ cluster: r2, volume, victim: r2.peers[2], ownersOf, timeoutMs, say, rateNote: `--rebalance-rate ${cfg.rebuildRate}` });
    rebuild.runs.push(fast);
    reportRebuildRun(fast, honesty);
    await settleAndCheck(r2, volume, `after re-replication (${fast.rateNote})`, honesty, ownersOf);
    if (cfg.rebuild === 'both') {
      say('re-replication at the default rate: restarting the survivors without --rebalance-rate, then a fresh peer joins');
      for (const p of r2.live()) {
        await r2.restartPeer(p, []);
        p.rebalanceRate = 'default (100MiB)';
      }
      await r2.waitRingOf(r2.live());
      await settleAndCheck(r2, volume, 'after restarting at the default rate', honesty, ownersOf);
      rebuild.join = await measureJoin({ cluster: r2, volume, ownersOf, extraArgs: [], timeoutMs, say, rateNote: 'default (100MiB)' });
      say(`join: ${(rebuild.join.bytesMoved / 1e6).toFixed(0)} MB moved to the new peer in ${rebuild.join.seconds.toFixed(1)} s = ${rebuild.join.mbPerSec.toFixed(1)} MB/s`);
      await settleAndCheck(r2, volume, 'after the join', honesty, ownersOf);
      const victim = r2.live().at(-1);
      const slow = await measureRebuild({ cluster: r2, volume, victim, ownersOf, timeoutMs, say, rateNote: 'default --rebalance-rate (100MiB)' });
      rebuild.runs.push(slow);
      reportRebuildRun(slow, honesty);
      await settleAndCheck(r2, volume, `after re-replication (${slow.rateNote})`, honesty, ownersOf);
    }
    const src = targets.find((t) => t.name === 'nbdkit-file')?.imagePath ?? (await makeCopySource());
    say(`plain file copy baseline: cp of ${src} (${sizeText()}) + sync of the copy, ${Math.max(3, cfg.rounds)} times`);
    rebuild.fileCopy = await measureFileCopy({ src, work, rounds: Math.max(3, cfg.rounds) });
  }
  sampler.setPhase('end');
  sampler.stop();

  // --- report -----------------------------------------------------------------------
  const names = targets.map((t) => t.name);
  const jobs = JOBS.map((job) => {
    const figures = {};
    const p99 = {};
    const cores = {};
    const fioCores = {};
    for (const t of names) {
      const rs = results[job.name][t];
      if (rs.length === 0) continue;
      figures[t] = summarize(rs.map((r) => figureOf(job, r)));
      p99[t] = median(rs.map((r) => r.clatP99Us).filter((x) => x != null));
      cores[t] = median(rs.map((r) => r.targetCores));
      fioCores[t] = median(rs.map((r) => r.fioCores).filter((x) => x != null));
    }
    return { job, figures, p99, cores, fioCores };
  });
  const ratioRows = ratios(jobs);
  const cpuCount = os.cpus().length;
  const ceilingRows = cpuCeilings(jobs, cpuCount);
  const warnings = spreadWarnings(jobs);
  const rss = sampler.report();
  const rssV = rssVerdicts(rss);
  const idleV = idleVerdicts(idle);
  const tally = goalTally(ratioRows, rssV, idleV);
  const elapsedS = (Date.now() - startedAt) / 1000;
  const machine = { ...(await describeMachine(work)), loadAvgAtStart: loadAtStart };

  console.log();
  console.log(`Throughput: median of ${cfg.rounds} round(s) and spread (max-min)/median; 4 KiB jobs in IOPS, 1 MiB jobs in MiB/s; '!' spread > ${SPREAD_WARN * 100}%`);
  console.log(throughputTable(jobs, names));
  console.log();
  console.log(latencyTable(jobs, names));
  console.log();
  console.log(coresTable(jobs, names));
  console.log();
  console.log(ceilingTable(ceilingRows, names, cpuCount));
  console.log('ABOVE: issue 7 asks that target of it in this run, and this machine cannot give it at the CPU per unit it used.');
  console.log();
  console.log('Ratios of medians (issue 7). torusd/file: single peer vs nbdkit file, target ≥1.0 on every job.');
  console.log('replicated: torusd-r2 (3 peers, R=2, write level all) vs its target: reads vs single-peer torusd, sequential writes vs nbdkit file ÷ 2, random writes vs nbdkit file.');
  console.log('Ceilings: nbdkit memory and nbdkit null are NBD over loopback with (almost) no storage behind it.');
  console.log(ratioTable(ratioRows));
  if (cfg.rounds > 1) {
    console.log();
    console.log(pairedTable(ratioRows));
  }
  for (const w of warnings) {
    console.log(`WARNING: spread ${Math.round(w.spread * 100)}% > ${SPREAD_WARN * 100}%: ${w.job} on ${w.target} (rounds: ${w.rounds.map((v) => (w.unit === 'IOPS' ? Math.round(v) : (v / 2 ** 20).toFixed(0))).join(', ')} ${w.unit})`);
  }
  for (const w of quietWarnings) console.log(`WARNING: ${w}`);
  console.log();
  console.log(`Peak RSS, sampled from /proc every ${rss.intervalMs} ms through the whole bench, summed over each target's processes (VmHWM: the kernel's per-process peak):`);
  for (const l of rssLines(rss, names, RSS_MAX_BYTES)) console.log(l);
  if (idle) {
    console.log();
    console.log(`Idle CPU after the jobs, averaged over ${idle.seconds.toFixed(0)} s with no client (issue 7: torusd ≤ ${IDLE_CORES_MAX * 100}% of a core; % of one core, each process with its children and threads):`);
    for (const l of idleLines(idle, names)) console.log(l);
  }
  console.log();
  console.log('nbdkit command lines (exactly as run):');
  for (const t of targets.filter((x) => x.nbdkit)) {
    console.log(`  ${t.name}: ${t.nbdkit.mainCommandLine}`);
    if (t.nbdkit.freshCommandLines.length > 0) console.log(`  ${t.name} prefill round 1 (fresh): ${t.nbdkit.freshCommandLines[0]}`);
  }
  for (const c of clusters) console.log(`  ${c.name} peer 1: ${c.commandLines[0]}`);
  console.log();
  printHonesty(honesty, clusters);
  if (rebuild.runs.length > 0 || rebuild.fileCopy) printRebuild(rebuild);
  console.log();
  console.log(
    `machine: ${machine.cpus} CPUs (${machine.cpuModel}), ${(machine.memoryBytes / 2 ** 30).toFixed(1)} GiB RAM, load average ${machine.loadAvgAtStart.map((x) => x.toFixed(1)).join(' ')} at start, ${machine.loadAvg.map((x) => x.toFixed(1)).join(' ')} at end, ` +
      `kernel ${machine.kernel}, crc32c ${machine.crc32c}, ${hostPhrase(machine.dataFs, machine.freePageReporting)}; ${Object.entries(machine.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`,
  );
  console.log(`${cfg.seconds} s per timed job after ${cfg.rampSeconds} s ramp, ${cfg.rounds} round(s); the bench took ${(elapsedS / 60).toFixed(1)} min; JSON in ${shortPath(cfg.out)}`);

  console.log();
  console.log(`Issue 7 targets: ${tally.met} of ${tally.total} met in this run${tally.missed.length ? `; missed: ${tally.missed.join('; ')}` : ''}`);
  const missed = tally.missed;
  const report = {
    generatedAt: new Date().toISOString(),
    elapsedSeconds: elapsedS,
    config: { ...cfg, out: undefined },
    machine,
    targets: Object.fromEntries(
      targets.map((t) => [t.name, { role: t.role, commandLines: t.nbdkit ? [t.nbdkit.mainCommandLine, ...t.nbdkit.freshCommandLines] : t.cluster.commandLines }]),
    ),
    fill: fills,
    jobs: jobs.map(({ job, figures, p99, cores, fioCores }) => ({
      job: job.name,
      kind: job.kind,
      unit: job.unit,
      fio: job.args,
      figures,
      p99Us: p99,
      targetCores: cores,
      fioCores,
      rounds: Object.fromEntries(names.map((t) => [t, results[job.name][t]])),
    })),
    ratios: ratioRows,
    cpuCeilings: { cpus: cpuCount, jobs: ceilingRows },
    targetsMissed: missed,
    spreadWarnings: warnings,
    quiet: { warnings: quietWarnings, waitMsMedian: median(quietWaits), waitMsMax: quietWaits.length ? Math.max(...quietWaits) : null },
    peakRss: rss,
    rssVerdicts: rssV,
    idleCpu: idle,
    idleVerdicts: idleV,
    goals: tally,
    honesty,
    replicatedFront: frontLocality,
    rebuild,
  };
  mkdirSync(path.dirname(cfg.out), { recursive: true });
  writeFileSync(cfg.out, JSON.stringify(report, null, 2) + '\n');

  if (honesty.anomalies.length > 0) {
    console.log();
    console.log(
      `WARNING: ${honesty.anomalies.length} anomal${honesty.anomalies.length === 1 ? 'y' : 'ies'} in torusd on a healthy cluster ` +
        `(copies counted different or repaired, stale records left behind); listed above and in honesty.anomalies in the JSON`,
    );
  }
  if (honesty.violations.length > 0) {
    console.log();
    console.log('!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!');
    console.log(`!!! REPLICATION CHECK FAILED: ${honesty.violations.length} violation(s); figures above are not trustworthy`);
    for (const v of honesty.violations.slice(0, 30)) console.log(`!!! ${v}`);
    console.log('!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!');
    return 1;
  }
  if (cfg.strict && missed.length > 0) {
    console.log(`BENCH_STRICT: ${missed.length} issue-7 target(s) missed: ${missed.join(', ')}`);
    return 3;
  }
  return 0;

  // --- helpers that need main's state -------------------------------------------------

  async function runFio(t, job, uri, round) {
    // No writeback from the previous job (another target's, maybe) during this one.
    await runOk('sync', [], { timeoutMs: 600_000 });
    // A prefill writes into pages the page cache does not hold: every target
    // gets just-freed ones (lib/host.mjs, warmFreePages), not what the job
    // before it happened to leave.
    if (job.fresh && warmPages) await warmFreePages(work, (cfg.sizeMiB + WARM_EXTRA_MIB) * 1024 * 1024);
    const out = path.join(work, 'fio', `${t.name}-${job.name}-r${round}.json`);
    const args = fioArgs(job, uri, { outFile: out, seconds: cfg.seconds, rampSeconds: cfg.rampSeconds, sizeMiB: cfg.sizeMiB });
    const procs = t.processes().filter((p) => !p.done);
    const cpu0 = cpuSeconds(procs.map((p) => p.pid));
    const t0 = process.hrtime.bigint();
    const h = sup.start(`fio ${job.name} ${t.name}`, 'fio', args, { logFile: out.replace(/\.json$/, '.stdout') });
    const { code } = await h.exited;
    const wallSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu1 = cpuSeconds(procs.map((p) => p.pid));
    if (code !== 0) {
      const gone = t.processes().filter((p) => p.done);
      throw new BenchError(
        `fio ${job.name} against ${t.name} failed (exit ${code}):\n${logTail(h.logFile)}` +
          gone.map((p) => `\n${p.name} is gone (code ${p.exitCode}, signal ${p.exitSignal}); its log:\n${logTail(p.logFile)}`).join(''),
      );
    }
    const cpuByProcess = Object.fromEntries(procs.map((p) => [p.name, cpu1[p.pid] - cpu0[p.pid]]));
    const targetCpuSeconds = Object.values(cpuByProcess).reduce((a, b) => a + b, 0);
    return { ...readFio(out), wallSeconds, targetCpuSeconds, targetCores: targetCpuSeconds / wallSeconds, cpuByProcess };
  }

  /**
   * CPU of every target's processes (each with the processes it spawned)
   * over `seconds` of idling. The process trees are taken once, before the
   * window, and read at both ends.
   */
  async function measureIdle(ts, seconds) {
    const byTarget = ts.map((t) => ({ t, procs: t.processes().filter((p) => !p.done) }));
    const roots = byTarget.flatMap((x) => x.procs.map((p) => p.pid));
    const trees = descendantsOf(roots);
    const cpu0 = treeCpuSeconds(roots, trees);
    const t0 = process.hrtime.bigint();
    await sleep(seconds * 1000);
    const cpu1 = treeCpuSeconds(roots, trees);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const cores = coresOver(cpu0, cpu1, wall);
    const out = { seconds: wall, targets: {} };
    for (const { t, procs } of byTarget) {
      const processes = Object.fromEntries(procs.map((p) => [p.name, cores[p.pid]]));
      out.targets[t.name] = { processes, totalCores: Object.values(processes).reduce((a, b) => a + b, 0) };
    }
    return out;
  }

  function reportRebuildRun(r, h) {
    say(
      `re-replication (${r.rateNote}): ${(r.bytesToCopy / 1e6).toFixed(0)} MB in ${r.seconds.toFixed(1)} s = ${r.mbPerSec.toFixed(1)} MB/s ` +
        `(ring stable after ${r.ringStableSeconds.toFixed(1)} s; torusd counted ${(r.torusCopiedBytes / 1e6).toFixed(0)} MB copied)`,
    );
    h.checks.push({ what: `after re-replication (${r.rateNote})`, cluster: 'torusd-r2', copies: r.check });
    if (!r.check.ok) h.violations.push(`torusd-r2 after re-replication: ${describeCheck('bench volume', r.check)}`);
  }
}

// ---------------------------------------------------------------------------

function nbdkitTarget(t) {
  return {
    name: t.name,
    role: t.plugin === 'file' ? 'reference' : 'ceiling',
    nbdkit: t,
    volume: null,
    imagePath: t.plugin === 'file' ? t.main.file : null,
    uri: () => t.uri(),
    fresh: (round) => t.startFresh(round),
    processes: () => t.handles.filter((h) => !h.done),
  };
}

/**
 * A torus target: fio connects to `front` for the volume. After every job
 * the copies of the volume it used are checked on every peer against the
 * ring, and the peers' replication counters must not have moved.
 */
function torusTarget(c, volume, front, honesty, ownersOf) {
  let lastCounters = null;
  const counters = async () => {
    const per = {};
    for (const p of c.live()) {
      const m = await c.metrics(p);
      per[p.label] = honestyCounters(m);
    }
    return per;
  };
  return {
    name: c.name,
    role: c.replication > 1 ? 'replicated' : 'single',
    cluster: c,
    volume,
    uri: () => `nbd://${front.nbd}/${volume.name}`,
    processes: () => c.peers.map((p) => p.handle),
    async fresh(round) {
      const v = await c.createVolume(`prefill-${round}`, volumeSize());
      return {
        uri: `nbd://${front.nbd}/${v.name}`,
        volume: v,
        release: () => c.deleteVolume(v.name),
      };
    },
    async checkAfter(job, round, vol, expectFull) {
      const [ring, copies, now] = await Promise.all([c.ring(), c.copiesByPeer(vol.id), counters()]);
      const check = checkCopies({ volume: vol, ring, copiesByPeer: copies, replication: c.replication, expectFull, ownersOf });
      const moved = { violation: [], anomaly: [] };
      const activity = Object.fromEntries(METRICS.activity.map((k) => [k, 0]));
      for (const [peer, m] of Object.entries(now)) {
        for (const k of ALL_METRICS) {
          const before = lastCounters?.[peer]?.[k] ?? 0;
          if (m[k] <= before) continue;
          if (k in activity) activity[k] += m[k] - before;
          else moved[METRICS.violation.includes(k) ? 'violation' : 'anomaly'].push(`${peer} ${k} ${before} -> ${m[k]}`);
        }
      }
      lastCounters = now;
      (honesty.activity[c.name] ??= []).push({ job, round, ...activity });
      honesty.checks.push({ cluster: c.name, job, round, volume: vol.name, copies: { ...check, problems: check.problems.slice(0, 5) }, counters: now });
      if (!check.ok) {
        const msg = `${c.name} after ${job} round ${round}: ${describeCheck(`volume ${vol.name}`, check)}; first: ${check.problems.slice(0, 3).join(' | ')}`;
        say(`ERROR: ${msg}`);
        honesty.violations.push(msg);
      }
      if (moved.violation.length > 0) {
        const msg = `${c.name} during ${job} round ${round}: ${moved.violation.join(', ')}`;
        say(`ERROR: ${msg}`);
        honesty.violations.push(msg);
      }
      if (moved.anomaly.length > 0) {
        const msg = `${c.name} during ${job} round ${round}: ${moved.anomaly.join(', ')}`;
        say(`WARNING: ${msg}`);
        honesty.anomalies.push(msg);
      }
    },
    async finalCheck() {
      await settleAndCheck(c, volume, 'after the jobs', honesty, ownersOf);
    },
  };
}

/**
 * Waits for the cluster to be quiet, then: no stale replica, nothing
 * degraded (cluster status), every block of the volume R equal copies on
 * its owners, and the replication counters all zero.
 */
async function settleAndCheck(c, volume, what, honesty, ownersOf) {
  const w = await c.waitBalanced(cfg.quietTimeoutS * 1000);
  const status = w.status ?? (await c.status());
  const q = quietState(status);
  const ring = await c.ring();
  const check = checkCopies({ volume, ring, copiesByPeer: await c.copiesByPeer(volume.id), replication: c.replication, expectFull: true, ownersOf });
  const counters = {};
  for (const p of c.live()) {
    const m = await c.metrics(p);
    counters[p.label] = honestyCounters(m);
  }
  const { status: _omit, ...wait } = w;
  honesty.checks.push({ cluster: c.name, what, balanced: wait, stale: status.stale, degraded: status.degraded, down: status.down, copies: check, counters });
  say(`${c.name} ${what}: ${describeCheck(`volume ${volume.name}`, check)}; ${w.balanced ? 'balanced' : w.ok ? 'balanced but for stale records of removed peers' : `NOT balanced (${w.because.join('; ')})`}`);
  const problems = [];
  const oddities = [];
  if (!w.ok) problems.push(`not balanced after ${cfg.quietTimeoutS}s: ${w.because.join('; ')}`);
  const staleRow = (s) => `${s.volume} on ${s.peer.slice(0, 8)}: ${s.all ? 'ALL' : s.blocks} blocks`;
  if (q.memberStale.length > 0) problems.push(`stale replicas: ${q.memberStale.map(staleRow).join(', ')}`);
  if (q.degradedByOthers.length > 0) problems.push(`degraded volumes: ${q.degradedByOthers.map((d) => `${d.volume} (${d.shortBlocks} short, health ${d.healthShort})`).join(', ')}`);
  if (q.orphanStale.length > 0) {
    oddities.push(
      `stale record(s) naming peers that are no longer ring members, never cleared: ${q.orphanStale.map(staleRow).join(', ')}; ` +
        `cluster status counts them as short blocks (degraded: ${status.degraded.map((d) => `${d.volume} ${d.shortBlocks} short`).join(', ')}) and never says balanced`,
    );
  }
  if (!check.ok) problems.push(`${describeCheck(`volume ${volume.name}`, check)}; first: ${check.problems.slice(0, 3).join(' | ')}`);
  for (const [peer, m] of Object.entries(counters)) {
    for (const k of METRICS.violation) if (m[k] > 0) problems.push(`${peer} ${k} = ${m[k]}`);
  }
  for (const p of problems) {
    say(`ERROR: ${c.name} ${what}: ${p}`);
    honesty.violations.push(`${c.name} ${what}: ${p}`);
  }
  for (const o of oddities) {
    if (honesty.anomalies.some((a) => a.endsWith(o))) continue;
    say(`WARNING: ${c.name} ${what}: ${o}`);
    honesty.anomalies.push(`${c.name} ${what}: ${o}`);
  }
}

/** ALL_METRICS from one scrape, labelled series summed. */
function honestyCounters(metrics) {
  const out = Object.fromEntries(ALL_METRICS.map((k) => [k, 0]));
  for (const [series, v] of Object.entries(metrics)) {
    const name = series.replace(/\{.*$/, '');
    if (name in out) out[name] += v;
  }
  return out;
}

function printHonesty(honesty, clusters) {
  const r2 = clusters.find((c) => c.name === 'torusd-r2');
  for (const c of clusters) {
    const mine = honesty.checks.filter((x) => x.cluster === c.name);
    const failed = mine.filter((x) => !x.copies.ok);
    const last = mine.filter((x) => x.what).at(-1);
    console.log(
      `${c.name === 'torusd-r2' ? 'Replicated honesty' : 'Single-peer check'} (${c.name}, R=${c.replication}): copies checked ${mine.length} times (after every job, by count and against ownersOf on the ring): ` +
        `${failed.length === 0 ? 'all OK' : `${failed.length} FAILED`}` +
        (last ? `; last: ${describeCheck(`volume ${last.copies.volumeId}`, last.copies)}` : ''),
    );
  }
  if (r2) {
    const bad = honesty.violations.filter((v) => v.startsWith('torusd-r2'));
    console.log(`  on every peer, after every job: ${METRICS.violation.join(', ')}: ${bad.some((v) => /_total/.test(v)) ? 'MOVED (see the errors)' : 'all stayed 0'}`);
  }
  for (const c of clusters) {
    const acts = honesty.activity[c.name] ?? [];
    const scrubbing = acts.filter((a) => a.torus_replication_scrubbed_blocks_total > 0);
    const blocks = acts.reduce((n, a) => n + a.torus_replication_scrubbed_blocks_total, 0);
    console.log(
      `  ${c.name}: background work alongside the jobs: blocks scrubbed in ${scrubbing.length} of ${acts.length} job runs (${blocks} blocks in all), ` +
        `${(acts.reduce((n, a) => n + a.torus_replication_copied_bytes_total, 0) / 1e6).toFixed(0)} MB copied`,
    );
  }
  for (const a of honesty.anomalies) console.log(`  WARNING: ${a}`);
  console.log(`  violations: ${honesty.violations.length === 0 ? 'none' : honesty.violations.length}`);
}

function printRebuild(rebuild) {
  console.log();
  console.log(`Re-replication of the ${sizeText()} bench volume after kill -9 of one of 3 peers and \`torusctl peer remove --force --no-wait\` (R=2), MB = 10^6 bytes.`);
  console.log('  end to end: from the kill until the ring is stable and every block has 2 equal copies on its owners; copying: while torusd\'s copied-bytes counter moved (a lower bound on the copy rate)');
  const copying = (c) => (c ? `copying ${c.mbPerSec.toFixed(1)} MB/s (${c.startedAfterSeconds.toFixed(1)}-${c.endedAfterSeconds.toFixed(1)} s)` : 'copying: counter did not move');
  for (const r of rebuild.runs) {
    console.log(
      `  ${r.rateNote.padEnd(36)} ${(r.bytesToCopy / 1e6).toFixed(0)} MB (${r.blocksLost} blocks) in ${r.seconds.toFixed(1)} s = ${r.mbPerSec.toFixed(1)} MB/s end to end; ${copying(r.copying)}` +
        `; ring stable after ${r.ringStableSeconds.toFixed(1)} s; survivors used ${r.survivorCores.toFixed(2)} cores; ${r.check.ok ? 'every block 2 equal copies after' : 'COPIES WRONG after'}`,
    );
  }
  if (rebuild.join) {
    const j = rebuild.join;
    console.log(`  join of a fresh peer (${j.rateNote}): ${(j.bytesMoved / 1e6).toFixed(0)} MB moved to it in ${j.seconds.toFixed(1)} s (from its start) = ${j.mbPerSec.toFixed(1)} MB/s end to end; ${copying(j.copying)}`);
  }
  if (rebuild.fileCopy) {
    const f = rebuild.fileCopy;
    const first = rebuild.runs[0];
    console.log(
      `  plain file copy (${f.command}, ${sizeText()}, same disk): ${f.mbPerSec.median.toFixed(0)} MB/s (median of ${f.seconds.length}, spread ${Math.round(f.mbPerSec.spread * 100)}%)` +
        (first ? `; torus / cp: ${(first.mbPerSec / f.mbPerSec.median).toFixed(3)} end to end` : '') +
        (first?.copying ? `, ${(first.copying.mbPerSec / f.mbPerSec.median).toFixed(3)} copying` : ''),
    );
  }
}

/** A path relative to the current folder when it lies below it, else absolute. */
function shortPath(p) {
  const rel = path.relative(process.cwd(), p);
  return rel && !rel.startsWith('..') ? rel : p;
}

function volumeSize() {
  return `${cfg.sizeMiB}MiB`;
}

function sizeText() {
  return cfg.sizeMiB % 1024 === 0 ? `${cfg.sizeMiB / 1024} GiB` : `${cfg.sizeMiB} MiB`;
}

async function makeCopySource() {
  const file = path.join(work, 'cp-source.img');
  await runOk('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${cfg.sizeMiB}`, 'status=none'], { timeoutMs: 600_000 });
  return file;
}

async function crc32cVariant() {
  try {
    const { crc32cDescription } = await import(pathToFileURL(path.join(REPO, 'dist/src/util/crc32c.js')).href);
    return crc32cDescription();
  } catch (err) {
    return `unknown (${err.message})`;
  }
}

async function describeMachine(dir) {
  const version = async (cmd, args, pick) => {
    try {
      const r = await run(cmd, args, { timeoutMs: 10_000 });
      return r.code === 0 ? pick(r.stdout.trim()) : null;
    } catch {
      return null;
    }
  };
  return {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model?.trim() ?? 'unknown',
    memoryBytes: os.totalmem(),
    loadAvg: os.loadavg(),
    kernel: os.release(),
    // How torusd sums its CRCs here (the addon's pick for this CPU): figures
    // from a machine with AVX-512 folding and one without differ.
    crc32c: await crc32cVariant(),
    // Two host properties that move the write figures (lib/host.mjs says how much).
    dataFs: describeDataFs(dir),
    freePageReporting: pageReporting,
    versions: {
      node: process.version,
      fio: await version('fio', ['--version'], (s) => s.replace(/^fio-/, '')),
      nbdkit: await version('nbdkit', ['--version'], (s) => s.split(/\s+/)[1] ?? s),
      etcd: await version('etcd', ['--version'], (s) => /etcd Version: (\S+)/.exec(s)?.[1] ?? s.split('\n')[0]),
    },
  };
}

