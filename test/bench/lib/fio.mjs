// The fio jobs of `npm run bench` and the reading of fio's JSON output.
import { readFileSync } from 'node:fs';


/**
 * The measured jobs, in the order a round runs them. `fresh`: the job gets a
 * new, never-written device in every round (not time based: one pass).
 * `kind` says which replicated target applies (issue 7):
 *   read: replicated / single-peer torusd >= 0.9
 *   seqwrite: replicated / (nbdkit file / R) >= 0.9
 *   random: replicated / nbdkit file >= 0.5
 */
export const JOBS = [
  { name: 'prefill-write-1m-qd4', kind: 'seqwrite', fresh: true, args: ['--rw=write', '--bs=1M', '--iodepth=4'], unit: 'MiB/s' },
  { name: 'randread-4k-qd16', kind: 'read', args: ['--rw=randread', '--bs=4k', '--iodepth=16'], unit: 'IOPS' },
  { name: 'seqread-1m-qd4', kind: 'read', args: ['--rw=read', '--bs=1M', '--iodepth=4'], unit: 'MiB/s' },
  { name: 'randwrite-4k-qd16', kind: 'random', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16'], unit: 'IOPS' },
  { name: 'randwrite-4k-qd16-fsync32', kind: 'random', args: ['--rw=randwrite', '--bs=4k', '--iodepth=16', '--fsync=32'], unit: 'IOPS' },
  { name: 'seqwrite-1m-qd4', kind: 'seqwrite', args: ['--rw=write', '--bs=1M', '--iodepth=4'], unit: 'MiB/s' },
];

/** The untimed pass that writes every target's bench device once before the rounds (reads need data; everyone gets the same warm-up). */
export const FILL_JOB = { name: 'fill-write-1m-qd4', args: ['--rw=write', '--bs=1M', '--iodepth=4'] };

/** fio's command line for one job against one NBD URI; every target exports sizeMiB (the config's device size). */
export function fioArgs(job, uri, { outFile, seconds, rampSeconds, sizeMiB }) {
  const timed = job.fresh || job === FILL_JOB ? [] : ['--time_based', `--runtime=${seconds}`, ...(rampSeconds > 0 ? [`--ramp_time=${rampSeconds}`] : [])];
  return [`--name=${job.name}`, '--ioengine=nbd', `--uri=${uri}`, `--size=${sizeMiB}m`, ...job.args, ...timed, '--output-format=json', `--output=${outFile}`];
}

/** One fio run: throughput, latency percentiles, flushes. Throws on a missing or failed job. */
export function readFio(file) {
  const text = readFileSync(file, 'utf8');
  // fio may put warning lines before the JSON document even with --output.
  const start = text.indexOf('{');
  if (start < 0) throw new Error(`${file} holds no JSON`);
  const doc = JSON.parse(text.slice(start));
  const job = doc.jobs?.[0];
  if (!job) throw new Error(`${file} has no job`);
  if (job.error) throw new Error(`${file}: fio reported error ${job.error}`);
  const dirs = ['read', 'write'].filter((d) => job[d]?.io_bytes > 0);
  const sum = (f) => dirs.reduce((acc, d) => acc + f(job[d]), 0);
  const main = job[dirs[0] ?? 'read'];
  const pct = (p) => {
    const ns = main?.clat_ns?.percentile?.[p];
    return ns == null ? null : ns / 1000;
  };
  return {
    iops: sum((d) => d.iops),
    bytesPerSecond: sum((d) => d.bw_bytes),
    ioBytes: sum((d) => d.io_bytes),
    runtimeMs: Math.max(...dirs.map((d) => job[d].runtime), 0),
    clatP50Us: pct('50.000000'),
    clatP99Us: pct('99.000000'),
    syncs: job.sync?.total_ios ?? 0,
    // fio's own CPU (user + system) over the job, in cores: the client's share of the machine.
    fioCores: Number.isFinite(job.usr_cpu) && Number.isFinite(job.sys_cpu) ? (job.usr_cpu + job.sys_cpu) / 100 : null,
  };
}

/** The figure a job is judged by: IOPS for 4 KiB jobs, bytes per second for 1 MiB ones. */
export function figureOf(job, result) {
  return job.unit === 'IOPS' ? result.iops : result.bytesPerSecond;
}
