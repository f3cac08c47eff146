/**
 * The NBD server in this process, real NBD clients as child processes:
 * nbdinfo, qemu-io, nbdcopy and fio must all work against it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryExportProvider } from '../../src/nbd/memory-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdRequestInfo } from '../../src/nbd/session.js';
import { run, runOk } from '../helpers/nbd-exec.js';
import { NbdTestClient } from '../helpers/nbd-test-client.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;

let nbdinfo: string;
let nbdcopy: string;
let qemuIo: string;
let fio: string;
let provider: MemoryExportProvider;
let server: NbdServer;
let port: number;
let tmp: string;
const requests: NbdRequestInfo[] = [];
const warnings: Array<Record<string, unknown>> = [];

const uri = (name: string) => `nbd://127.0.0.1:${port}/${name}`;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  nbdinfo = requireTool('nbdinfo', 'libnbd-bin');
  nbdcopy = requireTool('nbdcopy', 'libnbd-bin');
  qemuIo = requireTool('qemu-io', 'qemu-utils');
  fio = requireTool('fio', 'fio');
  provider = new MemoryExportProvider([
    { name: 'disk', size: 64 * MiB, description: 'torus test disk' },
    { name: 'copy', size: 32 * MiB },
    { name: 'fio', size: 16 * MiB },
    { name: 'ro', size: MiB, readOnly: true },
    { name: 'excl', size: MiB, exclusive: true },
  ]);
  const logger = pino({ level: 'warn' }, { write: (l: string) => warnings.push(JSON.parse(l) as Record<string, unknown>) });
  server = new NbdServer({ provider, logger, onRequest: (i) => requests.push(i) });
  ({ port } = await server.listen('127.0.0.1', 0));
  tmp = await mkdtemp(path.join(os.tmpdir(), 'torus-nbd-'));
});

afterAll(async () => {
  await server?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('NBD server with real clients', () => {
  it('nbdinfo shows size, block sizes, flags and base:allocation', async () => {
    const { stdout } = await runOk(nbdinfo, ['--json', uri('disk')]);
    const info = JSON.parse(stdout) as { protocol: string; structured: boolean; exports: Array<Record<string, unknown>> };
    expect(info.protocol).toBe('newstyle-fixed');
    expect(info.structured).toBe(true);
    const e = info.exports[0]!;
    expect(e).toMatchObject({
      'export-name': 'disk',
      description: 'torus test disk',
      'export-size': 64 * MiB,
      block_size_minimum: 1,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_fast_zero: true,
      can_cache: true,
      can_df: true,
      can_multi_conn: true,
    });
    expect(e.contexts).toContain('base:allocation');
  });

  it('nbdinfo --list lists every export', async () => {
    const { stdout } = await runOk(nbdinfo, ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    const names = (JSON.parse(stdout) as { exports: Array<{ 'export-name': string; is_read_only: boolean }> }).exports;
    expect(names.map((x) => x['export-name']).sort()).toEqual(['copy', 'disk', 'excl', 'fio', 'ro']);
    expect(names.find((x) => x['export-name'] === 'ro')!.is_read_only).toBe(true);
  });

  it('qemu-io writes and reads patterns at odd offsets and lengths', async () => {
    await runOk(qemuIo, ['-f', 'raw', '-c', 'write -P 0xab 1000 3333', uri('disk')]);
    const r = await runOk(qemuIo, [
      '-f', 'raw',
      '-c', 'read -P 0xab 1000 3333',
      '-c', 'read -P 0 0 1000',
      '-c', 'read -P 0 4333 7000',
      uri('disk'),
    ]);
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    expect(r.stdout).toMatch(/read 3333\/3333 bytes at offset 1000/);
    const disk = provider.disk('disk');
    expect(disk.peek(1000, 3333).equals(Buffer.alloc(3333, 0xab))).toBe(true);
    expect(disk.peek(999, 1)[0]).toBe(0);
    expect(disk.peek(4333, 1)[0]).toBe(0);
    // a wrong expectation is caught: the check above can fail
    const wrong = await run(qemuIo, ['-f', 'raw', '-c', 'read -P 0xac 1000 3333', uri('disk')]);
    expect(wrong.stdout + wrong.stderr).toMatch(/Pattern verification failed/);
  });

  it('nbdinfo --map shows data where written and holes elsewhere', async () => {
    await runOk(qemuIo, ['-f', 'raw', '-c', 'write -P 0x11 8M 1M', uri('disk')]);
    const { stdout } = await runOk(nbdinfo, ['--map', '--json', uri('disk')]);
    const map = JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>;
    const at = (off: number) => map.find((m) => m.offset <= off && off < m.offset + m.length)!;
    expect(at(8 * MiB + 10).type).toBe(0);
    expect(at(8 * MiB - 1).type).toBe(3);
    expect(at(9 * MiB).type).toBe(3);
    expect(at(1000).type).toBe(0);
    expect(map.reduce((n, m) => n + m.length, 0)).toBe(64 * MiB);
  });

  it('qemu-io discard and write -z read back as zeroes and punch holes', async () => {
    await runOk(qemuIo, ['-f', 'raw', '-c', 'write -P 0xcd 16M 2M', uri('disk')]);
    await runOk(qemuIo, ['-f', 'raw', '-c', 'discard 16M 1M', '-c', 'write -z 17M 512k', uri('disk')]);
    await runOk(qemuIo, ['-f', 'raw', '-c', 'read -P 0 16M 1536k', '-c', 'read -P 0xcd 17920k 512k', uri('disk')]);
    expect(provider.disk('disk').stats.trims).toBeGreaterThan(0);
    expect(provider.disk('disk').stats.zeroes).toBeGreaterThan(0);
    const { stdout } = await runOk(nbdinfo, ['--map', '--json', uri('disk')]);
    const map = JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>;
    const at = (off: number) => map.find((m) => m.offset <= off && off < m.offset + m.length)!;
    expect(at(16 * MiB + 4096).type & 1).toBe(1);
    expect(at(17 * MiB + 600 * 1024).type).toBe(0);
  });

  it('nbdcopy copies 32 MiB of random data in and out unchanged', async () => {
    const src = path.join(tmp, 'src.raw');
    const dst = path.join(tmp, 'dst.raw');
    const data = randomBytes(32 * MiB);
    await writeFile(src, data);
    await runOk(nbdcopy, [src, uri('copy')]);
    expect(sha256(provider.disk('copy').peek(0, 32 * MiB))).toBe(sha256(data));
    await writeFile(dst, Buffer.alloc(0));
    await runOk(nbdcopy, [uri('copy'), dst]);
    expect(sha256(await readFile(dst))).toBe(sha256(data));
  });

  it('fio random writes at iodepth 16 verify with crc32c', async () => {
    const r = await runOk(
      fio,
      [
        '--name=nbd-verify',
        '--ioengine=nbd',
        `--uri=${uri('fio')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--size=16m',
        '--verify=crc32c',
        '--output-format=json',
      ],
      { timeoutMs: 120_000 },
    );
    const job = (JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> }).jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(16 * MiB);
    // verification reads everything back
    expect(job.read.io_bytes).toBe(16 * MiB);
  });

  it('a read-only export refuses writes and the server stays up', async () => {
    const r = await run(qemuIo, ['-f', 'raw', '-c', 'write -P 1 0 512', uri('ro')]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/denied|read-only|Operation not permitted/i);
    const c = await NbdTestClient.tcp(port);
    await c.go('ro');
    const w = await c.request({ type: 1, offset: 0, data: Buffer.alloc(512, 1) });
    expect(w.error).toBe(1); // EPERM
    await c.disconnect();
    expect((await runOk(nbdinfo, ['--size', uri('ro')])).stdout.trim()).toBe(String(MiB));
  });

  it('a volume in use is refused with a message naming the holder', async () => {
    const h = await NbdTestClient.tcp(port);
    await h.go('excl');
    const holderAddr = `127.0.0.1:${(h.stream as unknown as { localPort: number }).localPort}`;

    const info = await run(nbdinfo, [uri('excl')], { env: { ...process.env, LIBNBD_DEBUG: '1' } });
    expect(info.code).not.toBe(0);
    expect(info.stderr).toContain('TORUS_ERR_VOLUME_IN_USE');
    expect(info.stderr).toContain(holderAddr);
    const q = await run(qemuIo, ['-f', 'raw', '-c', 'read 0 512', uri('excl')]);
    expect(q.code).not.toBe(0);
    expect(q.stdout + q.stderr).toContain(holderAddr);

    await h.disconnect();
    await waitFor('excl released', () => provider.disk('excl').holder === null, 10_000);
    await runOk(nbdinfo, [uri('excl')]);
  });

  it('fed the request observer and released every export it opened', async () => {
    const commands = new Set(requests.map((r) => r.command));
    for (const c of ['read', 'write', 'flush', 'trim', 'write_zeroes', 'block_status']) expect(commands).toContain(c);
    await waitFor('all connections closed', () => server.connectionCount === 0, 10_000);
    expect(provider.releases).toBe(provider.opens);
    // real clients never tripped a protocol check or a limit
    expect(warnings).toEqual([]);
  });
});
