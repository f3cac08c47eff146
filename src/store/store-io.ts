import fs from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, unlink } from 'node:fs/promises';
import nodePath from 'node:path';
import { closeFd, fdatasync, fsyncDir, ftruncate, openFd, openNoAtime, preadCached, preadFull, pwriteCached, pwriteFull, pwritevFull, syncFileSystem } from './fs-async.js';

/**
 * Every file-system call the disk store makes (file-block-store.ts, its
 * dirty log and its suspect list), as one object handed to it: the node
 * implementation below, or, in tests, a model of a disk that loses at a
 * crash whatever was not synced (test/helpers/crash-disk.ts). Errors are
 * node's: an Error with `code` ('ENOENT', 'EEXIST', 'ENOSPC', ...).
 *
 * The calls mirror fs-async.ts, whose helpers the node implementation
 * is: the `...Cached` ones may finish on the spot (null) instead of
 * returning a promise.
 */
export interface StoreIo {
  /** Page-cache reads may go in io_uring batches (read-batch.ts): only for real file descriptors. */
  readonly batchesReads: boolean;
  open(path: string, flags: number): Promise<number>;
  /** open() asking not to update access times, where the file's owner may ask (fs-async.ts openNoAtime). */
  openNoAtime(path: string, flags: number): Promise<number>;
  close(fd: number): Promise<void>;
  /** Closes without waiting for the result (an idle descriptor evicted). */
  closeLater(fd: number): void;
  /** Exactly `length` bytes at `position` into buf at `offset`, zeroes past the end of the file. */
  read(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void>;
  readCached(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void> | null;
  /** All of buf at `position`; `piece` splits it into writes that end at its multiples (fs-async.ts COLD_WRITE_PIECE_BYTES). */
  write(fd: number, buf: Buffer, position: number, piece?: number | null): Promise<void>;
  writeCached(fd: number, buf: Buffer, position: number, piece?: number | null): Promise<void> | null;
  /** The buffers back to back at `position`. */
  writev(fd: number, bufs: Buffer[], position: number): Promise<void>;
  fdatasync(fd: number): Promise<void>;
  ftruncate(fd: number, length: number): Promise<void>;
  /** syncfs(2) of the file system under `fd`, or null where it cannot be made (sync file by file instead). */
  syncfs(fd: number): Promise<void> | null;
  /** Makes the entries created or removed in a folder durable. */
  fsyncDir(path: string): Promise<void>;
  /** mkdir -p. */
  mkdirs(path: string): Promise<void>;
  readdir(path: string): Promise<string[]>;
  readFile(path: string): Promise<Buffer>;
  unlink(path: string): Promise<void>;
  /** rm -rf: no error when it is not there. */
  removeTree(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
}

export const nodeStoreIo: StoreIo = {
  batchesReads: true,
  open: (path, flags) => openFd(path, flags),
  openNoAtime: (path, flags) => openNoAtime(path, flags),
  close: closeFd,
  closeLater: (fd) => fs.close(fd, () => undefined),
  read: preadFull,
  readCached: preadCached,
  write: pwriteFull,
  writeCached: pwriteCached,
  writev: pwritevFull,
  fdatasync,
  ftruncate,
  syncfs: syncFileSystem,
  fsyncDir,
  mkdirs: async (path) => {
    await mkdir(path, { recursive: true });
  },
  readdir: (path) => readdir(path),
  readFile: (path) => readFile(path),
  unlink,
  removeTree: (path) => rm(path, { recursive: true, force: true }),
  rename,
};

/**
 * Replaces a small file atomically and durably: a temp file next to it,
 * fdatasync'd, renamed over it, and the folder fsync'd. A crash leaves the
 * old content or the new one, never a mix (a leftover `.tmp` is harmless:
 * the next write replaces it).
 */
export async function writeFileDurably(file: string, data: Buffer | string, io: StoreIo = nodeStoreIo): Promise<void> {
  const tmp = `${file}.tmp`;
  const fd = await io.open(tmp, fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_WRONLY);
  try {
    await io.write(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data, 0);
    await io.fdatasync(fd);
  } finally {
    await io.close(fd);
  }
  await io.rename(tmp, file);
  await io.fsyncDir(nodePath.dirname(file));
}
