/**
 * A torusd told to stop while a peer it replicates to does not answer
 * (frozen with SIGSTOP): its NBD client's writes are answered (the frozen
 * copy is given up after the replica timeout and recorded stale), and the
 * process exits cleanly in seconds. Before 2026-12-07 the peer client's
 * close waited for the frozen peer's answers for the whole request timeout
 * (30 s): 37 s from SIGTERM to exit.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { TestCluster } from '../helpers/cluster.js';
import { nbdConnect, type TorusdHandle } from '../helpers/torusd.js';

const KiB = 1024;
let cluster: TestCluster | undefined;
let frozen: TorusdHandle | undefined;

beforeAll(async () => {
  ensureBuilt();
  cluster = await TestCluster.start({ peers: 3, blockSize: '256KiB', replication: 2 });
}, 180_000);

afterAll(async () => {
  if (frozen?.running) process.kill(frozen.pid, 'SIGCONT');
  await cluster?.destroy();
});

describe('stop while a peer does not answer', () => {
  it('answers the client, then exits cleanly within seconds, not after the peer request timeout', async () => {
    const cl = cluster!;
    const [a, b] = cl.peers as [TorusdHandle, TorusdHandle];
    await cl.createVolume('v', '64MiB');
    const c = await nbdConnect(a.nbdPort, 'v');
    // One write per block: with R=2 of 3, about two thirds of them have a copy on B.
    for (let i = 0; i < 16; i++) await c.write(i * 256 * KiB, Buffer.alloc(4 * KiB, i + 1));
    expect((await c.flush()).error).toBe(0);
    process.kill(b.pid, 'SIGSTOP');
    frozen = b;
    // Writes in flight to B when the stop begins.
    const writes = Array.from({ length: 16 }, (_, i) => c.write(i * 256 * KiB + 4 * KiB, Buffer.alloc(4 * KiB, 0x77)).then(() => 0, (e: Error) => e.message));
    await new Promise((r) => setTimeout(r, 300));
    const t0 = Date.now();
    const st = await a.kill('SIGTERM');
    const ms = Date.now() - t0;
    expect(st.code, a.tail()).toBe(0);
    // The NBD close waits for the client's writes, whose copies on B are
    // given up after the replica timeout; then the peer clients' close
    // waits at most 2 s for answers still on their way.
    expect(ms, a.tail()).toBeLessThan(15_000);
    expect(a.lines().some((l) => l.msg === 'closing with requests unanswered; failing them')).toBe(true);
    // Every write was answered before the connection closed (a success: A's copy and the third peer's took it).
    expect(await Promise.all(writes)).toEqual(Array.from({ length: 16 }, () => 0));
  }, 120_000);
});
