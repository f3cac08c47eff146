import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * The fault suites alone (`npm run test:faults`; `npm test` runs them too):
 * real torusd processes under fio load through kill -9, SIGSTOP, dropped
 * packets, damaged block files, etcd restarts, a 30 s outage,
 * force-removes and drains. About 5 minutes on 2 cores.
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
