// CPU time of processes, from /proc/<pid>/stat (utime + stime, all threads).
// Dividing a job's CPU seconds by its wall time gives the cores a target
// kept busy: a torusd at 1.0 is bound by its one event loop.
import { readFileSync } from 'node:fs';

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
