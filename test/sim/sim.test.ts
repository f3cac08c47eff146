/**
 * The whole-cluster simulation's own proofs: exact replay, and the eight
 * broken variants each caught within the CI seed budget (on a seed the real
 * code passes, or fails later). The run of CI_SEEDS seeds against the real
 * code (each at least 1,000 requests with at least one ring change, one
 * crash and one partition) is in sim-seeds.test.ts, with the seeds that
 * still fail on known product bugs listed there.
 *
 * Seeds run in child processes (parallel.ts), JOBS at a time: a seed is one
 * thread, and CI machines have two cores.
 *
 * Nothing here depends on wall-clock time to pass: how long the seeds took
 * is printed, never asserted (speed is measured in benchmarks). The vitest
 * timeouts below only stop a run that hangs; they are far above what a
 * loaded machine needs.
 */
import { describe, expect, it } from 'vitest';
import { crashLine, runSeedsInChildren, type SeedLine } from './parallel.js';
import { describeFailure, runSeed, type SimModes } from './run-seed.js';
import { realNode } from './real-node.js';
import { VARIANTS, variantNames, type VariantName } from './variants.js';

/** Seeds CI runs; `npm run sim -- --seeds N` runs more. */
const CI_SEEDS = 200;
/** Child processes: one per core of a CI machine. */
const JOBS = 2;
/** Seeds a variant search runs per round once its known seeds stopped catching it. */
const VARIANT_ROUND_SEEDS = 20;
/** Stops a hung run (never a speed bound: a loaded 2-core machine needs a fraction of it). */
const HANG_GUARD_MS = 30 * 60_000;

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

function caughtFor(name: VariantName, l: SeedLine): boolean {
  return !l.ok && (VARIANTS[name].caughtBy as readonly string[]).includes(l.guarantee ?? '');
}

/** The same in the other modes (the suspended-VM fault, read-only opens), for the variants that need them. */
const baselines = new Map<string, Map<number, SeedLine>>([['-', baseline]]);

function baselineFor(modes: SimModes): Map<number, SeedLine> {
  const key = `${modes.suspend === true ? 's' : '-'}${modes.readers === true ? 'r' : ''}`;
  let known = baselines.get(key);
  if (known === undefined) baselines.set(key, (known = new Map()));
  return known;
}

async function baselineOf(list: readonly number[], modes: SimModes): Promise<void> {
  const known = baselineFor(modes);
  const missing = list.filter((s) => !known.has(s));
  if (missing.length === 0) return;
  for (const l of await runSeedsInChildren(missing, { jobs: JOBS, ...modes })) known.set(l.seed, l);
}

/** One seed in this process, as a child would report it (a seed is a pure function of seed, variant and modes). */
async function lineOf(seed: number, variant: VariantName | null, modes: SimModes = {}): Promise<SeedLine> {
  try {
    const r = await runSeed({ seed, factory: variant === null ? realNode : VARIANTS[variant].factory, variant, ...modes });
    return { seed, variant, ok: r.ok, guarantee: r.failure?.guarantee ?? null, failedAtMs: r.failure?.timeMs ?? null, report: r.ok ? null : describeFailure(r), hash: r.hash, ops: r.opsIssued, cpuMs: 0 };
  } catch (err) {
    return crashLine(seed, variant, undefined, err, modes);
  }
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
  }, HANG_GUARD_MS);

  it('replays a seed with orderly stops (--stops) exactly', async () => {
    const a = await runSeed({ seed: 1, factory: realNode, stops: true });
    const b = await runSeed({ seed: 1, factory: realNode, stops: true });
    expect(a.ok, a.ok ? '' : describeFailure(a)).toBe(true);
    expect(a.faults['stop'], 'the seed stops a peer').toBeGreaterThan(0);
    expect(b.hash).toBe(a.hash);
    expect(b.events).toBe(a.events);
    expect(a.replay).toContain('--stops');
  }, HANG_GUARD_MS);

  it('replays a seed with flaky etcd windows (--etcd-flaky) exactly', async () => {
    const a = await runSeed({ seed: 4, factory: realNode, etcdFlaky: true });
    const b = await runSeed({ seed: 4, factory: realNode, etcdFlaky: true });
    expect(a.ok, a.ok ? '' : describeFailure(a)).toBe(true);
    expect(a.faults['flaky'], 'the seed has flaky windows').toBeGreaterThan(0);
    expect(a.faults['flakyCallsFailed'], 'calls failed unapplied').toBeGreaterThan(0);
    expect(a.faults['flakyCallsLost'], 'calls applied with their answer lost').toBeGreaterThan(0);
    expect(b.hash).toBe(a.hash);
    expect(b.events).toBe(a.events);
    expect(a.replay).toContain('--etcd-flaky');
  }, HANG_GUARD_MS);

  describe('the checkers catch each deliberately broken variant within the CI seed budget', () => {
    for (const name of variantNames().filter((n) => VARIANTS[n].pending === undefined)) {
      it(name, async () => {
        const variant = VARIANTS[name];
        const modes: SimModes = { suspend: variant.suspend === true, readers: variant.readers === true };
        const known = baselineFor(modes);
        let caught: SeedLine | null = null;
        // The seeds known to catch it first, one at a time in this process
        // (no child to start): each costs one seed, cut short at the violation.
        for (const seed of variant.knownSeeds) {
          const l = await lineOf(seed, name, modes);
          if (!caughtFor(name, l)) continue;
          if (!known.has(seed)) known.set(seed, await lineOf(seed, null, modes));
          if (failsFirst(l, known.get(seed)!)) {
            caught = l;
            break;
          }
        }
        if (caught === null) {
          // The code changed under the known seeds: search the CI seeds in
          // rounds, a child per core per round, and name the seed to list.
          for (let from = 0; from < seeds.length && caught === null; from += VARIANT_ROUND_SEEDS) {
            const lines = await runSeedsInChildren(seeds.slice(from, from + VARIANT_ROUND_SEEDS), { jobs: JOBS, variant: name, ...modes });
            const failing = lines.filter((l) => caughtFor(name, l));
            if (failing.length === 0) continue;
            await baselineOf(failing.map((l) => l.seed), modes);
            caught = failing.find((l) => failsFirst(l, known.get(l.seed)!)) ?? null;
          }
          if (caught !== null) console.log(`variant ${name}: none of its known seeds (${variant.knownSeeds.join(', ')}) catches it any more; seed ${caught.seed} does: list it in variants.ts`);
        }
        expect(caught, `variant ${name} (${variant.what}) was not caught by ${variant.caughtBy.join(' or ')} on any of the ${CI_SEEDS} seeds the real code passes`).not.toBeNull();
        // Which check caught it, for the record.
        console.log(`variant ${name}: caught by ${caught!.guarantee} on ${caught!.report}`);
      }, HANG_GUARD_MS);
    }
  });
});
