/**
 * The proof of docs/replication.md's guarantees: the whole-cluster
 * simulation over CI_SEEDS seeds (each at least 1,000 requests with at
 * least one ring change, one crash and one partition), exact replay, and
 * the six broken variants each caught within the same seed budget.
 *
 * Seeds run in child processes (parallel.ts), JOBS at a time: a seed is one
 * thread, and the budget assumes the two cores of a CI machine.
 */
import { describe, expect, it } from 'vitest';
import { runSeedsInChildren, type SeedLine } from './parallel.js';
import { OPS_DEFAULT, runSeed } from './run-seed.js';
import { realNode } from './real-node.js';
import { VARIANTS, variantNames } from './variants.js';

/** Seeds CI runs; `npm run sim -- --seeds N` runs more. */
const CI_SEEDS = 200;
/** Wall time CI allows for them. */
const CI_BUDGET_MS = 180_000;
/** Child processes: one per core of a CI machine. */
const JOBS = 2;
/** Seeds a variant search runs per round. */
const VARIANT_ROUND_SEEDS = 20;

const seeds = Array.from({ length: CI_SEEDS }, (_, i) => i + 1);
/**
 * Baseline outcome per seed. A variant counts as caught on a seed where the
 * real code passes, or fails later: the two runs are the same until the
 * variant's code first acts differently, so an earlier failure is the
 * variant's own.
 */
const baseline = new Map<number, SeedLine>();

function failsFirst(variant: SeedLine, real: SeedLine): boolean {
  return real.ok || (real.failedAtMs !== null && variant.failedAtMs !== null && variant.failedAtMs < real.failedAtMs);
}

async function baselineOf(list: readonly number[]): Promise<void> {
  const missing = list.filter((s) => !baseline.has(s));
  if (missing.length === 0) return;
  for (const l of await runSeedsInChildren(missing, { jobs: JOBS })) baseline.set(l.seed, l);
}

describe('whole-cluster simulation', () => {
  it('replays a seed exactly: the same event log, event for event', async () => {
    const a = await runSeed({ seed: 4242, factory: realNode, ops: 300 });
    const b = await runSeed({ seed: 4242, factory: realNode, ops: 300 });
    expect(b.hash).toBe(a.hash);
    expect(b.events).toBe(a.events);
    expect(b.failure).toEqual(a.failure);
    const c = await runSeed({ seed: 4243, factory: realNode, ops: 300 });
    expect(c.hash).not.toBe(a.hash);
  }, 120_000);

  it(`passes ${CI_SEEDS} seeds of at least ${OPS_DEFAULT} requests with faults, within ${CI_BUDGET_MS / 1000} s`, async () => {
    const started = Date.now();
    const lines = await runSeedsInChildren(seeds, { jobs: JOBS });
    const elapsed = Date.now() - started;
    for (const l of lines) baseline.set(l.seed, l);
    expect(lines.map((l) => l.seed)).toEqual(seeds);
    const failed = lines.filter((l) => !l.ok).map((l) => l.report);
    // Every failing seed with its replay command, whole (an assertion message would be cut short).
    if (failed.length > 0) console.log(`${failed.length} of ${CI_SEEDS} seeds failed:\n${failed.join('\n')}`);
    console.log(`${CI_SEEDS} seeds in ${(elapsed / 1000).toFixed(1)} s on ${JOBS} processes`);
    expect(failed, `${failed.length} of ${CI_SEEDS} seeds failed`).toEqual([]);
    expect(lines.filter((l) => l.ops < OPS_DEFAULT).map((l) => l.seed)).toEqual([]);
    expect(elapsed).toBeLessThan(CI_BUDGET_MS);
  }, CI_BUDGET_MS * 3);

  describe('the checkers catch each deliberately broken variant within the CI seed budget', () => {
    for (const name of variantNames()) {
      it(name, async () => {
        let caught: SeedLine | null = null;
        // Rounds of seeds, stopping at the round that catches it: a child per
        // core per round (starting one costs seconds), never more seeds than CI runs.
        for (let from = 0; from < seeds.length && caught === null; from += VARIANT_ROUND_SEEDS) {
          const lines = await runSeedsInChildren(seeds.slice(from, from + VARIANT_ROUND_SEEDS), { jobs: JOBS, variant: name });
          const failing = lines.filter((l) => !l.ok && (VARIANTS[name].caughtBy as readonly string[]).includes(l.guarantee ?? ''));
          if (failing.length === 0) continue;
          await baselineOf(failing.map((l) => l.seed));
          caught = failing.find((l) => failsFirst(l, baseline.get(l.seed)!)) ?? null;
        }
        expect(caught, `variant ${name} (${VARIANTS[name].what}) was not caught by ${VARIANTS[name].caughtBy.join(' or ')} on any of the ${CI_SEEDS} seeds the real code passes`).not.toBeNull();
        // Which check caught it, for the record.
        console.log(`variant ${name}: caught by ${caught!.guarantee} on ${caught!.report}`);
      }, CI_BUDGET_MS * 3);
    }
  });
});
