import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, type ErrorCode } from '../../src/errors/codes.js';
import { TorusError, describeCode, isTorusError } from '../../src/errors/torus-error.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CODES = Object.keys(ERROR_CODES) as ErrorCode[];

describe('error codes', () => {
  it('has codes', () => {
    expect(CODES.length).toBeGreaterThan(10);
  });

  it('names every code TORUS_ERR_[A-Z0-9_]+', () => {
    const bad = CODES.filter((code) => !/^TORUS_ERR_[A-Z0-9_]+$/.test(code));
    expect(bad, `malformed codes: ${bad.join(', ')}`).toEqual([]);
  });

  it('documents every code in one short line', () => {
    const bad = CODES.filter((code) => {
      const doc = ERROR_CODES[code] as string;
      return typeof doc !== 'string' || doc.trim().length < 8 || doc.includes('\n') || doc.length > 160;
    });
    expect(bad, `codes with a missing, multi-line or overlong doc: ${bad.join(', ')}`).toEqual([]);
  });

  it('lists every code in README.md', () => {
    const readmePath = join(ROOT, 'README.md');
    if (!existsSync(readmePath)) {
      throw new Error(`README.md is missing; its error table must list: ${CODES.join(', ')}`);
    }
    const readme = readFileSync(readmePath, 'utf8');
    // Whole-word match so TORUS_ERR_STORE does not count for TORUS_ERR_STORE_IO.
    const missing = CODES.filter((code) => !new RegExp(`(^|[^A-Z0-9_])${code}($|[^A-Z0-9_])`).test(readme));
    if (missing.length > 0) {
      throw new Error(`README.md's error table lacks ${missing.length} code(s): ${missing.join(', ')}`);
    }
  });
});

describe('TorusError', () => {
  it('carries its code, message, cause and details', () => {
    const cause = new Error('ECONNREFUSED');
    const err = new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'etcd at 127.0.0.1:2379 did not answer', {
      cause,
      details: { endpoint: '127.0.0.1:2379' },
    });
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('TorusError');
    expect(err.code).toBe('TORUS_ERR_ETCD_UNAVAILABLE');
    expect(err.cause).toBe(cause);
    expect(err.details).toEqual({ endpoint: '127.0.0.1:2379' });
    expect(err.toLine()).toBe('TORUS_ERR_ETCD_UNAVAILABLE: etcd at 127.0.0.1:2379 did not answer');
  });

  it('isTorusError matches on type and optionally on code', () => {
    const err = new TorusError('TORUS_ERR_VOLUME_NOT_FOUND', 'no volume "x"');
    expect(isTorusError(err)).toBe(true);
    expect(isTorusError(err, 'TORUS_ERR_VOLUME_NOT_FOUND')).toBe(true);
    expect(isTorusError(err, 'TORUS_ERR_VOLUME_EXISTS')).toBe(false);
    expect(isTorusError(new Error('x'))).toBe(false);
    expect(isTorusError('TORUS_ERR_VOLUME_NOT_FOUND')).toBe(false);
  });

  it('describeCode returns the doc string', () => {
    for (const code of CODES) expect(describeCode(code)).toBe(ERROR_CODES[code]);
  });
});
