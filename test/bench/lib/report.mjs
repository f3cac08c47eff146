// Turns the bench's measurements into the printed tables and the issue-7
// ratios. Pure apart from the console.log calls in print*().
import { ratio, SPREAD_WARN, summarize } from './stats.mjs';

const MiB = 2 ** 20;

/**
 * Issue 7's targets for the replicated cluster, by kind of job: torusd-r2
 * must reach `min` x `base` of the job's medians by target.
 */
export const REPLICATED_TARGETS = {
  read: { label: 'r2/torusd', min: 0.9, base: (m) => m.torusd ?? null },
  seqwrite: { label: 'r2/(file÷2)', min: 0.9, base: (m) => (m['nbdkit-file'] == null ? null : m['nbdkit-file'] / 2) },
  random: { label: 'r2/file', min: 0.5, base: (m) => m['nbdkit-file'] ?? null },
};
export const SINGLE_TARGET_MIN = 1.0;

/**
 * jobs: [{ job, figures: { target: summary } }] where summary is
 * stats.summarize() of the job's figure per round. Returns the ratio rows
 * and the verdicts.
 */
export function ratios(jobs) {
  return jobs.map(({ job, figures }) => {
    const m = Object.fromEntries(Object.entries(figures).map(([t, s]) => [t, s.median]));
    const rep = REPLICATED_TARGETS[job.kind];
    const single = ratio(m.torusd, m['nbdkit-file']);
    const replicatedOf = (x) => ratio(x['torusd-r2'], rep.base(x));
    const replicated = replicatedOf(m);
    // The same ratios round by round (targets of one round ran minutes apart at most): a second view on a noisy machine.
    const rounds = Math.max(0, ...Object.values(figures).map((f) => f.rounds.length));
    const perRound = (of) => {
      const out = [];
      for (let i = 0; i < rounds; i++) {
        const mi = Object.fromEntries(Object.entries(figures).map(([t, f]) => [t, f.rounds[i] ?? null]));
        const r = of(mi);
        if (r != null) out.push(r);
      }
      return out.length ? summarize(out) : null;
    };
    return {
      job: job.name,
      single: { label: 'torusd/file', value: single, min: SINGLE_TARGET_MIN, met: single == null ? null : single >= SINGLE_TARGET_MIN, paired: perRound((x) => ratio(x.torusd, x['nbdkit-file'])) },
      replicated: { label: rep.label, value: replicated, min: rep.min, met: replicated == null ? null : replicated >= rep.min, paired: perRound(replicatedOf) },
      ceilings: {
        'torusd/memory': ratio(m.torusd, m['nbdkit-memory']),
        'torusd/null': ratio(m.torusd, m['nbdkit-null']),
        'r2/memory': ratio(m['torusd-r2'], m['nbdkit-memory']),
        'file/memory': ratio(m['nbdkit-file'], m['nbdkit-memory']),
        'memory/null': ratio(m['nbdkit-memory'], m['nbdkit-null']),
      },
    };
  });
}

/** Every (job, target) whose spread is over SPREAD_WARN. */
export function spreadWarnings(jobs) {
  const out = [];
  for (const { job, figures } of jobs) {
    for (const [target, s] of Object.entries(figures)) {
      if (s.spread != null && s.spread > SPREAD_WARN) out.push({ job: job.name, target, spread: s.spread, rounds: s.rounds, unit: job.unit });
    }
  }
  return out;
}

export function formatFigure(unit, value) {
  if (value == null) return 'n/a';
  if (unit === 'IOPS') return value >= 10_000 ? `${(value / 1000).toFixed(1)}k` : value.toFixed(0);
  const mib = value / MiB;
  return mib >= 100 ? mib.toFixed(0) : mib.toFixed(1);
}

const pct = (x) => (x == null ? 'n/a' : x === Infinity ? 'inf' : `${Math.round(x * 100)}%`);
const fix2 = (x) => (x == null ? '-' : x.toFixed(2));

function table(header, rows, leftCols = 1) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => (i < leftCols ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function throughputTable(jobs, targets) {
  const header = ['job', 'unit', ...targets];
  const rows = jobs.map(({ job, figures }) => [
    job.name,
    job.unit,
    ...targets.map((t) => {
      const s = figures[t];
      if (!s) return '-';
      return `${formatFigure(job.unit, s.median)} ${pct(s.spread).padStart(4)}${s.spread > SPREAD_WARN ? '!' : ' '}`;
    }),
  ]);
  return table(header, rows, 2);
}

export function latencyTable(jobs, targets) {
  const header = ['job (p99 completion latency, µs, median)', ...targets];
  const rows = jobs.map(({ job, p99 }) => [job.name, ...targets.map((t) => (p99[t] == null ? '-' : Math.round(p99[t]).toString()))]);
  return table(header, rows);
}

export function coresTable(jobs, targets) {
  const header = ["job (CPU cores the target's processes used, median)", ...targets];
  const rows = jobs.map(({ job, cores }) => [job.name, ...targets.map((t) => (cores[t] == null ? '-' : cores[t].toFixed(2)))]);
  return table(header, rows);
}

/**
 * What the machine's CPUs would allow each target on each job at the CPU
 * per unit of work it used there: nCpu x figure / (the target's cores +
 * fio's cores), in the job's unit. An estimate: it takes the cost per
 * unit to hold at full use of every CPU and leaves out etcd and other
 * work on the machine. Beside each torus target, the figure issue 7 asks
 * of it in this run (1.0 x nbdkit file for one peer, the replicated
 * target's figure for torusd-r2): a target above its ceiling cannot be
 * met on this machine at this cost per unit, however the work is spread.
 * jobs: [{ job, figures, cores, fioCores }] (medians by target).
 */
export function cpuCeilings(jobs, nCpu) {
  return jobs.map(({ job, figures, cores, fioCores }) => {
    const m = Object.fromEntries(Object.entries(figures).map(([t, s]) => [t, s.median]));
    const ceiling = {};
    for (const t of Object.keys(figures)) {
      const used = (cores?.[t] ?? NaN) + (fioCores?.[t] ?? NaN);
      ceiling[t] = m[t] == null || !(used > 0) ? null : (nCpu * m[t]) / used;
    }
    const base = REPLICATED_TARGETS[job.kind].base(m);
    const needed = {
      torusd: m['nbdkit-file'] == null ? null : SINGLE_TARGET_MIN * m['nbdkit-file'],
      'torusd-r2': base == null ? null : REPLICATED_TARGETS[job.kind].min * base,
    };
    const above = Object.fromEntries(Object.entries(needed).map(([t, n]) => [t, n == null || ceiling[t] == null ? null : n > ceiling[t]]));
    return { job: job.name, unit: job.unit, ceiling, needed, above };
  });
}

export function ceilingTable(rows, targets, nCpu) {
  const header = [`job (ceiling: ${nCpu} CPUs at the CPU per unit used, target + fio)`, 'unit', ...targets];
  const body = rows.map((r) => [
    r.job,
    r.unit,
    ...targets.map((t) => {
      const c = formatFigure(r.unit, r.ceiling[t] ?? null);
      if (!(t in r.needed)) return c;
      const n = r.needed[t] == null ? '-' : formatFigure(r.unit, r.needed[t]);
      return `${c} (needs ${n}${r.above[t] ? ', ABOVE' : ''})`;
    }),
  ]);
  return table(header, body, 2);
}

export function ratioTable(rows) {
  const verdict = (r) => (r.value == null ? '' : r.met ? 'meets' : 'BELOW');
  const header = ['job', 'torusd/file', '≥1.0', 'replicated', 'value', 'target', '', 'torusd/memory', 'torusd/null', 'file/memory'];
  const body = rows.map((r) => [
    r.job,
    fix2(r.single.value),
    verdict(r.single),
    r.replicated.label,
    fix2(r.replicated.value),
    `≥${r.replicated.min}`,
    verdict(r.replicated),
    fix2(r.ceilings['torusd/memory']),
    fix2(r.ceilings['torusd/null']),
    fix2(r.ceilings['file/memory']),
  ]);
  return table(header, body, 1);
}

/**
 * The same ratios taken round by round (each round's targets ran minutes
 * apart at most, so a slow spell of the machine hits both sides of a
 * ratio): median and spread of the per-round ratios. A second view beside
 * the ratio of medians when the machine is noisy.
 */
export function pairedTable(rows) {
  const cell = (x) => (x.paired == null ? '-' : `${fix2(x.paired.median)} ${pct(x.paired.spread).padStart(4)}`);
  const header = ['job (ratios per round: median, spread)', 'torusd/file', 'replicated', ''];
  const body = rows.map((r) => [r.job, cell(r.single), cell(r.replicated), r.replicated.label]);
  return table(header, body, 1);
}

export function rssLines(rss, targets, limitBytes = RSS_MAX_BYTES) {
  const lines = [];
  const mib = (b) => `${(b / MiB).toFixed(1)} MiB`;
  for (const t of [...targets, 'etcd']) {
    const r = rss.targets[t];
    if (!r) continue;
    const procs = Object.entries(r.processes);
    let line = `  ${t.padEnd(14)} peak ${mib(r.peakBytes).padStart(11)}`;
    if (t.startsWith('torusd')) {
      const verdicts = rssVerdicts({ targets: { [t]: r } }, limitBytes);
      const over = verdicts.filter((v) => !v.met);
      // What of a peak was mapped from files (node's binary, mostly) and what was the process's own.
      const split = (p) => (p.peakFileBytes === undefined ? '' : `; ${mib(p.peakFileBytes)} from files, ${mib(p.peakAnonBytes)} anonymous`);
      const perPeer = procs.map(([label, p]) => `${label} ${mib(p.peakBytes)} (VmHWM ${mib(p.hwmBytes)}${p.peakPhase ? `; in ${p.peakPhase}` : ''}${split(p)})`).join(', ');
      line += procs.length > 1 ? ` summed over peers; per peer: ${perPeer}` : ` (VmHWM ${mib(r.hwmSumBytes)}${r.peakPhase ? `; in ${r.peakPhase}` : ''}${procs.length === 1 ? split(procs[0][1]) : ''})`;
      line += over.length === 0 ? `; every torusd ≤ ${mib(limitBytes)}: meets` : `; OVER the ${mib(limitBytes)} target: ${over.map((v) => v.process).join(', ')}`;
    } else if (procs.length > 1) {
      line += ` (${procs.length} processes over the run, summed while alive)`;
    } else if (procs.length === 1) {
      line += ` (VmHWM ${mib(r.hwmSumBytes)})`;
    }
    lines.push(line);
  }
  return lines;
}

/** Issue 7: torusd's peak RSS, summed over its processes and workers, through the whole bench. */
export const RSS_MAX_BYTES = 128 * MiB;
/** Issue 7: torusd's idle CPU, averaged over a window (60 s in a full run). */
export const IDLE_CORES_MAX = 0.01;

/**
 * One verdict per torusd process (each peer of the cluster is one torusd):
 * its peak is the larger of the sampled peak of its process tree and the
 * kernel's VmHWM summed over that tree (VmHWM catches what fell between
 * two samples).
 */
export function rssVerdicts(rss, limitBytes = RSS_MAX_BYTES) {
  const out = [];
  for (const [target, r] of Object.entries(rss.targets)) {
    if (!target.startsWith('torusd')) continue;
    for (const [label, p] of Object.entries(r.processes)) {
      const peak = Math.max(p.peakBytes, p.hwmBytes);
      out.push({ target, process: label, peakBytes: peak, limitBytes, met: peak <= limitBytes });
    }
  }
  return out;
}

/** idle: { seconds, targets: { name: { processes: { label: cores } } } }; one verdict per torusd process. */
export function idleVerdicts(idle, limitCores = IDLE_CORES_MAX) {
  if (!idle) return [];
  const out = [];
  for (const [target, t] of Object.entries(idle.targets)) {
    if (!target.startsWith('torusd')) continue;
    for (const [label, cores] of Object.entries(t.processes)) out.push({ target, process: label, cores, limitCores, met: cores <= limitCores });
  }
  return out;
}

/** Every issue-7 target the run could judge, with the ones missed named. */
export function goalTally(ratioRows, rssV, idleV) {
  const all = [
    ...ratioRows.flatMap((r) => [r.single, r.replicated].filter((x) => x.met !== null).map((x) => ({ what: `${r.job} ${x.label} ≥${x.min}`, met: x.met }))),
    ...rssV.map((v) => ({ what: `${v.process} peak RSS ≤ ${v.limitBytes / MiB} MiB`, met: v.met })),
    ...idleV.map((v) => ({ what: `${v.process} idle CPU ≤ ${v.limitCores * 100}% of a core`, met: v.met })),
  ];
  return { total: all.length, met: all.filter((x) => x.met).length, missed: all.filter((x) => !x.met).map((x) => x.what) };
}

export function idleLines(idle, targets, limitCores = IDLE_CORES_MAX) {
  const verdicts = new Map(idleVerdicts(idle, limitCores).map((v) => [v.process, v]));
  const lines = [];
  for (const t of targets) {
    const r = idle.targets[t];
    if (!r) continue;
    const per = Object.entries(r.processes).map(([label, cores]) => {
      const v = verdicts.get(label);
      return `${label} ${(cores * 100).toFixed(2)}%${v ? (v.met ? ' meets' : ' OVER') : ''}`;
    });
    lines.push(`  ${t.padEnd(14)} ${per.join(', ')}`);
  }
  return lines;
}
