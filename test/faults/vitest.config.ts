import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * The fault suites (`npm run test:faults`, also run by CI after `npm test`):
 * real torusd processes under fio load through kill -9, SIGSTOP, dropped
 * packets, damaged block files, etcd restarts, a 30 s outage, force-removes
 * and drains. About 8 minutes on 2 cores, so they are kept out of the
 * default run (see the root vitest.config.ts).
 */
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['test/faults/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 300_000,
    hookTimeout: 180_000,
  },
});
