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
 * re-executes itself (process.execve: same pid, same arguments) with the
 * variable set. Where execve is missing (Node before 23.11) it runs as it is.
 *
 * V8's heap flags (v8MemoryFlags, daemon/process-limits.ts: the young
 * generation's size, how far the old one grows between collections) can
 * only be set from process start too, so they ride on the same re-exec.
 *
 * Importing this module has those effects on the importing process: only
 * the cmd entries import it, first. Nothing it imports may use the pool.
 */
import { libuvWorkerThreads, THREADPOOL_SIZE, v8MemoryFlags } from './process-limits.js';

/** Set in the environment of the re-executed process: never more than once. */
const REEXEC_MARK = 'TORUS_PROCESS_SETUP';

const env = process.env;
let reexec = false;
if (!env.UV_THREADPOOL_SIZE) {
  env.UV_THREADPOOL_SIZE = String(THREADPOOL_SIZE);
  const running = libuvWorkerThreads();
  if (running !== null && running > 0 && running < THREADPOOL_SIZE) reexec = true;
}
const given = [...process.execArgv, ...(env.NODE_OPTIONS ?? '').split(/\s+/)];
const isSet = (flag: string) => given.some((a) => a === flag || a.startsWith(`${flag}=`) || a.startsWith(flag.replaceAll('-', '_').replace(/^__/, '--')));
const missing = v8MemoryFlags().filter(([flag]) => !isSet(flag));
const execArgv = [...process.execArgv, ...missing.map(([flag, value]) => `${flag}=${value}`)];
if (missing.length > 0) reexec = true;
const execve = (process as unknown as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
if (reexec && env[REEXEC_MARK] === undefined && typeof execve === 'function') {
  env[REEXEC_MARK] = '1';
  execve(process.execPath, [process.execPath, ...execArgv, ...process.argv.slice(1)], env);
}
