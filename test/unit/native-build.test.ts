/**
 * The native addon must never link libnode. Debian 12's npm runs Debian's
 * node-gyp, which adds -lnode (libnode.so.108, Node 18's runtime) to every
 * addon; loaded by Node 24 such an addon brings a second Node runtime into
 * the process, and npm test crashed (free(): invalid pointer) while torusd
 * aborted at exit. `npm run build` therefore builds the addon through
 * scripts/build-addon.sh (the node-gyp of the running node's own npm, and a
 * check that fails the build), never through whatever node-gyp npm offers.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
const ADDON = path.join(ROOT, 'native/build/Release/torus_native.node');
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };

describe('native addon build', () => {
  it('npm run build builds the addon through scripts/build-addon.sh, not a bare node-gyp', () => {
    const build = pkg.scripts.build!;
    expect(build).toMatch(/bash scripts\/build-addon\.sh/);
    expect(build).not.toMatch(/(^|&&\s*)node-gyp\b/);
  });

  it('the built addon does not link libnode', () => {
    expect(existsSync(ADDON), `${ADDON} is not built: run "npm run build"`).toBe(true);
    // Exit status 1 when a NEEDED entry names libnode.
    const check = spawnSync('bash', [path.join(ROOT, 'scripts/build-addon.sh'), '--check'], { encoding: 'utf8' });
    expect(check.status, `${ADDON} links libnode (built by Debian's node-gyp?): run "bash scripts/install-deps.sh", which rebuilds it ${check.stderr}`).toBe(0);
  });
});
