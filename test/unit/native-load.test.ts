/**
 * Which build of the native addon a process loads (src/util/native.ts): the
 * default build, or the one TORUS_NATIVE_ADDON names (the sanitizer build of
 * `npm run test:asan`), which must load or fail: a sanitizer run must never
 * pass on the JavaScript fallback.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nativeAddon } from '../../src/util/native.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DEFAULT_ADDON = path.join(ROOT, 'native/build/Release/torus_native.node');
const NATIVE_JS = path.join(ROOT, 'dist/src/util/native.js');

/** A fresh node importing native.js with TORUS_NATIVE_ADDON set to `file` (no sanitizer preload). */
function importNativeWith(file: string) {
  const env: NodeJS.ProcessEnv = { ...process.env, TORUS_NATIVE_ADDON: file };
  delete env.LD_PRELOAD;
  return spawnSync(process.execPath, ['--input-type=module', '-e', `await import(${JSON.stringify(NATIVE_JS)});`], { env, encoding: 'utf8' });
}

describe('native addon loading', () => {
  it('this process uses the build TORUS_NATIVE_ADDON names, else the default build', () => {
    const want = process.env.TORUS_NATIVE_ADDON || DEFAULT_ADDON;
    expect(nativeAddon, `no addon loaded (is ${want} built? "npm run build")`).not.toBeNull();
    expect(readFileSync('/proc/self/maps', 'utf8')).toContain(want);
  });

  it('a named build that cannot be loaded fails the process instead of falling back', () => {
    const r = importNativeWith(path.join(ROOT, 'no-such-addon.node'));
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('no-such-addon.node');
  });

  it('a named file that is not the addon is refused by name', () => {
    const r = importNativeWith(path.join(ROOT, 'package.json'));
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('package.json is not a torus_native addon');
  });
});
