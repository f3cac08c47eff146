/**
 * A disk in memory that forgets, at a crash, whatever was not made durable:
 * the StoreIo (src/store/store-io.ts) a FileBlockStore runs over in the
 * crash-point test (test/unit/store-crash-points.test.ts).
 *
 * What it keeps and what a crash may lose, the way a POSIX file system
 * without a journal may (ext4 without one is what the bench's host runs):
 * - A file's bytes and size are durable once fdatasync'd (or syncfs'd).
 *   Until then each 512-byte sector written since comes back, after a crash,
 *   as any value it held since that sync (the old one, the newest, or one
 *   between), each sector on its own (so a page may come back torn), and
 *   the size as any size the file had since.
 * - A name made or removed in a folder (create, unlink, mkdir, rename) is
 *   durable once that folder is fsync'd (or syncfs'd). Until then each
 *   such change of a folder may or may not survive, in order, a rename as
 *   a whole. A file whose name did not survive is gone, whatever was
 *   synced of its bytes; a name under a folder that did not survive is
 *   gone with it.
 * - A call still running at the crash may have taken effect or not
 *   (unsynced, like the rest).
 *
 * Every call that returns a promise waits in a queue until the test runs
 * it (runOne, in an order it draws): calls made together finish in any
 * order, as on a real disk with a thread pool. The `...Cached` calls act
 * at once (they are synchronous on the event loop in the real store).
 * After crash() no call ever finishes: the process is gone.
 *
 * Faults (`faults`, off unless set): a write may fail with ENOSPC after
 * taking a whole number of sectors of its bytes, a file's creation or
 * growth with ENOSPC, a sync with EIO (what it was to make durable stays
 * unsynced), a read with EIO.
 */
import fs from 'node:fs';
import nodePath from 'node:path';
import type { StoreIo } from '../../src/store/store-io.js';
import type { Random } from '../../src/util/random.js';

export const SECTOR_BYTES = 512;

/** What survives: every folder and file, by path. */
export interface DiskImage {
  readonly dirs: ReadonlySet<string>;
  readonly files: ReadonlyMap<string, Buffer>;
}

type FileOp = { kind: 'write'; position: number; data: Buffer } | { kind: 'truncate'; length: number };
/** A change of one folder's names (each names an inode). */
type DirOp = { kind: 'set'; name: string; ino: number } | { kind: 'delete'; name: string } | { kind: 'rename'; from: string; to: string; ino: number };

interface FileInode {
  readonly kind: 'file';
  data: Buffer;
  durable: Buffer;
  /** Changes since the last sync, in order. */
  ops: FileOp[];
}

/** A folder is an inode of its own: one removed and made again by the same name is a new, empty one. */
interface DirInode {
  readonly kind: 'dir';
  entries: Map<string, number>;
  durable: Map<string, number>;
  ops: DirOp[];
}

type Inode = FileInode | DirInode;

interface Call {
  readonly run: () => unknown;
  readonly resolve: (v: unknown) => void;
  readonly reject: (e: unknown) => void;
}

function errno(code: string, call: string, path: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${call} '${path}'`) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

const ROOT_INO = 1;

function partsOf(path: string): string[] {
  if (!path.startsWith('/')) throw new Error(`the model disk takes absolute paths: ${path}`);
  return path.split('/').filter((p) => p.length > 0);
}

export class CrashDisk implements StoreIo {
  readonly batchesReads = false;
  private readonly inodes = new Map<number, Inode>();
  private readonly fds = new Map<number, { ino: number; path: string }>();
  private nextIno = ROOT_INO + 1;
  private nextFd = 3;
  private queue: Call[] = [];
  private crashed = false;
  /** Calls run so far (runOne and the immediate ones): the test's clock for crash points. */
  steps = 0;
  /** When set, each call made is described here as it runs (a failing seed's story). */
  trace: string[] | null = null;
  /** Chances per call of an injected failure, drawn from `random`. */
  faults: { readonly random: Random; readonly noSpace: number; readonly io: number } | null = null;
  /** Failures injected so far. */
  injected = 0;

  constructor(image?: DiskImage) {
    this.inodes.set(ROOT_INO, { kind: 'dir', entries: new Map(), durable: new Map(), ops: [] });
    if (image === undefined) return;
    const place = (path: string, node: Inode): void => {
      const parts = partsOf(path);
      let dir = this.inodes.get(ROOT_INO) as DirInode;
      for (const name of parts.slice(0, -1)) {
        let ino = dir.entries.get(name);
        if (ino === undefined) {
          ino = this.newInode({ kind: 'dir', entries: new Map(), durable: new Map(), ops: [] });
          dir.entries.set(name, ino);
          dir.durable.set(name, ino);
        }
        dir = this.inodes.get(ino) as DirInode;
      }
      const name = parts[parts.length - 1]!;
      if (dir.entries.has(name)) return;
      const ino = this.newInode(node);
      dir.entries.set(name, ino);
      dir.durable.set(name, ino);
    };
    for (const d of [...image.dirs].sort()) place(d, { kind: 'dir', entries: new Map(), durable: new Map(), ops: [] });
    for (const [path, data] of image.files) place(path, { kind: 'file', data: Buffer.from(data), durable: Buffer.from(data), ops: [] });
  }

  // ------------------------------------------------------------ the test's side

  /**
   * Lets the process under test run (a turn of the event loop, so its
   * promise chains move on) and finishes one waiting call after each,
   * drawn by `order`, until `done` holds, the disk has made `crashAt`
   * calls, or nothing has moved for 100 turns (the process waits on
   * something that will never come: 'stuck').
   */
  async runUntil(order: Random, done: () => boolean, crashAt: number | null = null): Promise<'done' | 'crash' | 'stuck'> {
    for (let idle = 0; ; ) {
      if (done()) return 'done';
      if (crashAt !== null && this.steps >= crashAt) return 'crash';
      await new Promise((r) => setImmediate(r));
      if (done()) return 'done';
      if (this.runOne(order)) idle = 0;
      else if (++idle > 100) return 'stuck';
    }
  }

  /** Finishes one waiting call, drawn by `random`; false when none waits. */
  runOne(random: Random): boolean {
    if (this.crashed || this.queue.length === 0) return false;
    const [call] = this.queue.splice(random.int(this.queue.length), 1);
    this.steps++;
    let result: unknown;
    try {
      result = call!.run();
    } catch (err) {
      call!.reject(err);
      return true;
    }
    call!.resolve(result);
    return true;
  }

  /**
   * Power off: each call still waiting takes effect or not (drawn), none
   * finishes, and none made later does. Returns what the disk holds when
   * it comes back, drawn among what the rules above allow.
   */
  crash(random: Random): DiskImage {
    if (!this.crashed) {
      for (const call of this.queue) {
        if (random.int(2) === 0) continue;
        try {
          call.run();
        } catch {
          // A call that would have failed changed nothing.
        }
      }
      this.queue = [];
      this.crashed = true;
    }
    return this.image(random);
  }

  /** Everything durable now, as syncfs makes it. */
  syncAll(): void {
    for (const inode of this.inodes.values()) this.syncInode(inode);
  }

  // ------------------------------------------------------------ StoreIo

  open(path: string, flags: number): Promise<number> {
    return this.later(`open ${path}`, () => this.openNow(path, flags));
  }

  openNoAtime(path: string, flags: number): Promise<number> {
    return this.open(path, flags);
  }

  close(fd: number): Promise<void> {
    return this.later(
      'close',
      () => {
        this.fdOf(fd);
        this.fds.delete(fd);
      },
      fd,
    );
  }

  closeLater(fd: number): void {
    if (!this.crashed) this.fds.delete(fd);
  }

  read(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    return this.later(`read @${position}+${length}`, () => this.readNow(fd, buf, offset, length, position), fd);
  }

  readCached(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<void> | null {
    if (this.crashed) return new Promise(() => undefined);
    this.trace?.push(`${this.steps} read (on the loop) @${position}+${length} ${this.fds.get(fd)?.path}`);
    this.steps++;
    this.readNow(fd, buf, offset, length, position);
    return null;
  }

  write(fd: number, buf: Buffer, position: number): Promise<void> {
    // The bytes as they are at the call: a caller may reuse its buffer once told.
    const data = Buffer.from(buf);
    return this.later(`write @${position}+${data.length}`, () => this.writeNow(fd, data, position), fd);
  }

  writeCached(fd: number, buf: Buffer, position: number): Promise<void> | null {
    if (this.crashed) return new Promise(() => undefined);
    this.trace?.push(`${this.steps} write (on the loop) @${position}+${buf.length} ${this.fds.get(fd)?.path}`);
    this.steps++;
    this.writeNow(fd, Buffer.from(buf), position);
    return null;
  }

  writev(fd: number, bufs: Buffer[], position: number): Promise<void> {
    const data = Buffer.concat(bufs);
    return this.later(`writev @${position}+${data.length}`, () => this.writeNow(fd, data, position), fd);
  }

  fdatasync(fd: number): Promise<void> {
    return this.later(
      'fdatasync',
      () => {
        const inode = this.inodes.get(this.fdOf(fd).ino)!;
        this.maybeFail('io', 'EIO', 'fdatasync');
        this.syncInode(inode);
      },
      fd,
    );
  }

  ftruncate(fd: number, length: number): Promise<void> {
    return this.later(
      `ftruncate ${length}`,
      () => {
        const inode = this.fileOfFd(fd);
        if (length > inode.data.length) this.maybeFail('noSpace', 'ENOSPC', 'ftruncate');
        this.fileOp(inode, { kind: 'truncate', length });
      },
      fd,
    );
  }

  syncfs(fd: number): Promise<void> {
    return this.later('syncfs', () => {
      this.fdOf(fd);
      this.maybeFail('io', 'EIO', 'syncfs');
      this.syncAll();
    });
  }

  fsyncDir(path: string): Promise<void> {
    return this.later(`fsyncDir ${path}`, () => {
      const dir = this.dirAt(path, 'open');
      this.maybeFail('io', 'EIO', 'fsync');
      this.syncInode(dir);
    });
  }

  mkdirs(path: string): Promise<void> {
    return this.later(`mkdir ${path}`, () => {
      let dir = this.inodes.get(ROOT_INO) as DirInode;
      for (const name of partsOf(path)) {
        let ino = dir.entries.get(name);
        if (ino === undefined) {
          ino = this.newInode({ kind: 'dir', entries: new Map(), durable: new Map(), ops: [] });
          this.nameOp(dir, { kind: 'set', name, ino });
        }
        const next = this.inodes.get(ino)!;
        if (next.kind !== 'dir') throw errno('EEXIST', 'mkdir', path);
        dir = next;
      }
    });
  }

  readdir(path: string): Promise<string[]> {
    return this.later(`readdir ${path}`, () => [...this.dirAt(path, 'scandir').entries.keys()].sort());
  }

  readFile(path: string): Promise<Buffer> {
    return this.later(`readFile ${path}`, () => {
      const node = this.lookup(path);
      if (node === undefined) throw errno('ENOENT', 'open', path);
      if (node.kind !== 'file') throw errno('EISDIR', 'read', path);
      return Buffer.from(node.data);
    });
  }

  unlink(path: string): Promise<void> {
    return this.later(`unlink ${path}`, () => {
      const node = this.lookup(path);
      if (node === undefined) throw errno('ENOENT', 'unlink', path);
      if (node.kind !== 'file') throw errno('EISDIR', 'unlink', path);
      this.nameOp(this.parentOf(path)!, { kind: 'delete', name: nodePath.basename(path) });
    });
  }

  removeTree(path: string): Promise<void> {
    return this.later(`rm ${path}`, () => {
      const node = this.lookup(path);
      if (node === undefined) return;
      const empty = (dir: DirInode): void => {
        for (const [name, ino] of [...dir.entries]) {
          const child = this.inodes.get(ino)!;
          if (child.kind === 'dir') empty(child);
          this.nameOp(dir, { kind: 'delete', name });
        }
      };
      if (node.kind === 'dir') empty(node);
      this.nameOp(this.parentOf(path)!, { kind: 'delete', name: nodePath.basename(path) });
    });
  }

  rename(from: string, to: string): Promise<void> {
    return this.later(`rename ${from} ${to}`, () => {
      if (nodePath.dirname(from) !== nodePath.dirname(to)) throw new Error('the model disk renames within one folder only');
      const dir = this.parentOf(from);
      const ino = dir?.entries.get(nodePath.basename(from));
      if (dir === undefined || ino === undefined) throw errno('ENOENT', 'rename', from);
      this.nameOp(dir, { kind: 'rename', from: nodePath.basename(from), to: nodePath.basename(to), ino });
    });
  }

  // ------------------------------------------------------------ mechanism

  private later<T>(name: string, run: () => T, fd?: number): Promise<T> {
    if (this.crashed) return new Promise(() => undefined);
    const traced = this.trace === null ? run : () => (this.trace!.push(`${this.steps} ${name}${fd === undefined ? '' : ` ${this.fds.get(fd)?.path ?? `fd ${fd}`}`}`), run());
    return new Promise<T>((resolve, reject) => this.queue.push({ run: traced, resolve: resolve as (v: unknown) => void, reject }));
  }

  private newInode(node: Inode): number {
    const ino = this.nextIno++;
    this.inodes.set(ino, node);
    return ino;
  }

  private lookup(path: string): Inode | undefined {
    let node: Inode = this.inodes.get(ROOT_INO)!;
    for (const name of partsOf(path)) {
      if (node.kind !== 'dir') return undefined;
      const ino = node.entries.get(name);
      if (ino === undefined) return undefined;
      node = this.inodes.get(ino)!;
    }
    return node;
  }

  private parentOf(path: string): DirInode | undefined {
    const node = this.lookup(nodePath.dirname(path));
    return node?.kind === 'dir' ? node : undefined;
  }

  private dirAt(path: string, call: string): DirInode {
    const node = this.lookup(path);
    if (node === undefined) throw errno('ENOENT', call, path);
    if (node.kind !== 'dir') throw errno('ENOTDIR', call, path);
    return node;
  }

  private openNow(path: string, flags: number): number {
    const node = this.lookup(path);
    const fd = this.nextFd++;
    if ((flags & fs.constants.O_DIRECTORY) !== 0) {
      if (node === undefined) throw errno('ENOENT', 'open', path);
      if (node.kind !== 'dir') throw errno('ENOTDIR', 'open', path);
      this.fds.set(fd, { ino: this.parentOf(path)?.entries.get(nodePath.basename(path)) ?? ROOT_INO, path });
      return fd;
    }
    if (node?.kind === 'dir') throw errno('EISDIR', 'open', path);
    let ino: number;
    if (node === undefined) {
      if ((flags & fs.constants.O_CREAT) === 0) throw errno('ENOENT', 'open', path);
      const dir = this.parentOf(path);
      if (dir === undefined) throw errno('ENOENT', 'open', path);
      this.maybeFail('noSpace', 'ENOSPC', 'open');
      ino = this.newInode({ kind: 'file', data: Buffer.alloc(0), durable: Buffer.alloc(0), ops: [] });
      this.nameOp(dir, { kind: 'set', name: nodePath.basename(path), ino });
    } else {
      if ((flags & fs.constants.O_CREAT) !== 0 && (flags & fs.constants.O_EXCL) !== 0) throw errno('EEXIST', 'open', path);
      ino = this.parentOf(path)!.entries.get(nodePath.basename(path))!;
      if ((flags & fs.constants.O_TRUNC) !== 0) this.fileOp(node, { kind: 'truncate', length: 0 });
    }
    this.fds.set(fd, { ino, path });
    return fd;
  }

  private fdOf(fd: number): { ino: number; path: string } {
    const f = this.fds.get(fd);
    if (f === undefined) throw errno('EBADF', 'fd', String(fd));
    return f;
  }

  private fileOfFd(fd: number): FileInode {
    const { ino, path } = this.fdOf(fd);
    const node = this.inodes.get(ino)!;
    if (node.kind !== 'file') throw errno('EISDIR', 'fd', path);
    return node;
  }

  private readNow(fd: number, buf: Buffer, offset: number, length: number, position: number): void {
    const { data } = this.fileOfFd(fd);
    this.maybeFail('io', 'EIO', 'read');
    const n = Math.max(0, Math.min(length, data.length - position));
    if (n > 0) data.copy(buf, offset, position, position + n);
    buf.fill(0, offset + n, offset + length);
  }

  private writeNow(fd: number, data: Buffer, position: number): void {
    const inode = this.fileOfFd(fd);
    if (this.drawFault('noSpace')) {
      // A short write, then the error: some whole sectors of it taken.
      const taken = this.faults!.random.int(Math.floor(data.length / SECTOR_BYTES) + 1) * SECTOR_BYTES;
      if (taken > 0) this.fileOp(inode, { kind: 'write', position, data: data.subarray(0, taken) });
      throw errno('ENOSPC', 'write', String(fd));
    }
    this.fileOp(inode, { kind: 'write', position, data });
  }

  private drawFault(kind: 'noSpace' | 'io'): boolean {
    if (this.faults === null || this.faults.random.next() >= this.faults[kind]) return false;
    this.injected++;
    this.trace?.push(`${this.steps} (injected ${kind})`);
    return true;
  }

  private maybeFail(kind: 'noSpace' | 'io', code: string, call: string): void {
    if (this.drawFault(kind)) throw errno(code, call, 'injected');
  }

  private fileOp(inode: FileInode, op: FileOp): void {
    inode.data = applyFileOp(inode.data, op);
    inode.ops.push(op);
  }

  private nameOp(dir: DirInode, op: DirOp): void {
    applyDirOp(dir.entries, op);
    dir.ops.push(op);
  }

  private syncInode(inode: Inode): void {
    if (inode.kind === 'file') inode.durable = Buffer.from(inode.data);
    else inode.durable = new Map(inode.entries);
    inode.ops = [];
  }

  /** What a crash now leaves: durable names and bytes, plus a drawn share of the rest. */
  private image(random: Random): DiskImage {
    const names = new Map<number, Map<string, number>>();
    for (const [ino, node] of this.inodes) {
      if (node.kind !== 'dir') continue;
      const entries = new Map(node.durable);
      for (const op of node.ops) if (random.int(2) === 0) applyDirOp(entries, op);
      names.set(ino, entries);
    }
    const dirs = new Set<string>();
    const files = new Map<string, Buffer>();
    const contents = new Map<number, Buffer>();
    const walk = (ino: number, path: string, seen: Set<number>): void => {
      for (const [name, child] of [...names.get(ino)!].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
        const p = `${path}/${name}`;
        const node = this.inodes.get(child)!;
        if (node.kind === 'dir') {
          if (seen.has(child)) continue;
          dirs.add(p);
          walk(child, p, new Set([...seen, child]));
          continue;
        }
        let content = contents.get(child);
        if (content === undefined) contents.set(child, (content = crashContent(node, random)));
        files.set(p, content);
      }
    };
    walk(ROOT_INO, '', new Set([ROOT_INO]));
    return { dirs, files };
  }
}

function applyFileOp(data: Buffer, op: FileOp): Buffer {
  if (op.kind === 'truncate') {
    if (op.length <= data.length) return Buffer.from(data.subarray(0, op.length));
    const out = Buffer.alloc(op.length);
    data.copy(out);
    return out;
  }
  const end = op.position + op.data.length;
  const out = end > data.length ? Buffer.alloc(end) : data;
  if (out !== data) data.copy(out);
  op.data.copy(out, op.position);
  return out;
}

function applyDirOp(entries: Map<string, number>, op: DirOp): void {
  if (op.kind === 'set') entries.set(op.name, op.ino);
  else if (op.kind === 'delete') entries.delete(op.name);
  else {
    if (entries.get(op.from) === op.ino) entries.delete(op.from);
    entries.set(op.to, op.ino);
  }
}

/**
 * A file's bytes after a crash: its size any it had since the last sync,
 * each sector any value it held since then (zeroes where it held none).
 */
function crashContent(inode: FileInode, random: Random): Buffer {
  if (inode.ops.length === 0) return Buffer.from(inode.durable);
  const sizes = [inode.durable.length];
  const history = new Map<number, Buffer[]>();
  const sectorOf = (data: Buffer, s: number): Buffer => {
    const out = Buffer.alloc(SECTOR_BYTES);
    const from = s * SECTOR_BYTES;
    if (from < data.length) data.copy(out, 0, from, Math.min(data.length, from + SECTOR_BYTES));
    return out;
  };
  let data = inode.durable;
  for (const op of inode.ops) {
    const before = data.length;
    data = applyFileOp(data, op);
    sizes.push(data.length);
    const [from, to] = op.kind === 'write' ? [op.position, op.position + op.data.length] : [Math.min(before, op.length), Math.max(before, op.length)];
    for (let s = Math.floor(from / SECTOR_BYTES); s * SECTOR_BYTES < to; s++) {
      let h = history.get(s);
      if (h === undefined) history.set(s, (h = [sectorOf(inode.durable, s)]));
      h.push(sectorOf(data, s));
    }
  }
  const size = sizes[random.int(sizes.length)]!;
  const out = Buffer.alloc(size);
  inode.durable.copy(out, 0, 0, Math.min(size, inode.durable.length));
  for (const [s, h] of history) {
    const at = s * SECTOR_BYTES;
    if (at >= size) continue;
    h[random.int(h.length)]!.copy(out, at, 0, Math.min(SECTOR_BYTES, size - at));
  }
  return out;
}
