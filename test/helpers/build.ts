import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const DIST = path.join(ROOT, 'dist');

/** Every source the binaries are built from. */
const WATCHED = ['cmd', 'src'];
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

/**
 * Compiles the tree with tsc when a compiled file is missing or older than its
 * source, so suites that spawn dist/cmd/*.js never run stale code. `npm test`
 * builds first (scripts/install-deps.sh, which also builds the native addon);
 * this covers running one suite by hand after an edit.
 */
export function ensureBuilt(): void {
  if (stale().length === 0) return;
  const res = spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: ROOT, encoding: 'utf8', timeout: TSC_TIMEOUT_MS });
  const output = `${res.stdout ?? ''}${res.stderr ?? ''}`;
  if (res.status !== 0 || stale().length > 0) {
    throw new Error(`npx tsc -p tsconfig.json failed; the tests would run stale code:\n${output.slice(-4000)}`);
  }
}
