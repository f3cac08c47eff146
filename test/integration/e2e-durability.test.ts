/**
 * End to end durability of the real torusd: what a client flushed survives
 * kill -9 (the store recovers on the next start), writes in flight at
 * the kill do not damage flushed data, and a SIGTERM stop loses nothing.
 */
import { createHash } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { scratchDir } from '../helpers/nbd-exec.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import type { NbdTestClient } from '../helpers/nbd-test-client.js';
import {
  httpGet,
  nbdConnect,
  qemuIoOk,
  startTorusblkServe,
  startTorusd,
  torusctlOk,
  type LogLine,
  type TorusblkServeHandle,
  type TorusdHandle,
  volumeList,
} from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = MiB;
/**
 * What the store logs when it starts after a crash. It was "journal replayed
 * after an unclean stop" while the store had a journal and is "checksums of
 * blocks written before an unclean stop recomputed" since it has a dirty log;
 * either way the message names an unclean stop, and only a crash causes it.
 */
const RECOVERED = /unclean stop/;

let etcd: EtcdHandle | undefined;
let d: TorusdHandle;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  requireTool('qemu-io', 'qemu-utils');
  requireTool('fio', 'fio');
  ensureBuilt();
  etcd = await startEtcd();
  d = await startTorusd({ etcd: etcd.endpoint, size: '2GiB' });
  for (const name of ['pad', 'tick', 'stream', 'bulk', 'clean']) {
    await torusctlOk(etcd.endpoint, ['volume', 'create-block', name, '256MiB']);
  }
});

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  await d?.destroy();
  await etcd?.stop();
});

/** Deterministic bytes for pattern i: a SHA-256 chain, so every pattern differs everywhere. */
function pattern(i: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let seed = createHash('sha256').update(`torus-e2e-durability-${i}`).digest();
  for (let at = 0; at < length; at += seed.length) {
    seed.copy(out, at);
    seed = createHash('sha256').update(seed).digest();
  }
  return out;
}

const recoveredIn = (lines: LogLine[]) => lines.some((l) => RECOVERED.test(String(l.msg ?? '')));

describe('kill -9', () => {
  it('a flushed write survives kill -9; the restart logs its recovery from an unclean stop', async () => {
    const uri = d.nbdUri('pad');
    await qemuIoOk(uri, ['write -P 0x5a 1048000 10000', `write -P 0xa5 ${5 * MiB + 3} ${3 * MiB}`, 'flush']);
    // torusd releases the volume lock just after qemu-io hangs up; killed
    // before that, its lock would outlive it until the etcd lease expires.
    await waitFor('pad to be released', async () => (await volumeList(etcd!.endpoint)).get('pad')?.status === 'free', 10_000);
    const before = d.pid;

    // The store forgets its crash bookkeeping at each checkpoint (every few
    // seconds); one more write just before the kill makes sure the kill
    // lands mid-epoch, so the restart has something to recover.
    const tick = await nbdConnect(d.nbdPort, 'tick');
    await tick.write(0, Buffer.alloc(4096, 1));
    const st = await d.kill('SIGKILL');
    tick.close();
    expect(st.signal).toBe('SIGKILL');
    await d.restart();
    expect(d.pid).not.toBe(before);
    expect(recoveredIn(d.lines()), d.tail()).toBe(true);
    // The killed process held "tick" open; the restart revokes its lease, so
    // the volume can be written again at once, not after the 30 s TTL.
    expect(d.lines().some((l) => l.msg === 'revoked the lease of the previous run'), d.tail()).toBe(true);
    const again = await nbdConnect(d.nbdPort, 'tick');
    await again.write(4096, Buffer.alloc(4096, 2));
    again.close();

    await qemuIoOk(uri, [
      'read -P 0 0 1048000',
      'read -P 0x5a 1048000 10000',
      `read -P 0 1058000 ${5 * MiB + 3 - 1058000}`,
      `read -P 0xa5 ${5 * MiB + 3} ${3 * MiB}`,
      `read -P 0 ${8 * MiB + 3} ${MiB}`,
    ]);
  });

  it('every flushed pattern survives kill -9 in the middle of an unflushed write stream', async () => {
    const patterns = 48;
    const patternBytes = 64 * KiB;
    // Pattern i sits in the first half of block i at an odd place; the
    // unflushed stream writes only second halves, of the same blocks.
    const where = (i: number) => i * BLOCK + ((i * 12_345) % (BLOCK / 2 - patternBytes));

    const writer = await nbdConnect(d.nbdPort, 'stream');
    cleanups.push(async () => writer.close());
    for (let i = 0; i < patterns; i++) {
      await writer.write(where(i), pattern(i, patternBytes));
      const f = await writer.flush();
      expect(f.error, `flush after pattern ${i}`).toBe(0);
    }

    // fio hammers another volume without any fsync.
    const fio = spawnFio(d.nbdUri('bulk'));
    cleanups.push(async () => fio.child.kill('SIGKILL'));

    // The unflushed stream: 16 writes in flight at all times until the connection dies.
    const stream = unflushedStream(writer, patterns, 16);
    const writtenAtStart = await writtenBytes(d);
    await waitFor('the unflushed stream and fio to be under way', async () => stream.completed >= 200 && (await writtenBytes(d)) - writtenAtStart >= 200 * 64 * KiB + 16 * MiB, 30_000);
    expect(fio.exited(), `fio stopped early: ${fio.output()}`).toBe(false);
    expect(writer.pendingCount).toBeGreaterThan(0);

    await d.kill('SIGKILL');
    await stream.done;
    expect(stream.error, 'the stream should end because the connection died').not.toBeNull();
    await fio.wait();

    await d.restart();
    expect(recoveredIn(d.lines()), d.tail()).toBe(true);
    // The blocks written since the last checkpoint are suspect after the
    // kill: torusd compares (here, with one copy, adopts) them right after
    // it starts. A writer does that inline; a read-only reader cannot.
    await waitFor('suspect blocks of "stream" to be repaired', async () => (await suspectBlocks(d, etcd!.endpoint, 'stream')) === 0, 30_000);

    // A read-only gateway takes no lock, so it can check the data at once.
    const ro = await startTorusblkServe({ etcd: etcd!.endpoint, readOnly: true });
    cleanups.push(() => ro.stop());
    await checkFlushedPatterns(ro, patterns, patternBytes, where);
    await ro.stop();
  });
});

describe('SIGTERM', () => {
  it('a clean stop keeps acknowledged but unflushed writes, and the start recovers nothing', async () => {
    const c = await nbdConnect(d.nbdPort, 'clean');
    cleanups.push(async () => c.close());
    const offsets = [0, 6777, BLOCK - 1000, 3 * BLOCK + 4096, 100 * BLOCK + 1];
    for (const [i, off] of offsets.entries()) await c.write(off, pattern(1000 + i, 5000));
    // No flush: the client is still connected when the daemon is told to stop.
    expect(c.pendingCount).toBe(0);

    // torusd waits (up to its NBD close timeout, 10 s) for connected clients to hang up.
    await d.stop();
    c.close();
    await d.restart();
    // The store logs its recovery before "block store open", which comes before "torusd ready".
    expect(recoveredIn(d.lines()), d.tail()).toBe(false);

    const r = await nbdConnect(d.nbdPort, 'clean');
    try {
      for (const [i, off] of offsets.entries()) {
        expect((await r.read(off, 5000)).equals(pattern(1000 + i, 5000)), `pattern at ${off}`).toBe(true);
      }
      expect((await r.read(5000, 1777)).equals(Buffer.alloc(1777)), 'never written').toBe(true);
    } finally {
      await r.disconnect();
    }
    // Earlier tests' data is still there after yet another restart.
    await qemuIoOk(d.nbdUri('pad'), ['read -P 0x5a 1048000 10000', `read -P 0xa5 ${5 * MiB + 3} ${3 * MiB}`]);
    expect((await httpGet(`${d.httpUrl}/healthz`)).status).toBe(200);
  });
});

// ------------------------------------------------------------------ helpers

/** Blocks of a volume this torusd holds as suspect (GET /v1/blocks). */
async function suspectBlocks(h: TorusdHandle, etcdEndpoint: string, volume: string): Promise<number> {
  const list = JSON.parse((await torusctlOk(etcdEndpoint, ['-o', 'json', 'volume', 'list'])).stdout) as { name: string; id: number }[] | { volumes: { name: string; id: number }[] };
  const volumes = Array.isArray(list) ? list : list.volumes;
  const id = volumes.find((v) => v.name === volume)!.id;
  const r = await httpGet(`${h.httpUrl}/v1/blocks?volume=${id}`);
  return (JSON.parse(r.body) as { blocks: { suspect: boolean }[] }).blocks.filter((b) => b.suspect).length;
}

async function writtenBytes(h: TorusdHandle): Promise<number> {
  const r = await httpGet(`${h.httpUrl}/metrics`);
  const m = /^torus_nbd_written_bytes_total(?:\{[^}]*\})? (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(r.body);
  return m ? Number(m[1]) : 0;
}

interface Stream {
  completed: number;
  error: Error | null;
  readonly done: Promise<void>;
}

/** Writes 64 KiB of random-ish data to random second halves of blocks [0, blocks) until a write fails. */
function unflushedStream(c: NbdTestClient, blocks: number, depth: number): Stream {
  const s: Stream = { completed: 0, error: null, done: Promise.resolve() };
  let n = 0;
  const worker = async () => {
    for (;;) {
      const i = n++;
      const block = (i * 7919) % blocks;
      const off = block * BLOCK + BLOCK / 2 + ((i * 4096 * 13) % (BLOCK / 2 - 64 * KiB));
      const data = Buffer.alloc(64 * KiB, (i % 250) + 1);
      await c.write(off, data);
      s.completed++;
    }
  };
  (s as { done: Promise<void> }).done = Promise.all(Array.from({ length: depth }, worker)).then(
    () => undefined,
    (err: Error) => {
      s.error = err;
    },
  );
  return s;
}

function spawnFio(uri: string): { child: ChildProcess; exited(): boolean; output(): string; wait(): Promise<void> } {
  const child = spawn('fio', ['--name=bulk', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=64k', '--iodepth=16', '--size=256m', '--time_based', '--runtime=120', '--end_fsync=0', '--fsync=0'], {
    cwd: scratchDir(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out = (out + c.toString()).slice(-4000)));
  child.stderr!.on('data', (c: Buffer) => (out = (out + c.toString()).slice(-4000)));
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return {
    child,
    exited: () => child.exitCode !== null || child.signalCode !== null,
    output: () => out,
    // fio ends on its own once its connection is gone; bounded anyway.
    wait: () =>
      Promise.race([
        exited,
        new Promise<void>((_, reject) => setTimeout(() => reject(new Error(`fio did not exit after torusd died: ${out}`)), 20_000)),
      ]),
  };
}

async function checkFlushedPatterns(ro: TorusblkServeHandle, patterns: number, patternBytes: number, where: (i: number) => number): Promise<void> {
  const c = await nbdConnect(ro.port, 'stream');
  try {
    for (let i = 0; i < patterns; i++) {
      // The whole first half: the pattern where it was written, zeroes around it.
      const half = await c.read(i * BLOCK, BLOCK / 2);
      const expected = Buffer.alloc(BLOCK / 2);
      pattern(i, patternBytes).copy(expected, where(i) - i * BLOCK);
      expect(half.equals(expected), `flushed pattern ${i} at ${where(i)}`).toBe(true);
      // The second half took unflushed writes: old or new data, but it reads without error.
      const second = await c.read(i * BLOCK + BLOCK / 2, BLOCK / 2);
      expect(second.length).toBe(BLOCK / 2);
    }
  } finally {
    await c.disconnect();
  }
}
