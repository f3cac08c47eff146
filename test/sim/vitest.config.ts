import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * The simulation's seed runs alone (`npm run test:sim`; CI runs it through
 * .ci/run right after `npm test`): seeds 1..200 six ways (plain,
 * --suspend, --readers, --etcd-delays, --stops, --etcd-flaky) and the
 * later seeds that each once found a bug, every one in a child process,
 * two at a time. About 6-7 minutes on 2 cores,
 * kept out of `npm test` so that the default run stays well under 15
 * minutes. The simulation's own checks (exact replay, the broken variants
 * each caught) stay in `npm test`.
 */
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['test/sim/sim-seeds.test.ts'],
    fileParallelism: false,
    testTimeout: 1_800_000,
    hookTimeout: 120_000,
  },
});
