/**
 * PENDING (fails today; not in the default run). Run it with
 * `npx vitest run --config test/pending/vitest.config.ts test/pending/sim-variants.test.ts`.
 *
 * The broken variants whose detection test/sim cannot prove today (each
 * says why in test/sim/variants.ts, `pending`). fence-in-memory keeps the
 * fencing token in memory only; the checker for guarantee 6 must catch it
 * on a seed where the real code passes or fails later. Only the
 * suspended-VM fault (--suspend) gets an old token to such a peer; with it
 * the variant fails G6 on 11 of the 200 CI seeds, but so does the real
 * code on the same seeds, at the same step or earlier (a writer whose
 * clocks stopped lands its queued changes on its own replica).
 */
import { describe, expect, it } from 'vitest';
import { runSeedsInChildren, type SeedLine } from '../sim/parallel.js';
import { VARIANTS, variantNames } from '../sim/variants.js';

const seeds = Array.from({ length: 200 }, (_, i) => i + 1);

describe('pending broken variants', () => {
  for (const name of variantNames().filter((n) => VARIANTS[n].pending !== undefined)) {
    it(`${name} is caught on a seed the real code passes or fails later (${VARIANTS[name].pending})`, async () => {
      // With the suspended-VM fault: the only one that gets an old token to a peer that forgot the newer one.
      const variant = await runSeedsInChildren(seeds, { jobs: 2, variant: name, suspend: true });
      const real = new Map((await runSeedsInChildren(seeds, { jobs: 2, suspend: true })).map((l) => [l.seed, l]));
      const caught = variant.find(
        (l: SeedLine) =>
          !l.ok &&
          (VARIANTS[name].caughtBy as readonly string[]).includes(l.guarantee ?? '') &&
          (real.get(l.seed)!.ok || (real.get(l.seed)!.failedAtMs !== null && l.failedAtMs !== null && l.failedAtMs < real.get(l.seed)!.failedAtMs!)),
      );
      expect(caught ?? null).not.toBeNull();
    }, 60 * 60_000);
  }
});
