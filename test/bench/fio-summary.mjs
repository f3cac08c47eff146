#!/usr/bin/env node
// Reads the fio JSON files test/bench/run.sh wrote (one per target and job,
// named TARGET-JOB.json), prints the comparison table and writes the same
// figures as JSON. Plain .mjs so it runs without compiling anything.
//
// usage: fio-summary.mjs --fio-dir DIR --jobs a,b,c --targets torusd,nbdkit
//          --rss-kib torusd=N,nbdkit=N --bench-dir DIR --seconds S --out FILE
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, statfsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const MiB = 1024 * 1024;

const { values: args } = parseArgs({
  options: {
    'fio-dir': { type: 'string' },
    jobs: { type: 'string' },
    targets: { type: 'string' },
    'rss-kib': { type: 'string', default: '' },
    'bench-dir': { type: 'string' },
    seconds: { type: 'string' },
    out: { type: 'string' },
  },
});
for (const name of ['fio-dir', 'jobs', 'targets', 'bench-dir', 'seconds', 'out']) {
  if (!args[name]) fail(`missing --${name}`);
}

const jobs = args.jobs.split(',').filter(Boolean);
const targets = args.targets.split(',').filter(Boolean);
if (targets.length !== 2) fail('--targets takes exactly two names: the one measured, then the reference');
const [subject, reference] = targets;
const rssKib = Object.fromEntries(
  args['rss-kib']
    .split(',')
    .filter(Boolean)
    .map((kv) => {
      const [k, v] = kv.split('=');
      return [k, v === undefined || v === '' ? null : Number(v)];
    }),
);

const results = jobs.map((job) => {
  const row = { job, options: null };
  for (const target of targets) {
    const fio = readFio(path.join(args['fio-dir'], `${target}-${job}.json`));
    row.options ??= fio.options;
    row[target] = fio.figures;
  }
  row.ratio = row[reference].iops > 0 ? row[subject].iops / row[reference].iops : null;
  return row;
});

const machine = describeMachine(args['bench-dir']);
const report = {
  generatedAt: new Date().toISOString(),
  secondsPerJob: Number(args.seconds),
  benchDir: args['bench-dir'],
  machine,
  peakRssBytes: Object.fromEntries(targets.map((t) => [t, rssKib[t] == null ? null : rssKib[t] * 1024])),
  jobs: results,
};
mkdirSync(path.dirname(args.out), { recursive: true });
writeFileSync(args.out, JSON.stringify(report, null, 2) + '\n');

printTable(results);
console.log();
for (const r of results.filter((r) => targets.some((t) => r[t].syncs > 0))) {
  // fio --fsync=N at iodepth > 1 issues more flushes than one per N writes.
  console.log(`${r.job}: flushes sent: ${targets.map((t) => `${t} ${r[t].syncs}`).join(', ')}`);
}
console.log(
  `peak RSS (VmHWM): ${targets.map((t) => `${t} ${rssKib[t] == null ? 'n/a' : (rssKib[t] / 1024).toFixed(1) + ' MiB'}`).join(', ')}`,
);
console.log(
  `machine: ${machine.cpus} CPUs (${machine.cpuModel}), ${(machine.memoryBytes / 2 ** 30).toFixed(1)} GiB RAM, ` +
    `kernel ${machine.kernel}, ${(machine.diskFreeBytes / 2 ** 30).toFixed(1)} GiB free on the bench disk`,
);
console.log(`tools: ${Object.entries(machine.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`);
console.log(`${args.seconds} s per job; JSON written to ${args.out}`);

// ---------------------------------------------------------------------------

function fail(message) {
  console.error(`fio-summary: ${message}`);
  process.exit(2);
}

/** One fio run: throughput, latency percentiles and the options that matter. */
function readFio(file) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    fail(`cannot read ${file}: ${err.message}`);
  }
  // fio may put warning lines before the JSON document even with --output.
  const start = text.indexOf('{');
  if (start < 0) fail(`${file} holds no JSON`);
  let doc;
  try {
    doc = JSON.parse(text.slice(start));
  } catch (err) {
    fail(`${file} is not valid JSON: ${err.message}`);
  }
  const job = doc.jobs?.[0];
  if (!job) fail(`${file} has no job`);
  if (job.error) fail(`${file}: fio reported error ${job.error}`);
  const dirs = ['read', 'write'].filter((d) => job[d]?.io_bytes > 0);
  const sum = (f) => dirs.reduce((acc, d) => acc + f(job[d]), 0);
  const main = job[dirs[0] ?? 'read'];
  const pct = (p) => {
    const ns = main?.clat_ns?.percentile?.[p];
    return ns == null ? null : ns / 1000;
  };
  const o = { ...doc['global options'], ...job['job options'] };
  return {
    options: {
      rw: o.rw,
      bs: o.bs,
      iodepth: Number(o.iodepth ?? 1),
      fsync: o.fsync === undefined ? null : Number(o.fsync),
      runtimeS: o.runtime === undefined ? null : Number(o.runtime),
    },
    figures: {
      iops: sum((d) => d.iops),
      bytesPerSecond: sum((d) => d.bw_bytes),
      ioBytes: sum((d) => d.io_bytes),
      runtimeMs: Math.max(...dirs.map((d) => job[d].runtime), 0),
      clatP50Us: pct('50.000000'),
      clatP99Us: pct('99.000000'),
      syncs: job.sync?.total_ios ?? 0,
    },
  };
}

function describeMachine(dir) {
  const fs = statfsSync(dir);
  const version = (cmd, argv, pick) => {
    try {
      return pick(execFileSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    } catch {
      return null;
    }
  };
  return {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model?.trim() ?? 'unknown',
    memoryBytes: os.totalmem(),
    kernel: os.release(),
    diskFreeBytes: Number(fs.bavail) * Number(fs.bsize),
    versions: {
      node: process.version,
      fio: version('fio', ['--version'], (s) => s.replace(/^fio-/, '')),
      nbdkit: version('nbdkit', ['--version'], (s) => s.split(/\s+/)[1] ?? s),
    },
  };
}

function printTable(rows) {
  const header = [
    'job',
    `${subject} IOPS`,
    `${subject} MiB/s`,
    `${reference} IOPS`,
    `${reference} MiB/s`,
    `${subject}/${reference}`,
  ];
  const body = rows.map((r) => [
    r.job,
    Math.round(r[subject].iops).toString(),
    (r[subject].bytesPerSecond / MiB).toFixed(1),
    Math.round(r[reference].iops).toString(),
    (r[reference].bytesPerSecond / MiB).toFixed(1),
    r.ratio == null ? 'n/a' : r.ratio.toFixed(2),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  // First column left-aligned (names), numbers right-aligned.
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const b of body) console.log(line(b));
}
