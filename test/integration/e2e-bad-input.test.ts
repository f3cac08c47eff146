/**
 * End to end: the real torusd and torusctl facing bad input: seeded fuzzing
 * of the NBD port while real clients keep working, requests outside the
 * export, bad volume sizes and names, a full data dir, and a data dir in
 * memory.
 * Reproduce a fuzz failure with TORUS_E2E_FUZZ_SEED=<seed from the failure>.
 */
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classifyDataDirFs } from '../../src/daemon/data-dir-fs.js';
import * as P from '../../src/nbd/protocol.js';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { runOk } from '../helpers/nbd-exec.js';
import { fuzzPort, fuzzSeed, Rng } from '../helpers/nbd-fuzz.js';
import {
  httpGet,
  nbdConnect,
  qemuIo,
  qemuIoOk,
  startTorusd,
  torusctl,
  torusctlOk,
  torusdStatus,
  volumeList,
  type TorusdHandle,
} from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const FUZZ_TIME_MS = 5000;
const FUZZ_CONNECTIONS_MAX = 1500;
const FUZZ_CONCURRENCY = 8;

let etcd: EtcdHandle | undefined;
let d: TorusdHandle;

beforeAll(async () => {
  requireTool('qemu-io', 'qemu-utils');
  requireTool('nbdinfo', 'libnbd-bin');
  ensureBuilt();
  etcd = await startEtcd();
  d = await startTorusd({ etcd: etcd.endpoint, size: '1GiB' });
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'good', '64MiB']);
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'fuzz', '16MiB']);
});

afterAll(async () => {
  await d?.destroy();
  await etcd?.stop();
});

async function expectHealthy(h: TorusdHandle): Promise<void> {
  if (!h.running) throw new Error(`torusd died:\n${h.tail()}`);
  const r = await httpGet(`${h.httpUrl}/healthz`);
  expect(r.status, r.body).toBe(200);
}

describe('NBD port under seeded fuzzing', () => {
  it('stays up and keeps serving a well-behaved client before, during and after', async () => {
    const seed = fuzzSeed('TORUS_E2E_FUZZ_SEED');
    try {
      const good = d.nbdUri('good');
      await qemuIoOk(good, ['write -P 0x01 0 64k', 'read -P 0x01 0 64k']);

      let stop = false;
      let goodRounds = 0;
      // Each round a new qemu-io process: new connection, write, read back, hang up.
      const goodLoop = (async () => {
        for (let i = 1; !stop || goodRounds < 3; i++) {
          const off = (i % 500) * 128 * KiB;
          const p = (i % 254) + 1;
          await qemuIoOk(good, [`write -P ${p} ${off} 64k`, `read -P ${p} ${off} 64k`, 'flush']);
          goodRounds++;
        }
      })();
      goodLoop.catch(() => undefined);

      const rng = new Rng(seed);
      const deadline = Date.now() + FUZZ_TIME_MS;
      const healthDuring = (async () => {
        let checks = 0;
        while (Date.now() < deadline) {
          await expectHealthy(d);
          checks++;
          await new Promise((r) => setTimeout(r, 250));
        }
        return checks;
      })();
      let started: number;
      try {
        // 16 MiB is the size of the `fuzz` volume created in beforeAll.
        started = await fuzzPort(d.nbdPort, rng, { exportName: 'fuzz', offsetMax: 16 * MiB, badExportNames: true }, { deadline, connectionsMax: FUZZ_CONNECTIONS_MAX, concurrency: FUZZ_CONCURRENCY });
      } finally {
        stop = true;
      }
      expect(await healthDuring).toBeGreaterThan(2);
      await goodLoop;

      expect(started).toBeGreaterThan(50);
      expect(goodRounds).toBeGreaterThanOrEqual(3);
      await expectHealthy(d);

      // Afterwards: nbdinfo and qemu-io work, the first pattern is intact.
      expect((await runOk('nbdinfo', ['--size', good])).stdout.trim()).toBe(String(64 * MiB));
      await qemuIoOk(good, ['read -P 0x01 0 64k'], { readOnly: true });
      expect(d.lines().filter((l) => (l.level ?? 0) >= 60), 'fatal log lines').toEqual([]);
      // Every fuzzing connection went away and released the volume.
      const st = await torusdStatus(d);
      expect(st.openVolumes.filter((v) => v.name === 'fuzz')).toEqual([]);
    } catch (err) {
      throw new Error(`fuzz failed; reproduce with TORUS_E2E_FUZZ_SEED=${seed}: ${(err as Error).stack ?? String(err)}\n--- torusd log tail ---\n${d.tail(4000)}`);
    }
  });
});

describe('requests outside the export', () => {
  it('a read past the end gets EINVAL, a write past the end ENOSPC or EINVAL, and the connection goes on', async () => {
    const size = 64 * MiB;
    const c = await nbdConnect(d.nbdPort, 'good');
    try {
      expect(c.exportSize).toBe(size);
      for (const [offset, length] of [
        [size - 1000, 2000],
        [size, 1],
        [size + 4096, 4096],
        [2 ** 52, 512],
      ] as const) {
        const r = await c.request({ type: P.CMD_READ, offset, length });
        expect(r.error, `read ${offset}+${length}`).toBe(P.NBD_EINVAL);
        const w = await c.request({ type: P.CMD_WRITE, offset, data: Buffer.alloc(length, 0xab) });
        expect([P.NBD_ENOSPC, P.NBD_EINVAL], `write ${offset}+${length} gave ${w.error}`).toContain(w.error);
      }
      // The request right at the end is fine, and nothing was written past it.
      await c.write(size - 512, Buffer.alloc(512, 0x7e));
      expect((await c.read(size - 1024, 1024)).equals(Buffer.concat([Buffer.alloc(512), Buffer.alloc(512, 0x7e)]))).toBe(true);
    } finally {
      await c.disconnect();
    }
    await expectHealthy(d);
  });
});

describe('torusctl volume create-block with bad arguments', () => {
  const oneErrorLine = /^torusctl: [^\n]+ \((TORUS_ERR_[A-Z_]+)\)\n$/;

  it.each([
    ['bad-size-1', '-1', 'TORUS_ERR_SIZE_INVALID'],
    ['bad-size-2', '1XB', 'TORUS_ERR_SIZE_INVALID'],
    ['bad-size-3', 'abc', 'TORUS_ERR_SIZE_INVALID'],
    ['bad-size-4', '0', 'TORUS_ERR_SIZE_INVALID'],
    ['bad-size-5', '1000', 'TORUS_ERR_SIZE_INVALID'],
    ['bad-size-6', '', 'TORUS_ERR_SIZE_INVALID'],
    ['a/b', '1GiB', 'TORUS_ERR_NAME_INVALID'],
    ['', '1GiB', 'TORUS_ERR_NAME_INVALID'],
    ['x'.repeat(200), '1GiB', 'TORUS_ERR_NAME_INVALID'],
  ])('create-block %j %j fails with one line naming %s', async (name, size, code) => {
    const r = await torusctl(etcd!.endpoint, ['volume', 'create-block', name, size]);
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.stdout).toBe('');
    const m = oneErrorLine.exec(r.stderr);
    expect(m, r.stderr).not.toBeNull();
    expect(m![1]).toBe(code);
  });

  it('created nothing', async () => {
    expect([...(await volumeList(etcd!.endpoint)).keys()].sort()).toEqual(['fuzz', 'good']);
  });
});

describe('a full data dir', () => {
  it('answers ENOSPC past the cap, keeps running and keeps what was flushed', async () => {
    // Its own etcd: in the same cluster the two daemons would share blocks.
    const etcd2 = await startEtcd();
    let small: TorusdHandle | undefined;
    try {
      small = await startTorusd({ etcd: etcd2.endpoint, size: '64MiB' });
      await torusctlOk(etcd2.endpoint, ['volume', 'create-block', 'big', '256MiB']);
      const uri = small.nbdUri('big');
      await qemuIoOk(uri, ['write -P 0x33 0 32M', 'flush']);

      const r = await qemuIo(uri, ['write -P 0x44 32M 96M', 'flush']);
      expect(r.code, r.stdout + r.stderr).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/No space left on device/);

      // Over the raw protocol too: a write to a new block gets ENOSPC (28).
      const c = await nbdConnect(small.nbdPort, 'big');
      try {
        const w = await c.request({ type: P.CMD_WRITE, offset: 200 * MiB, data: Buffer.alloc(64 * KiB, 0x55) });
        expect(w.error).toBe(P.NBD_ENOSPC);
        // Blocks that exist can still be read.
        expect((await c.read(0, 64 * KiB)).equals(Buffer.alloc(64 * KiB, 0x33))).toBe(true);
      } finally {
        await c.disconnect();
      }

      await expectHealthy(small);
      await qemuIoOk(uri, ['read -P 0x33 0 32M']);
      const st = await torusdStatus(small);
      expect(st.capacity).toBe(64 * MiB);
      expect(st.used).toBeLessThanOrEqual(64 * MiB);
    } catch (err) {
      throw new Error(`${(err as Error).stack ?? String(err)}\n--- small torusd log tail ---\n${small?.tail(4000) ?? ''}`);
    } finally {
      await small?.destroy();
      await etcd2.stop();
    }
  });
});

describe('a data dir that cannot keep data', () => {
  it('torusd names the file system it runs on, and warns when it is memory (tmpfs)', async () => {
    // The shared daemon's data dir (under the temporary folder): named as
    // statfs names it, with a warning exactly when it cannot keep data.
    expect(d.lines().find((l) => l.msg === 'peer identity'), d.tail()).toMatchObject({ uuid: d.uuid, crc32c: expect.any(String) });
    const expected = classifyDataDirFs(statfsSync(d.dataDir).type);
    const named = d.lines().find((l) => l.msg === 'data dir file system');
    expect(named, d.tail()).toMatchObject({ fs: expected.name, verdict: expected.verdict, mountPoint: expect.stringMatching(/^\//) });
    const warned = d.lines().filter((l) => /^the data dir/.test(String(l.msg)));
    expect(warned).toHaveLength(expected.verdict === 'ephemeral' || expected.verdict === 'remote' ? 1 : 0);

    const TMPFS_MAGIC = 0x01021994;
    if (statfsSync('/dev/shm').type !== TMPFS_MAGIC) throw new Error('/dev/shm is not a tmpfs on this machine: this test needs one (mount -t tmpfs tmpfs /dev/shm)');
    const dir = mkdtempSync(path.join('/dev/shm', 'torus-e2e-data-'));
    // Its own etcd: in the same cluster the two daemons would share blocks.
    const etcd2 = await startEtcd();
    let mem: TorusdHandle | undefined;
    try {
      mem = await startTorusd({ etcd: etcd2.endpoint, size: '64MiB', dataDir: dir });
      const warning = mem.lines().find((l) => /^the data dir is on tmpfs/.test(String(l.msg)));
      expect(warning, mem.tail()).toMatchObject({ level: 40, fs: 'tmpfs', verdict: 'ephemeral' });
      expect(String(warning?.msg)).toMatch(/lost when the node reboots/);
      // A warning, not a refusal: a throwaway cluster in memory still serves.
      await torusctlOk(etcd2.endpoint, ['volume', 'create-block', 'scratch', '8MiB']);
      await qemuIoOk(mem.nbdUri('scratch'), ['write -P 0x5a 0 1M', 'flush', 'read -P 0x5a 0 1M']);
    } finally {
      await mem?.destroy();
      await etcd2.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
