import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const DIST = path.join(ROOT, 'dist');

/** Sources the compiled CLI and metadata layer are built from. */
const WATCHED = ['cmd/torusctl.ts', 'src/cli', 'src/metadata', 'src/errors', 'src/util', 'src/model'];
const ATTEMPTS_MAX = 6;
const RETRY_WAIT_MS = 5_000;
const TSC_TIMEOUT_MS = 240_000;

function tsFiles(rel: string): string[] {
  const abs = path.join(ROOT, rel);
  let st;
  try {
    st = statSync(abs);
  } catch {
    return [];
  }
  if (st.isFile()) return rel.endsWith('.ts') ? [rel] : [];
  return readdirSync(abs).flatMap((name) => tsFiles(path.join(rel, name)));
}

function mtime(file: string): number | null {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return null;
  }
}

/** Source files whose compiled .js is missing or older than the source. */
function stale(): string[] {
  return WATCHED.flatMap(tsFiles).filter((rel) => {
    const out = mtime(path.join(DIST, rel.replace(/\.ts$/, '.js')));
    const src = mtime(path.join(ROOT, rel));
    return out === null || src === null || out < src;
  });
}

let built = false;

/**
 * Compiles the tree with tsc once per test file run, and only when a compiled
 * file the tests use is missing or older than its source. tsc emits even when
 * some file fails to type-check; errors in files the CLI does not use (another
 * engineer's work in progress) are tolerated, errors in ours are retried for a
 * while (they may be mid-edit) and then fail the test.
 */
export function ensureBuilt(): void {
  if (built && stale().length === 0) return;
  let lastOutput = '';
  for (let attempt = 1; attempt <= ATTEMPTS_MAX; attempt++) {
    if (stale().length === 0) {
      built = true;
      return;
    }
    const res = spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: ROOT, encoding: 'utf8', timeout: TSC_TIMEOUT_MS });
    lastOutput = `${res.stdout ?? ''}${res.stderr ?? ''}`;
    const ours = lastOutput.split('\n').filter((l) => /error TS/.test(l) && WATCHED.some((w) => l.startsWith(w)));
    if (ours.length === 0 && stale().length === 0) {
      built = true;
      return;
    }
    if (attempt < ATTEMPTS_MAX) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, RETRY_WAIT_MS);
  }
  throw new Error(`npx tsc -p tsconfig.json did not produce a clean build of the CLI after ${ATTEMPTS_MAX} attempts:\n${lastOutput.slice(-4000)}`);
}
