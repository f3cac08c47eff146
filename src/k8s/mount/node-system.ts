/**
 * FlexSystem on a real node, run by torusd. Where this runs: inside torusd's
 * container, which sees the host's /dev and has /var/lib/kubelet mounted with
 * Bidirectional propagation, so the mounts it makes appear on the host and in
 * the pods. The tools (blkid, mkfs.*, mount, umount, blockdev) come from the
 * image (util-linux, e2fsprogs, xfsprogs), never from the node.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, readFile, rm, rmdir, statfs } from 'node:fs/promises';
import type { ErrorCode } from '../../errors/codes.js';
import { TorusError } from '../../errors/torus-error.js';
import type { FsType, MountErrorCodes } from './filesystem.js';
import { interpretBlkid, parseMountInfo, type MountEntry, type Probe } from './mountinfo.js';
import type { FsStats, MountSystem } from './system.js';

const TOOL_TIMEOUT_MS = 60_000;
/** mkfs of a large volume over the network takes a while; kubelet itself sets no limit on mount. */
const MKFS_TIMEOUT_MS = 15 * 60_000;
const OUTPUT_BYTES_MAX = 1024 * 1024;

interface ToolResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function runTool(code: ErrorCode, cmd: string, args: readonly string[], timeoutMs = TOOL_TIMEOUT_MS): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: OUTPUT_BYTES_MAX, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') {
        reject(
          new TorusError(code, err.killed ? `${cmd} ${args.join(' ')} did not finish within ${timeoutMs} ms` : `cannot run ${cmd}: ${err.message}`, {
            cause: err,
          }),
        );
        return;
      }
      resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
    });
  });
}

async function mustRun(code: ErrorCode, cmd: string, args: readonly string[], timeoutMs?: number): Promise<ToolResult> {
  const r = await runTool(code, cmd, args, timeoutMs);
  if (r.code !== 0) {
    throw new TorusError(code, `${cmd} ${args.join(' ')} exited ${String(r.code)}: ${(r.stderr.trim() || r.stdout.trim()).slice(0, 1000)}`);
  }
  return r;
}

/** mkfs without -F/-f: should mkfs see a filesystem that blkid missed, it refuses rather than overwrite. */
function mkfsArgs(fsType: FsType, device: string): [string, string[]] {
  switch (fsType) {
    case 'ext4':
    case 'ext3':
      return [`mkfs.${fsType}`, ['-q', device]];
    case 'xfs':
      return ['mkfs.xfs', ['-q', device]];
  }
}

export class NodeSystem implements MountSystem {
  /** Failures are reported under the driver's codes (FlexVolume or CSI). */
  constructor(private readonly codes: MountErrorCodes) {}

  private run(cmd: string, args: readonly string[], timeoutMs?: number): Promise<ToolResult> {
    return mustRun(this.codes.mountFailed, cmd, args, timeoutMs);
  }

  async deviceSize(device: string): Promise<number> {
    const r = await this.run('blockdev', ['--getsize64', device]);
    const n = Number(r.stdout.trim());
    if (!Number.isSafeInteger(n)) throw new TorusError(this.codes.deviceRead, `blockdev --getsize64 ${device} printed ${JSON.stringify(r.stdout.trim())}`);
    return n;
  }

  async readExact(device: string, offset: number, length: number): Promise<void> {
    const fh = await open(device, 'r');
    try {
      const buf = Buffer.alloc(Math.min(length, 1024 * 1024));
      let done = 0;
      while (done < length) {
        const want = Math.min(buf.length, length - done);
        const { bytesRead } = await fh.read(buf, 0, want, offset + done);
        if (bytesRead === 0) throw new Error(`short read at byte ${offset + done} of ${device}`);
        done += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }

  async probe(device: string): Promise<Probe> {
    // -p: probe the device itself, not blkid's cache; -o export: KEY=value lines.
    const r = await runTool(this.codes.deviceRead, 'blkid', ['-p', '-o', 'export', device]);
    return interpretBlkid(r.code, r.stdout, r.stderr);
  }

  async mkfs(device: string, fsType: FsType): Promise<void> {
    const [cmd, args] = mkfsArgs(fsType, device);
    await this.run(cmd, args, MKFS_TIMEOUT_MS);
  }

  async mount(device: string, target: string, fsType: FsType, options: readonly string[]): Promise<void> {
    await this.run('mount', ['-t', fsType, '-o', options.join(','), device, target]);
  }

  async bind(source: string, target: string, readOnly: boolean): Promise<void> {
    await this.run('mount', ['--bind', source, target]);
    if (readOnly) {
      // A bind mount takes its flags from a remount; a read-only bind of a
      // read-write staging mount is how a ro pod shares the device with a rw one.
      try {
        await this.run('mount', ['-o', 'remount,bind,ro', target]);
      } catch (err) {
        await runTool(this.codes.mountFailed, 'umount', [target]).catch(() => undefined);
        throw err;
      }
    }
  }

  async unmount(target: string): Promise<void> {
    await this.run('umount', [target]);
  }

  async flush(device: string): Promise<void> {
    const fh = await open(device, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  async mountTable(): Promise<MountEntry[]> {
    return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
  }

  async mkdirp(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true, mode: 0o750 });
  }

  async touch(file: string): Promise<void> {
    // 'a': create if missing, never truncate what is there.
    const fh = await open(file, 'a', 0o640);
    await fh.close();
  }

  async remove(target: string): Promise<void> {
    try {
      await rmdir(target);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      // A file (a raw block target): rm without recursion removes files only.
      if (code === 'ENOTDIR') await rm(target, { force: true });
      else throw err;
    }
  }

  async statfs(dir: string): Promise<FsStats> {
    const s = await statfs(dir);
    return {
      totalBytes: s.blocks * s.bsize,
      availableBytes: s.bavail * s.bsize,
      usedBytes: (s.blocks - s.bfree) * s.bsize,
      totalInodes: s.files,
      freeInodes: s.ffree,
      usedInodes: s.files - s.ffree,
    };
  }
}
