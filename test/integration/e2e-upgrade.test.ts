/**
 * Upgrade in place (docs/replication.md, "Upgrade"): a data dir and an etcd
 * written by torus 0.1.0 (test/fixtures/upgrade-0.1.0/, README there) keep
 * working with this release. etcd is loaded with the fixture's keys, the
 * data dir is unpacked, and torusd starts on it: it serves the volume with
 * the content 0.1.0 wrote (its blocks count as version 0), takes writes,
 * and when a second peer joins, the blocks 0.1.0 wrote move to it as they
 * are, so either peer alone serves everything.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VERSION_LEGACY } from '../../src/model/version.js';
import { ensureBuilt, ROOT } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import type { NbdTestClient } from '../helpers/nbd-test-client.js';
import { runOk } from '../helpers/nbd-exec.js';
import { httpGet, nbdConnect, startTorusd, torusctlOk, volumeList, type TorusdHandle } from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const FIXTURE = path.join(ROOT, 'test/fixtures/upgrade-0.1.0');
const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const SIZE = 4 * MiB;
/** The peer 0.1.0 ran as (peer.json in the data dir, the only ring member in etcd.json). */
const OLD_PEER = '6cecb1e7-7c59-453b-abd2-c091215fac66';
/** Blocks 0.1.0 wrote files for (write -z of 2 MiB + 128 KiB left zero-filled data blocks 0x20, 0x21). */
const LEGACY_BLOCKS = [0, 1, 2, 3, 4, 0x10, 0x20, 0x21];

let etcd: EtcdHandle | undefined;
let dataDir = '';
let a: TorusdHandle | undefined;
let b: TorusdHandle | undefined;
let volumeId = 0;
/** What the volume must hold: the fixture's README, then this test's writes. */
const want = Buffer.alloc(SIZE);
want.fill(0x5a, 0, 307_200);
want.fill(0xc3, MiB, MiB + 64 * KiB);

beforeAll(async () => {
  requireTool('etcdctl', 'etcd-client');
  ensureBuilt();
  etcd = await startEtcd();
  const keys = JSON.parse(await readFile(path.join(FIXTURE, 'etcd.json'), 'utf8')) as Record<string, string>;
  for (const [k, v] of Object.entries(keys)) await runOk('etcdctl', ['--endpoints', `http://${etcd.endpoint}`, 'put', k, v]);
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'torus-e2e-upgrade-'));
  execFileSync('tar', ['xzf', path.join(FIXTURE, 'data-dir.tar.gz'), '-C', dataDir]);
  volumeId = JSON.parse(keys['/torus/volumes/legacy']!).id as number;
});

afterAll(async () => {
  await b?.destroy();
  await a?.destroy();
  await etcd?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

async function open(p: TorusdHandle): Promise<NbdTestClient> {
  return waitFor(`an NBD connection to ${p.uuid}`, () => nbdConnect(p.nbdPort, 'legacy'), 20_000, 100);
}

async function hangUp(c: NbdTestClient): Promise<void> {
  await c.disconnect();
  await waitFor('legacy to be free', async () => (await volumeList(etcd!.endpoint)).get('legacy')?.status === 'free', 20_000, 100);
}

async function expectContent(p: TorusdHandle): Promise<void> {
  const c = await open(p);
  try {
    for (let at = 0; at < SIZE; at += BLOCK) {
      expect((await c.read(at, BLOCK)).equals(want.subarray(at, at + BLOCK)), `block ${at / BLOCK} through ${p.uuid}`).toBe(true);
    }
  } finally {
    await hangUp(c);
  }
}

async function copies(p: TorusdHandle): Promise<{ index: number; state: string; version: number; suspect: boolean }[]> {
  const r = await httpGet(`${p.httpUrl}/v1/blocks?volume=${volumeId}`);
  return (JSON.parse(r.body) as { blocks: { index: number; state: string; version: number; suspect: boolean }[] }).blocks;
}

describe('upgrade in place from 0.1.0', () => {
  it('torusd starts on the 0.1.0 data dir and etcd, and serves what 0.1.0 wrote; its blocks are version 0', async () => {
    a = await startTorusd({ etcd: etcd!.endpoint, dataDir, size: '64MiB' });
    expect(a.uuid).toBe(OLD_PEER);
    const held = await copies(a);
    expect(held.map((x) => [x.index, x.state, x.version, x.suspect])).toEqual(LEGACY_BLOCKS.map((i) => [i, 'data', VERSION_LEGACY, false]));
    // The schema-1 ring reads as a stable ring with the default minimum; the first peer gave the cluster a secret.
    const ring = JSON.parse((await torusctlOk(etcd!.endpoint, ['ring', 'get', '-o', 'json'])).stdout) as { transition: unknown; minReplicas: number; members: { uuid: string }[] };
    expect(ring).toMatchObject({ transition: null, minReplicas: 1 });
    expect(ring.members.map((m) => m.uuid)).toEqual([OLD_PEER]);
    const secret = (await runOk('etcdctl', ['--endpoints', `http://${etcd!.endpoint}`, 'get', '--print-value-only', '/torus/secret'])).stdout.trim();
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    await expectContent(a);
  });

  it('takes writes over the legacy blocks and beside them', async () => {
    const c = await open(a!);
    try {
      const w1 = Buffer.alloc(10_000, 0x77);
      await c.write(300_000, w1); // inside legacy block 4, across the end of the 0x5a run
      w1.copy(want, 300_000);
      const w2 = Buffer.alloc(BLOCK, 0x31);
      await c.write(40 * BLOCK, w2); // a block 0.1.0 never wrote
      w2.copy(want, 40 * BLOCK);
      expect((await c.flush()).error).toBe(0);
    } finally {
      await hangUp(c);
    }
    await expectContent(a!);
    const v = new Map((await copies(a!)).map((x) => [x.index, x.version]));
    expect(v.get(4)).toBeGreaterThan(VERSION_LEGACY);
    expect(v.get(40)).toBeGreaterThan(VERSION_LEGACY);
    expect(v.get(0)).toBe(VERSION_LEGACY);
  });

  it('a second peer joins: the legacy blocks move to it as they are, and it alone serves everything', async () => {
    b = await startTorusd({ etcd: etcd!.endpoint, size: '64MiB' });
    await waitFor('the ring to be stable with both peers', async () => {
      const r = JSON.parse((await torusctlOk(etcd!.endpoint, ['ring', 'get', '-o', 'json'])).stdout) as { transition: unknown; members: unknown[] };
      return r.transition === null && r.members.length === 2;
    }, 90_000, 250);
    // R=2 over two peers: every block on both, the untouched legacy ones still at version 0.
    await waitFor('B to hold every block A holds, at the same versions', async () => {
      const [onA, onB] = await Promise.all([copies(a!), copies(b!)]);
      const key = (x: { index: number; state: string; version: number; suspect: boolean }) => `${x.index}:${x.state}:${x.version}:${x.suspect}`;
      return onA.length > 0 && JSON.stringify(onA.map(key)) === JSON.stringify(onB.map(key));
    }, 60_000, 250);
    const onB = new Map((await copies(b!)).map((x) => [x.index, x.version]));
    for (const i of [0, 1, 2, 3, 0x10, 0x20, 0x21]) expect(onB.get(i), `legacy block ${i} on the new peer`).toBe(VERSION_LEGACY);
    await a!.stop();
    await expectContent(b!);
  }, 180_000);
});
