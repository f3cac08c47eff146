/**
 * Two torusd peers on one etcd, replication 2 (minReplicas 1): every block
 * lives on both. A write through one daemon reaches the other over the peer
 * protocol before it is acknowledged, so the other daemon serves it after
 * the first stops; with one peer down writes go on, and the peer that
 * missed them catches up when it returns.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { qemuIoOk, startTorusd, torusctlOk, torusdStatus, type TorusdHandle } from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;
let etcd: EtcdHandle | undefined;
let a: TorusdHandle | undefined;
let b: TorusdHandle | undefined;

beforeAll(async () => {
  requireTool('qemu-io', 'qemu-utils');
  ensureBuilt();
  etcd = await startEtcd();
  a = await startTorusd({ etcd: etcd.endpoint, size: '1GiB' });
  b = await startTorusd({ etcd: etcd.endpoint, size: '1GiB' });
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'pad', '64MiB']);
});

async function ringOf(): Promise<{ members: { uuid: string }[]; replication: number; transition: unknown }> {
  return JSON.parse((await torusctlOk(etcd!.endpoint, ['ring', 'get', '-o', 'json'])).stdout) as { members: { uuid: string }[]; replication: number; transition: unknown };
}

/** Blocks `torusctl cluster status` says a peer must not be read for. */
async function staleBlocksOf(uuid: string): Promise<number> {
  const status = JSON.parse((await torusctlOk(etcd!.endpoint, ['cluster', 'status', '-o', 'json'])).stdout) as { stale: { peer: string; blocks: number }[] };
  return status.stale.filter((x) => x.peer === uuid).reduce((n, x) => n + x.blocks, 0);
}

afterAll(async () => {
  await a?.destroy();
  await b?.destroy();
  await etcd?.stop();
});

describe('two peers, replication 2', () => {
  it('both peers join the ring and see each other', async () => {
    // The second --auto-join is a ring transition; with nothing to move it ends within a few background passes.
    await waitFor('the ring to be stable', async () => ringOf().then((r) => r.transition === null && r.members.length === 2), 30_000);
    const ring = await ringOf();
    expect(ring.replication).toBe(2);
    expect(ring.members.map((m) => m.uuid).sort()).toEqual([a!.uuid, b!.uuid].sort());
    const peers = (await torusctlOk(etcd!.endpoint, ['list-peers'])).stdout;
    expect(peers.match(/\bOK\b/g)?.length).toBe(2);
  });

  it('a write through one peer is stored on both, and the other serves it once the first is gone', async () => {
    await qemuIoOk(a!.nbdUri('pad'), [`write -P 0x3c 0 ${8 * MiB}`, `write -P 0x4d ${20 * MiB + 777} 5000`, 'flush']);
    // Both stores hold the 9 blocks written (each block on both peers).
    await waitFor('both peers to report the blocks', async () => (await torusdStatus(a!)).used >= 9 * MiB && (await torusdStatus(b!)).used >= 9 * MiB, 10_000);
    await a!.stop();
    await qemuIoOk(b!.nbdUri('pad'), [`read -P 0x3c 0 ${8 * MiB}`, `read -P 0x4d ${20 * MiB + 777} 5000`, `read -P 0 ${8 * MiB} ${12 * MiB}`]);
  });

  it('writes on with a replica down, records what it missed, and catches it up when it returns', async () => {
    // a is stopped but still a ring member: minReplicas is 1, so the write
    // is acknowledged with one copy once a is recorded stale for the block.
    await qemuIoOk(b!.nbdUri('pad'), [`write -P 0x11 ${30 * MiB} 4096`, 'flush']);
    expect(await staleBlocksOf(a!.uuid)).toBeGreaterThan(0);
    await a!.restart();
    await waitFor('a to be caught up', async () => (await staleBlocksOf(a!.uuid)) === 0, 60_000);
    await b!.stop();
    await qemuIoOk(a!.nbdUri('pad'), [`read -P 0x11 ${30 * MiB} 4096`, `read -P 0x3c 0 ${8 * MiB}`]);
  });
});
