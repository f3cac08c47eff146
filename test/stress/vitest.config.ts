import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * Long-running load and memory suites, kept out of the default run (see the
 * root vitest.config.ts): `npm run test:stress`.
 */
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['test/stress/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 600_000,
    hookTimeout: 240_000,
  },
});
