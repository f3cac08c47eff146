/**
 * End to end: the real torusd (its own etcd, its own data dir) serving volumes
 * to the real NBD clients people use: nbdinfo, qemu-io, nbdcopy, fio and
 * nbdfuse + ext4 on a loop mount.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { run, runOk } from '../helpers/nbd-exec.js';
import { httpGet, qemuIo, qemuIoOk, startTorusd, torusctlOk, type TorusdHandle } from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const BLOCK = MiB;

let etcd: EtcdHandle | undefined;
let d: TorusdHandle;
let tmp: string;

beforeAll(async () => {
  for (const [tool, pkg] of [
    ['nbdinfo', 'libnbd-bin'],
    ['nbdcopy', 'libnbd-bin'],
    ['nbdfuse', 'nbdfuse'],
    ['qemu-io', 'qemu-utils'],
    ['fio', 'fio'],
    ['mkfs.ext4', 'e2fsprogs'],
    ['e2fsck', 'e2fsprogs'],
    ['fusermount3', 'fuse3'],
    ['mount', 'mount'],
    ['umount', 'mount'],
  ] as const) {
    requireTool(tool, pkg);
  }
  ensureBuilt();
  tmp = await mkdtemp(path.join(os.tmpdir(), 'torus-e2e-clients-'));
  etcd = await startEtcd();
  // 1 GiB of nbdcopy + 512 MiB of fio + a file system on separate volumes.
  d = await startTorusd({ etcd: etcd.endpoint, size: '4GiB' });
  for (const [name, size] of [['pad', '1GiB'], ['fio', '1GiB'], ['fs', '1GiB']]) {
    await torusctlOk(etcd.endpoint, ['volume', 'create-block', name!, size!]);
  }
});

afterAll(async () => {
  await cleanupFuse();
  await d?.destroy();
  await etcd?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** Fails with the daemon's log when torusd died under a test. */
function expectAlive(): void {
  if (!d.running) throw new Error(`torusd is not running any more:\n${d.tail()}`);
}

describe('torusd', () => {
  it('runs libuv with the thread pool size it asks for (set before the pool starts)', () => {
    const ready = d.lines().find((l) => l.msg === 'torusd ready') as { threadpoolThreads?: number | null } | undefined;
    expect(ready).toBeDefined();
    // null only where /proc cannot tell; Linux CI can.
    expect(ready!.threadpoolThreads).toBe(8);
  });
});

describe('nbdinfo', () => {
  it('--json describes the 1 GiB volume: size, block sizes, flags and base:allocation', async () => {
    const r = await runOk('nbdinfo', ['--json', d.nbdUri('pad')]);
    const doc = JSON.parse(r.stdout) as { structured: boolean; exports: Record<string, unknown>[] };
    expect(doc.structured).toBe(true);
    expect(doc.exports).toHaveLength(1);
    const e = doc.exports[0]!;
    expect(e).toMatchObject({
      'export-name': 'pad',
      'export-size': GiB,
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
      block_size_minimum: 1,
      block_size_preferred: 4096,
    });
    expect(e.contexts).toContain('base:allocation');
    const max = e.block_size_maximum as number;
    expect(max).toBeGreaterThanOrEqual(BLOCK);
    expect(max % 4096).toBe(0);
    expect(max).toBeLessThanOrEqual(64 * MiB);
  });

  it('--map shows a hole before a write, data after, and a hole again after a whole block is discarded', async () => {
    const uri = d.nbdUri('pad');
    expect(parseMap((await runOk('nbdinfo', ['--map', uri])).stdout)).toEqual([{ offset: 0, length: GiB, type: 3, desc: 'hole,zero' }]);

    // 10000 bytes across the boundary of blocks 0 and 1.
    await qemuIoOk(uri, ['write -P 0x5a 1048000 10000', 'flush']);
    const afterWrite = parseMap((await runOk('nbdinfo', ['--map', uri])).stdout);
    expect(afterWrite[0]).toEqual({ offset: 0, length: 2 * BLOCK, type: 0, desc: 'data' });
    expect(afterWrite.slice(1).every((x) => (x.type & 1) === 1)).toBe(true);
    expect(totalLength(afterWrite)).toBe(GiB);

    await qemuIoOk(uri, [`discard ${BLOCK} ${BLOCK}`]);
    const afterOne = parseMap((await runOk('nbdinfo', ['--map', uri])).stdout);
    expect(afterOne[0]).toEqual({ offset: 0, length: BLOCK, type: 0, desc: 'data' });
    expect(afterOne[1]).toMatchObject({ offset: BLOCK, type: 3 });
    // Block 0 keeps its part of the write; block 1 reads as zeroes.
    await qemuIoOk(uri, ['read -P 0x5a 1048000 576', 'read -P 0 1048576 9424', 'read -P 0 1040000 8000']);

    await qemuIoOk(uri, [`discard 0 ${BLOCK}`]);
    expect(parseMap((await runOk('nbdinfo', ['--map', uri])).stdout)).toEqual([{ offset: 0, length: GiB, type: 3, desc: 'hole,zero' }]);
    await qemuIoOk(uri, ['read -P 0 0 2M']);
  });
});

describe('qemu-io', () => {
  it('writes and reads patterns at odd offsets and lengths across block boundaries', async () => {
    const uri = d.nbdUri('pad');
    const base = 64 * MiB;
    await qemuIoOk(uri, [
      `write -P 0x5a ${base + 1048000} 10000`,
      `read -P 0x5a ${base + 1048000} 10000`,
      `read -P 0 ${base + 1040000} 8000`,
      `read -P 0 ${base + 1058000} 7000`,
      // Three blocks at once, starting and ending mid-block, unaligned.
      `write -P 0xc3 ${base + 3 * BLOCK - 777} ${2 * BLOCK + 1555}`,
      `read -P 0xc3 ${base + 3 * BLOCK - 777} ${2 * BLOCK + 1555}`,
      `read -P 0 ${base + 3 * BLOCK - 4096} ${4096 - 777}`,
      `read -P 0 ${base + 5 * BLOCK + 778} 4096`,
      // Sub-sector pieces inside one block.
      `write -P 0x11 ${base + 7 * BLOCK + 1} 1`,
      `write -P 0x22 ${base + 7 * BLOCK + 2} 511`,
      `read -P 0 ${base + 7 * BLOCK} 1`,
      `read -P 0x11 ${base + 7 * BLOCK + 1} 1`,
      `read -P 0x22 ${base + 7 * BLOCK + 2} 511`,
      `read -P 0 ${base + 7 * BLOCK + 513} 1000`,
      'flush',
    ]);
    // A second process sees the same bytes.
    await qemuIoOk(uri, [`read -P 0x5a ${base + 1048000} 10000`, `read -P 0xc3 ${base + 3 * BLOCK - 777} ${2 * BLOCK + 1555}`, `read -P 0x22 ${base + 7 * BLOCK + 2} 511`], { readOnly: true });
  });

  it('write -z zeroes a range (with and without a hole) and aio_writes land', async () => {
    const uri = d.nbdUri('pad');
    const base = 128 * MiB;
    await qemuIoOk(uri, [
      `write -P 0x77 ${base} ${3 * BLOCK}`,
      `write -z ${base + 1000} 5000`,
      `write -z -u ${base + BLOCK} ${BLOCK}`,
      `read -P 0x77 ${base} 1000`,
      `read -P 0 ${base + 1000} 5000`,
      `read -P 0x77 ${base + 6000} ${BLOCK - 6000}`,
      `read -P 0 ${base + BLOCK} ${BLOCK}`,
      `read -P 0x77 ${base + 2 * BLOCK} ${BLOCK}`,
      `aio_write -P 0x01 ${base + 3 * BLOCK} 65536`,
      `aio_write -P 0x02 ${base + 3 * BLOCK + 65536} 65536`,
      `aio_write -P 0x03 ${base + 4 * BLOCK - 100} 200`,
      'aio_flush',
      `read -P 0x01 ${base + 3 * BLOCK} 65536`,
      `read -P 0x02 ${base + 3 * BLOCK + 65536} 65536`,
      `read -P 0x03 ${base + 4 * BLOCK - 100} 200`,
    ]);
  });

  it('reading past the end fails without hurting the connection or the daemon', async () => {
    // qemu checks the range itself; the server side of this is in e2e-bad-input.
    const r = await qemuIo(d.nbdUri('pad'), [`read ${GiB - 1000} 2000`]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/read failed/);
    await qemuIoOk(d.nbdUri('pad'), [`read -P 0 ${GiB - 1000} 1000`]);
    expectAlive();
  });
});

describe('nbdcopy', () => {
  it('copies 1 GiB of random data in and back out with the same SHA-256', async () => {
    const file = path.join(tmp, 'random.bin');
    const sha = createHash('sha256');
    const fh = await open(file, 'w');
    try {
      const chunk = Buffer.allocUnsafe(4 * MiB);
      for (let at = 0; at < GiB; at += chunk.length) {
        randomFillSync(chunk);
        sha.update(chunk);
        await fh.write(chunk, 0, chunk.length, at);
      }
    } finally {
      await fh.close();
    }
    const expected = sha.digest('hex');

    await runOk('nbdcopy', ['--flush', file, d.nbdUri('pad')], { timeoutMs: 180_000 });
    await rm(file);

    const out = await hashStdout('nbdcopy', [d.nbdUri('pad'), '-'], 180_000);
    expect(out.bytes).toBe(GiB);
    expect(out.sha256).toBe(expected);
    // Every block holds data now.
    const map = parseMap((await runOk('nbdinfo', ['--map', d.nbdUri('pad')])).stdout);
    expect(map).toEqual([{ offset: 0, length: GiB, type: 0, desc: 'data' }]);
  });
});

describe('fio over the nbd engine', () => {
  const uri = () => d.nbdUri('fio');
  const common = (name: string) => [`--name=${name}`, '--ioengine=nbd', `--uri=${uri()}`, '--bs=4k', '--iodepth=16', '--verify=crc32c', '--verify_fatal=1', '--output-format=json'];

  it('randwrite 512 MiB, 4k, iodepth 16, verified with crc32c', async () => {
    const r = await run('fio', [...common('randwrite'), '--rw=randwrite', '--size=512m', '--do_verify=1'], { timeoutMs: 240_000 });
    expect(r.code, `${r.stderr}\n${r.stdout.slice(-3000)}`).toBe(0);
    const job = fioJob(r.stdout);
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(512 * MiB);
    // The verify pass reads back every block written.
    expect(job.read.io_bytes).toBe(512 * MiB);
    expectAlive();
  });

  it('verification really checks data: a verify-only pass fails once the data changed', async () => {
    // A small job of its own: write + verify, verify again (same seed, same offsets), change data, verify.
    const small = [...common('small'), '--rw=randwrite', '--size=16m', '--offset=768m'];
    const first = await run('fio', [...small, '--do_verify=1'], { timeoutMs: 120_000 });
    expect(first.code, first.stderr).toBe(0);
    const again = await run('fio', [...small, '--verify_only=1'], { timeoutMs: 120_000 });
    expect(again.code, again.stderr).toBe(0);
    expect(fioJob(again.stdout).read.io_bytes).toBe(16 * MiB);

    await qemuIoOk(uri(), [`write -P 0xee ${775 * MiB + 4096 * 3} ${MiB}`, 'flush']);
    const bad = await run('fio', [...small, '--verify_only=1'], { timeoutMs: 120_000 });
    expect(bad.code, `fio --verify_only passed over changed data:\n${bad.stderr}`).not.toBe(0);
    expect(bad.stderr).toMatch(/verify/i);
  });

  it('/metrics, /v1/status and /healthz reflect the traffic served so far', async () => {
    const metrics = (await httpGet(`${d.httpUrl}/metrics`)).body;
    const value = (re: RegExp) => Number(re.exec(metrics)?.[1] ?? NaN);
    expect(value(/^torus_nbd_requests_total\{command="write",result="ok"\} (\d+)/m)).toBeGreaterThan(1000);
    expect(value(/^torus_nbd_requests_total\{command="read",result="ok"\} (\d+)/m)).toBeGreaterThan(1000);
    expect(value(/^torus_nbd_written_bytes_total (\d+)/m)).toBeGreaterThan(1024 ** 3);
    expect(value(/^torus_store_capacity_bytes (\d+)/m)).toBeGreaterThan(0);
    expect(value(/^torus_store_used_bytes (\d+)/m)).toBeGreaterThan(1024 ** 3);
    expect(value(/^torus_store_crc_failures_total (\d+)/m)).toBe(0);
    expect(metrics).toMatch(/^torus_nbd_request_duration_seconds_bucket\{/m);
    expect(metrics).toMatch(/^process_resident_memory_bytes \d+/m);
    const status = JSON.parse((await httpGet(`${d.httpUrl}/v1/status`)).body) as { uuid: string; used: number; capacity: number; etcd: { healthy: boolean } };
    expect(status.uuid).toBe(d.uuid);
    expect(status.used).toBeLessThanOrEqual(status.capacity);
    expect(status.etcd.healthy).toBe(true);
    expect((await httpGet(`${d.httpUrl}/healthz`)).status).toBe(200);
  });

  it('randrw 256 MiB with verify', async () => {
    const r = await run('fio', [...common('randrw'), '--rw=randrw', '--size=256m', '--offset=512m', '--do_verify=1'], { timeoutMs: 240_000 });
    expect(r.code, `${r.stderr}\n${r.stdout.slice(-3000)}`).toBe(0);
    const job = fioJob(r.stdout);
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBeGreaterThan(64 * MiB);
    // Reads = the job's own reads plus the verify pass over every block written.
    expect(job.read.io_bytes).toBeGreaterThanOrEqual(job.write.io_bytes);
    expectAlive();
  });
});

describe('nbdfuse + ext4 on a loop mount', () => {
  it('keeps 50 files across unmount, a new NBD connection and mount', async () => {
    const fuseDir = path.join(tmp, 'fuse');
    const disk = path.join(fuseDir, 'disk');
    const mnt = path.join(tmp, 'mnt');
    await mkdir(fuseDir, { recursive: true });
    await mkdir(mnt, { recursive: true });
    fuse.dir = fuseDir;
    fuse.mnt = mnt;

    await startNbdfuse(disk, d.nbdUri('fs'));
    await runOk('mkfs.ext4', ['-q', '-F', disk], { timeoutMs: 120_000 });
    await runOk('mount', ['-o', 'loop', disk, mnt]);
    fuse.mounted = true;

    const files = new Map<string, string>();
    for (let i = 0; i < 50; i++) {
      // Sizes from 0 to ~3 MiB, some not a multiple of anything.
      const size = i === 0 ? 0 : Math.floor(Math.random() * 3 * MiB) + (i % 7);
      const data = randomBytes(size);
      const name = `file-${String(i).padStart(2, '0')}.bin`;
      await writeFile(path.join(mnt, name), data);
      files.set(name, createHash('sha256').update(data).digest('hex'));
    }
    await runOk('sync', []);
    await runOk('umount', [mnt]);
    fuse.mounted = false;
    await stopNbdfuse();

    // A fresh nbdfuse: nothing can come from its caches.
    await startNbdfuse(disk, d.nbdUri('fs'));
    await runOk('e2fsck', ['-f', '-n', disk], { timeoutMs: 120_000 });
    await runOk('mount', ['-o', 'loop', disk, mnt]);
    fuse.mounted = true;
    const names = (await readdir(mnt)).filter((n) => n !== 'lost+found').sort();
    expect(names).toEqual([...files.keys()].sort());
    for (const [name, sha] of files) {
      const got = createHash('sha256').update(await readFile(path.join(mnt, name))).digest('hex');
      expect(got, name).toBe(sha);
    }
    await runOk('umount', [mnt]);
    fuse.mounted = false;
    await stopNbdfuse();
    expectAlive();
  });
});

// ------------------------------------------------------------------ helpers

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  desc: string;
}

/** nbdinfo --map lines: "offset length type description". */
function parseMap(text: string): MapEntry[] {
  return text
    .trim()
    .split('\n')
    .map((line) => {
      const m = /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(.*)$/.exec(line);
      if (!m) throw new Error(`unexpected nbdinfo --map line: ${JSON.stringify(line)}`);
      return { offset: Number(m[1]), length: Number(m[2]), type: Number(m[3]), desc: m[4]!.trim() };
    });
}

function totalLength(map: MapEntry[]): number {
  return map.reduce((n, x) => n + x.length, 0);
}

interface FioJob {
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

function fioJob(stdout: string): FioJob {
  // fio may print notes before the JSON document.
  const doc = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] };
  expect(doc.jobs).toHaveLength(1);
  return doc.jobs[0]!;
}

/** Runs a command and hashes its stdout as it streams (no temporary file). */
function hashStdout(cmd: string, args: string[], timeoutMs: number): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const sha = createHash('sha256');
    let bytes = 0;
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      bytes += c.length;
      sha.update(c);
    });
    child.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal}: ${stderr}`));
      resolve({ bytes, sha256: sha.digest('hex') });
    });
  });
}

const fuse: { dir: string | null; mnt: string | null; mounted: boolean; child: ChildProcess | null; output: string } = {
  dir: null,
  mnt: null,
  mounted: false,
  child: null,
  output: '',
};

async function startNbdfuse(file: string, uri: string): Promise<void> {
  const child = spawn('nbdfuse', [file, uri], { stdio: ['ignore', 'pipe', 'pipe'] });
  fuse.child = child;
  fuse.output = '';
  child.stdout!.on('data', (c: Buffer) => (fuse.output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (fuse.output += c.toString()));
  await waitFor(
    `nbdfuse to expose ${file}`,
    () => {
      if (child.exitCode !== null) throw new Error(`nbdfuse exited ${child.exitCode}: ${fuse.output}`);
      return existsSync(file) && statSync(file).size === GiB;
    },
    15_000,
  );
}

async function stopNbdfuse(): Promise<void> {
  const child = fuse.child;
  if (!child || !fuse.dir) return;
  // umount of a loop mount lets go of the loop device a little later (the
  // kernel detaches it asynchronously): until then the FUSE file is open
  // and fusermount3 -u answers "Device or resource busy".
  const disk = path.join(fuse.dir, 'disk');
  await waitFor(
    `the loop device on ${disk} to be released after umount`,
    async () => (await run('losetup', ['-j', disk])).stdout.trim() === '',
    15_000,
  );
  await runOk('fusermount3', ['-u', fuse.dir]);
  const exit = await exitOf(child, 15_000);
  expect(exit, `nbdfuse did not exit cleanly after fusermount3 -u: ${fuse.output}`).toEqual({ code: 0, signal: null });
  fuse.child = null;
}

/** Resolves with how the child exited, or null if it is still running after timeoutMs. */
function exitOf(child: ChildProcess, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null } | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

/** Best effort, for afterAll after a failure: nothing stays mounted. */
async function cleanupFuse(): Promise<void> {
  const mounts = () => (existsSync('/proc/mounts') ? readFileSync('/proc/mounts', 'utf8') : '');
  if (fuse.mnt && mounts().includes(` ${fuse.mnt} `)) await run('umount', ['-l', fuse.mnt]).catch(() => undefined);
  if (fuse.dir && mounts().includes(` ${fuse.dir} `)) await run('fusermount3', ['-u', '-z', fuse.dir]).catch(() => undefined);
  const child = fuse.child;
  if (child && child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    if ((await exitOf(child, 5000)) === null) child.kill('SIGKILL');
  }
}
