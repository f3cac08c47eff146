/**
 * The native CRC code (native/src/crc32c.cc), built on its own with
 * AddressSanitizer and UndefinedBehaviorSanitizer and run over every length
 * up to 9000 bytes at many offsets (native/test/crc32c-check.cc): the wide
 * loads of the folding path must never read past a buffer, and every path
 * must agree with the table code.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'torus-crc-asan-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('native crc32c under AddressSanitizer', () => {
  it('agrees with the table code on every length to 9000 and never reads past a buffer', () => {
    const which = spawnSync('g++', ['--version']);
    if (which.error !== undefined) throw new Error('g++ is needed to build the sanitized CRC check: run scripts/install-deps.sh (it installs g++)');
    const exe = join(dir, 'crc32c-check');
    execFileSync('g++', ['-O1', '-g', '-std=c++17', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer', '-o', exe, join(root, 'native/test/crc32c-check.cc'), join(root, 'native/src/crc32c.cc')], { stdio: 'pipe' });
    const run = spawnSync(exe, [], { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1' } });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/^ok \d+ buffers, variant (vpclmulqdq|vpclmulqdq-avx2|sse4\.2|table)\n$/);
  }, 120_000);
});
