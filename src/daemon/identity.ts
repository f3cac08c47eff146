import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { TorusError } from '../errors/torus-error.js';
import { writeFileDurably } from '../store/store-io.js';

/**
 * A peer's UUID lives in its data dir, so a restarted peer is the same ring
 * member and finds its own blocks.
 */
export async function loadOrCreatePeerId(dataDir: string): Promise<{ uuid: string; created: boolean }> {
  await mkdir(dataDir, { recursive: true });
  const file = path.join(dataDir, 'peer.json');
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as { uuid?: unknown };
    if (typeof doc.uuid !== 'string' || !/^[0-9a-f-]{36}$/.test(doc.uuid)) {
      throw new TorusError('TORUS_ERR_STORE_CORRUPT', `${file} holds no valid peer uuid`);
    }
    return { uuid: doc.uuid, created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      if (err instanceof TorusError) throw err;
      throw new TorusError('TORUS_ERR_DAEMON_START', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  const uuid = randomUUID();
  await writeFileDurably(file, JSON.stringify({ schema: 1, uuid, createdAt: new Date().toISOString() }) + '\n');
  return { uuid, created: true };
}

/**
 * Claims a data dir for this process. A pid file names the last torusd that
 * used it, and the boot it ran in; if that process still runs (and is a
 * torusd), starting is refused: two daemons on one store would corrupt it. A
 * stale pid file (kill -9, power loss) is taken over.
 *
 * Pids are reused, so "a process with that pid runs" is not enough. After a
 * reboot (a power loss) the boot id differs and the file is stale whatever
 * runs now: pids are handed out in much the same order at every boot, and
 * the power-loss suite saw the new torusd refuse to start because the old
 * pid was now one of its own threads (kill(tid, 0) and /proc/<tid> work for
 * thread ids too). So a pid that is a thread of any process, or of this one,
 * is not the previous torusd either; a pid file always names a process.
 */
export async function claimDataDir(dataDir: string, pid = process.pid, bootId: string | null = null): Promise<void> {
  const file = path.join(dataDir, 'torusd.pid');
  const boot = bootId ?? (await readBootId());
  let previous: { pid: number; bootId: string | null } | null = null;
  try {
    previous = parsePidFile(await readFile(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const sameBoot = previous?.bootId == null || boot === null || previous.bootId === boot;
  if (previous !== null && sameBoot && previous.pid !== pid && (await isOtherTorusd(previous.pid, pid))) {
    throw new TorusError('TORUS_ERR_DATA_DIR_IN_USE', `data dir ${dataDir} is in use by torusd pid ${previous.pid}; stop it first or use another --data-dir`);
  }
  await writeFile(file, boot === null ? `${pid}\n` : `${pid} ${boot}\n`);
}

/** "PID" (written before boot ids were) or "PID BOOT_ID"; null when it names no pid. */
export function parsePidFile(text: string): { pid: number; bootId: string | null } | null {
  const m = /^\s*(\d+)(?:\s+([0-9a-f-]{36}))?\s*$/.exec(text);
  if (m === null) return null;
  return { pid: Number.parseInt(m[1]!, 10), bootId: m[2] ?? null };
}

export async function releaseDataDir(dataDir: string): Promise<void> {
  await unlink(path.join(dataDir, 'torusd.pid')).catch(() => undefined);
}

/** The kernel's id of this boot; null where /proc does not have it. */
async function readBootId(): Promise<string | null> {
  try {
    return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim() || null;
  } catch {
    return null;
  }
}

async function isOtherTorusd(pid: number, self: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // A thread id is not a torusd's pid: its thread group is another process (or this one).
    const tgid = /^Tgid:\s*(\d+)$/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1];
    if (tgid !== undefined && (Number(tgid) !== pid || Number(tgid) === self)) return false;
    return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).includes('torusd');
  } catch {
    return true; // alive but unreadable: assume the worst
  }
}

/** The etcd lease of the last session, so a restart can revoke it (see TorusDaemon). */
export async function readLeaseFile(dataDir: string): Promise<string | null> {
  try {
    const doc = JSON.parse(await readFile(path.join(dataDir, 'lease.json'), 'utf8')) as { leaseId?: unknown };
    return typeof doc.leaseId === 'string' ? doc.leaseId : null;
  } catch {
    return null;
  }
}

export async function writeLeaseFile(dataDir: string, leaseId: string): Promise<void> {
  const file = path.join(dataDir, 'lease.json');
  await writeFile(`${file}.tmp`, JSON.stringify({ schema: 1, leaseId }) + '\n');
  await rename(`${file}.tmp`, file);
}
