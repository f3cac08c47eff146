/**
 * libuv runs every file operation on its thread pool (4 threads by default).
 * An fdatasync holds a thread for milliseconds, and with 4 threads reads and
 * writes queue behind a flush; with many more, threads fight over 2 cores.
 * Measured with fio 4 KiB random I/O at iodepth 16 on 2 cores: 8 beat 4 and
 * 16. This module must be imported before anything that touches the file
 * system (ESM evaluates imports in order); UV_THREADPOOL_SIZE set by the user
 * wins.
 */
const THREADPOOL_SIZE = 8;
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = String(THREADPOOL_SIZE);
export {};
