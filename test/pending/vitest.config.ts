import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * Tests of known bugs, kept out of the default run (see the root
 * vitest.config.ts): `npx vitest run --config test/pending/vitest.config.ts`.
 * Each file's header says what fails and why.
 */
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['test/pending/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 240_000,
    hookTimeout: 120_000,
  },
});
