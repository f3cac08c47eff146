/**
 * libuv runs every file operation on its thread pool (4 threads by default).
 * A journal fdatasync holds a thread for milliseconds, so with 4 threads
 * journal appends and reads queue behind syncs and background applies. This
 * module must be imported before anything that touches the file system (ESM
 * evaluates imports in order); UV_THREADPOOL_SIZE set by the user wins.
 */
const THREADPOOL_SIZE = 16;
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = String(THREADPOOL_SIZE);
export {};
