/**
 * PENDING (fails today; not in the default run). Run it with
 * `npx vitest run --config test/pending/vitest.config.ts test/pending/sim-seeds.test.ts`,
 * or `npm run sim -- --seeds 200 --jobs 2` for the failure lines alone.
 *
 * The whole-cluster simulation (test/sim) against the real replication
 * code over 200 seeds, each at least 1,000 requests with faults (crashes,
 * partitions, message loss, ring changes). Once the checker's own modelling
 * bugs were fixed (a flush after a crash, flushes overtaking changes still
 * in flight), about a third of the seeds pass. The failures, by kind, in a
 * run of the first 60 seeds:
 *
 * - liveness (most of them): after a change that reached no owner, the
 *   coordinator records every owner that missed it stale, although none
 *   took it; the block is then left with no trusted owner and every request
 *   to it fails with TORUS_ERR_BLOCK_UNAVAILABLE for good (seeds 1, 4, 5,
 *   6, 7). Not recording the owners of a failed change fixes most of these
 *   but let seed 16 read a value older than the last acknowledged one (G4),
 *   so that change was not kept; the right fix needs the cases of a change
 *   that landed on some owners but fewer than minReplicas worked out.
 * - G3 (FLUSH acknowledged with fewer than minReplicas durable copies) with
 *   changes and a flush running concurrently through one handle (seeds 3,
 *   32): not yet diagnosed. A flush after a failed flush acknowledged with
 *   nothing durable (seed 5) is fixed.
 * - G6 (fencing) on seeds 25, 27, 96, 105, 109, 117, 146, 155, 176 and G5
 *   (a ring stuck in "moving") on seeds 6, 95, 127, 166: not yet diagnosed.
 * - A trim that may leave no tombstone on a new owner during a move (seed
 *   174, 145): a hypothesis, unconfirmed.
 */
import { describe, expect, it } from 'vitest';
import { runSeedsInChildren } from '../sim/parallel.js';
import { OPS_DEFAULT } from '../sim/run-seed.js';

const CI_SEEDS = 200;
const JOBS = 2;
const seeds = Array.from({ length: CI_SEEDS }, (_, i) => i + 1);

describe('whole-cluster simulation against the real code', () => {
  it(`passes ${CI_SEEDS} seeds of at least ${OPS_DEFAULT} requests with faults`, async () => {
    const started = Date.now();
    const lines = await runSeedsInChildren(seeds, { jobs: JOBS });
    // A seed whose process died is a failure line too (parallel.ts): none vanishes.
    expect(lines.map((l) => l.seed)).toEqual(seeds);
    const failed = lines.filter((l) => !l.ok).map((l) => l.report);
    if (failed.length > 0) console.log(`${failed.length} of ${CI_SEEDS} seeds failed:\n${failed.join('\n')}`);
    console.log(`${CI_SEEDS} seeds in ${((Date.now() - started) / 1000).toFixed(1)} s on ${JOBS} processes`);
    expect(failed, `${failed.length} of ${CI_SEEDS} seeds failed`).toEqual([]);
    expect(lines.filter((l) => l.ops < OPS_DEFAULT).map((l) => l.seed)).toEqual([]);
  }, 30 * 60_000);
});
