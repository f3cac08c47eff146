/**
 * A torusd told to stop while a peer it replicates to does not answer
 * (frozen with SIGSTOP): its NBD client's writes are answered (the frozen
 * copy is given up after the replica timeout and recorded stale), and the
 * process exits cleanly in seconds although a request to the frozen peer
 * is still on the wire (a health probe). Before 2026-12-07 the peer
 * client's close waited for such requests for its whole request timeout
 * (30 s): a probe carried no deadline. Now a probe ends at the replica
 * timeout and the close waits at most 2 s for what is left
 * (peer-client-server.test.ts and cluster-replication.test.ts test each
 * on its own; this test holds the stop to its bound).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { TestCluster } from '../helpers/cluster.js';
import { nbdConnect, torusdStatus, type TorusdHandle } from '../helpers/torusd.js';
import { waitFor } from '../helpers/wait.js';

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
  it('answers the client, then exits cleanly within seconds although requests to the peer are unanswered', async () => {
    const cl = cluster!;
    const [a, b] = cl.peers as [TorusdHandle, TorusdHandle];
    await cl.createVolume('v', '64MiB');
    const c = await nbdConnect(a.nbdPort, 'v');
    // One write per block: with R=2 of 3, about two thirds of them have a copy on B.
    for (let i = 0; i < 16; i++) await c.write(i * 256 * KiB, Buffer.alloc(4 * KiB, i + 1));
    expect((await c.flush()).error).toBe(0);
    process.kill(b.pid, 'SIGSTOP');
    frozen = b;
    // Writes that have a copy on B are answered once the coordinator gives
    // that copy up (the replica timeout) and records it stale.
    const writes = Array.from({ length: 16 }, (_, i) => c.write(i * 256 * KiB + 4 * KiB, Buffer.alloc(4 * KiB, 0x77)).then(() => 0, (e: Error) => e.message));
    expect(await Promise.all(writes)).toEqual(Array.from({ length: 16 }, () => 0));
    // B is failing now, and probed: each probe is a request on the wire to
    // B that no answer settles, until the replica timeout (8 s) ends it.
    await waitFor('a request to B on the wire, B failing', async () => {
      const r = (await torusdStatus(a)).replication;
      return r !== undefined && r.failingPeers.includes(b.uuid) && (r.peerRequestsInFlight[b.uuid] ?? 0) > 0;
    }, 30_000, 200);
    const t0 = Date.now();
    const st = await a.kill('SIGTERM');
    const ms = Date.now() - t0;
    expect(st.code, a.tail()).toBe(0);
    // The peer clients' close waits at most 2 s for answers still on their
    // way, then fails them; it waited out the 30 s request timeout before.
    // (Whether the probe seen above is still on the wire when the clients
    // close depends on when it was sent: its log line is not checked.)
    expect(ms, a.tail()).toBeLessThan(15_000);
    c.close();
  }, 120_000);
});
