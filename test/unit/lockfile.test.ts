/**
 * package-lock.json must let `npm ci` install on any machine. npm 11 refuses
 * a lock that lacks a package's optional dependencies for other platforms
 * (rollup's native builds were missing once, and every install fell back to
 * npm install). The Dockerfile and scripts/install-deps.sh use npm ci only.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');
const lock = JSON.parse(readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as {
  lockfileVersion: number;
  packages: Record<string, { version?: string; dependencies?: Record<string, string>; devDependencies?: Record<string, string>; optionalDependencies?: Record<string, string>; engines?: { node?: string } }>;
};
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  engines: { node: string };
};

/** Where npm would find `name` for the package at `from` (node_modules lookup upwards). */
function resolve(from: string, name: string): string | null {
  let dir = from;
  for (;;) {
    const candidate = `${dir ? `${dir}/` : ''}node_modules/${name}`;
    if (lock.packages[candidate]) return candidate;
    if (!dir) return null;
    const i = dir.lastIndexOf('/node_modules/');
    dir = i < 0 ? '' : dir.slice(0, i);
  }
}

describe('package-lock.json', () => {
  it('is a v3 lock whose root matches package.json', () => {
    expect(lock.lockfileVersion).toBe(3);
    const root = lock.packages['']!;
    expect(root.dependencies).toEqual(pkg.dependencies);
    expect(root.devDependencies).toEqual(pkg.devDependencies);
    expect(root.engines?.node).toBe(pkg.engines.node);
  });

  it('locks every optional dependency of every package, for every platform', () => {
    const missing: string[] = [];
    for (const [at, p] of Object.entries(lock.packages)) {
      for (const name of Object.keys(p.optionalDependencies ?? {})) {
        if (resolve(at, name) === null) missing.push(`${name} (optional dependency of ${at || 'the root'})`);
      }
      for (const name of Object.keys(p.dependencies ?? {})) {
        if (resolve(at, name) === null) missing.push(`${name} (dependency of ${at || 'the root'})`);
      }
    }
    expect(missing, 'run npm install with npm 11 and commit package-lock.json').toEqual([]);
  });

  it('Node 24 is the supported runtime', () => {
    expect(pkg.engines.node).toBe('>=24');
  });
});
