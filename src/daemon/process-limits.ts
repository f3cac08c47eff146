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
 * path's allocation rate: a third of torusd's peak RSS. With the data path's
 * buffers pooled, 4 MiB ones cost no measurable throughput (scavenges stay
 * short) and keep the peak within the 128 MiB budget (issue 7). Like the
 * pool size, a V8 heap limit only applies from process start; an explicit
 * --max-semi-space-size (flag or NODE_OPTIONS) wins.
 */
export const SEMI_SPACE_MAX_MB = 4;

/**
 * After each full collection V8 lets the old generation grow by a factor it
 * picks (up to 4x for a small, fast-to-collect heap) before the next one:
 * under load torusd's old generation doubled (20 -> 40 MiB used, almost all
 * of it promoted garbage of finished requests) before it was collected. A
 * fixed factor of 1.5 collects it at about 1.5x what is live. It bounds
 * nothing (the heap still grows with what is live); it only makes V8
 * collect sooner.
 */
export const HEAP_GROWING_PERCENT = 50;

/** V8 flags torusd starts with (daemon/threadpool.ts), each unless already given. */
export function v8MemoryFlags(): readonly (readonly [flag: string, value: number])[] {
  // Not --optimize-for-size: it cut the idle heap by a third, but 4 KiB
  // random reads lost 25-50 % and random writes about 10 % (interleaved
  // fio runs against two torusd side by side, 2026-12-01).
  return [
    ['--max-semi-space-size', SEMI_SPACE_MAX_MB],
    ['--heap-growing-percent', HEAP_GROWING_PERCENT],
  ];
}
