/**
 * Sizes torusd sets for its own process, and a way to check the one that
 * can be checked. No side effects: daemon/threadpool.ts applies them (and
 * only the cmd entries import that).
 */
import fs from 'node:fs';

/** libuv thread pool size; see daemon/threadpool.ts for why 8. */
export const THREADPOOL_SIZE = 8;

/** libuv's worker threads running now (Linux names them), or null where that cannot be read. */
export function libuvWorkerThreads(): number | null {
  let tasks: string[];
  try {
    tasks = fs.readdirSync('/proc/self/task');
  } catch {
    return null;
  }
  let n = 0;
  for (const t of tasks) {
    try {
      if (fs.readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim() === 'libuv-worker') n++;
    } catch {
      // the thread ended meanwhile
    }
  }
  return n;
}

/**
 * V8's young generation grows to two 16 MiB semi-spaces under the data
 * path's allocation rate: a third of torusd's peak RSS. 8 MiB ones cost no
 * measurable throughput (scavenges stay short) and keep the peak within the
 * 128 MiB budget. Like the pool size, a V8 heap limit only applies from
 * process start; an explicit --max-semi-space-size (flag or NODE_OPTIONS) wins.
 */
export const SEMI_SPACE_MAX_MB = 8;

