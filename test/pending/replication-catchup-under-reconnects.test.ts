/**
 * PENDING (fails today; not in the default run). Run it with
 * `npx vitest run --config test/pending/vitest.config.ts`.
 *
 * Catch-up must finish while clients keep using the volume (docs/replication.md,
 * "Maintenance", guarantee 5). Three peers, R=2; fio writes through A, one
 * short run after another (each run is a new NBD connection, as a client
 * that reconnects would be); D is stopped for 30 s and restarted.
 *
 * Expected: D's stale blocks are copied and its stale record cleared
 * within a minute or two.
 *
 * What happened: a record that collapsed to the whole volume (more than
 * 1024 ranges) could only be cleared at the end of one coordinator's full
 * pass, and every fio run opens the volume with a new writer token, so no
 * pass ever finished. Catch-up now narrows such a record to the blocks
 * still behind (src/replication/catch-up-plan.ts) and clears block by
 * block, and test/unit/cluster-replication.test.ts proves that on the
 * simulated cluster.
 *
 * Why it is still pending: on real processes it passed in one run of two on
 * a host loaded by other work (168 s to catch up; the other run exceeded the
 * 120 s wait). Maintainers between fio runs are fenced within a second or
 * two and their clears fail ("could not clear a stale record in etcd");
 * the writers make progress block by block but slowly. What takes the time
 * is not yet measured: the log line "catch-up interrupted" now says how much
 * each coordinator copied before it closed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { TestCluster } from '../helpers/cluster.js';
import { describeFio, FioLoop } from '../helpers/fio.js';
import type { TorusdHandle } from '../helpers/torusd.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;
let cluster: TestCluster | undefined;
let loop: FioLoop | undefined;

beforeAll(async () => {
  ensureBuilt();
  cluster = await TestCluster.start({ peers: 3, blockSize: '256KiB', replication: 2, peerArgs: ['--replica-timeout', '3s'] });
}, 180_000);

afterAll(async () => {
  await loop?.stop();
  await cluster?.saveLogs('pending-catchup-under-reconnects');
  await cluster?.destroy();
});

describe('catch-up while a client reconnects every few seconds', () => {
  it('a peer that was stopped for 30 s is caught up while the load goes on', async () => {
    const cl = cluster!;
    const [a, , d] = cl.peers as [TorusdHandle, TorusdHandle, TorusdHandle];
    await cl.createVolume('load', '512MiB');
    loop = new FioLoop({ uri: a.nbdUri('load'), regionBytes: 8 * MiB, regions: 64, seed: 1 });
    await waitFor('a first fio run', () => loop!.completed >= 1, 60_000, 200);
    await d.stop();
    const stoppedAt = Date.now();
    // 30 s away under full-speed writes: a few hundred blocks to catch up.
    await waitFor('30 s away under load', () => Date.now() - stoppedAt >= 30_000 && loop!.completedSince(stoppedAt) >= 2, 90_000, 500);
    await d.restart();
    await waitFor('D to be caught up under load', async () => {
      if (loop!.failed) throw new Error(describeFio(loop!.failed));
      return (await cl.staleBlocks(d.uuid)) === 0;
    }, 120_000, 1000);
    await loop.stop();
    expect(loop.failed).toBeNull();
  }, 300_000);
});
