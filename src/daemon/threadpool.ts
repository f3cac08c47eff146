/**
 * libuv runs every file operation on its thread pool (4 threads by default).
 * An fdatasync holds a thread for milliseconds, and with 4 threads reads and
 * writes queue behind a flush; with many more, threads fight over 2 cores.
 * Measured with fio 4 KiB random I/O at iodepth 16 on 2 cores: 8 beat 4 and
 * 16. UV_THREADPOOL_SIZE set by the user wins.
 *
 * libuv reads UV_THREADPOOL_SIZE once, when the pool first starts. This
 * module is the first import of the cmd entries, so on Node 24, whose ESM
 * loader reads modules synchronously, setting it here comes first. A loader
 * that reads files through the pool (Node 20's does) has started it by then:
 * that shows as libuv worker threads already running, and the process
 * re-executes itself (same pid, same arguments) with the variable set.
 *
 * No imports but node:fs: nothing here may use the pool.
 */
import fs from 'node:fs';

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

if (!process.env.UV_THREADPOOL_SIZE) {
  process.env.UV_THREADPOOL_SIZE = String(THREADPOOL_SIZE);
  const running = libuvWorkerThreads();
  const execve = (process as unknown as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (running !== null && running > 0 && running < THREADPOOL_SIZE && typeof execve === 'function') {
    execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], process.env);
  }
}
