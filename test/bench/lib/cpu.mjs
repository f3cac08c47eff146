// CPU time of processes, from /proc/<pid>/stat (utime + stime, all threads:
// libuv's pool and worker threads are in their process's figure).
// Dividing a job's CPU seconds by its wall time gives the cores a target
// kept busy: a torusd at 1.0 is bound by its one event loop.
import { readFileSync } from 'node:fs';
import { descendantsOf } from './rss.mjs';

/** Linux reports these fields in clock ticks; USER_HZ is 100 on every Linux ABI the bench runs on. */
const TICKS_PER_SECOND = 100;

/** CPU seconds used so far by each pid (0 for one that is gone). */
export function cpuSeconds(pids) {
  const out = {};
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // After the command name: state is f[0], utime f[11], stime f[12].
      out[pid] = (Number(f[11]) + Number(f[12])) / TICKS_PER_SECOND;
    } catch {
      out[pid] = 0;
    }
  }
  return out;
}

/**
 * CPU seconds of each root pid and every process below it, summed per root.
 * `trees` (root -> pids below it) is taken once by the caller and reused at
 * both ends of a window, so a child that exits inside it only loses what it
 * used after the first reading.
 */
export function treeCpuSeconds(roots, trees = descendantsOf(roots)) {
  const out = {};
  for (const root of roots) {
    const pids = [root, ...(trees.get(root) ?? [])];
    const each = cpuSeconds(pids);
    out[root] = pids.reduce((n, p) => n + each[p], 0);
  }
  return out;
}

/** Cores used over a window: (cpu1 - cpu0) / seconds, per key; a key missing at either end counts 0. */
export function coresOver(cpu0, cpu1, seconds) {
  const out = {};
  for (const k of Object.keys(cpu0)) out[k] = Math.max(0, (cpu1[k] ?? 0) - cpu0[k]) / seconds;
  return out;
}
