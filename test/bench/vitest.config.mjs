import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * `npm run test:bench`: the bench's own pure parts (statistics, ratios and
 * report formatting, the copy checker, the quiet-cluster rule). No daemon,
 * no timing. They are also in the default `npm test` run (root
 * vitest.config.ts), where they take milliseconds.
 */
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['test/bench/test/**/*.test.mjs'],
  },
});
