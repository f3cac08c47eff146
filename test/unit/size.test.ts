import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { formatSize, parseSize, parseSizeOrPercent } from '../../src/util/size.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

function expectSizeInvalid(fn: () => unknown, mentions?: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(isTorusError(thrown, 'TORUS_ERR_SIZE_INVALID'), `expected TORUS_ERR_SIZE_INVALID, got ${String(thrown)}`).toBe(true);
  if (mentions !== undefined) expect((thrown as Error).message).toContain(mentions);
}

describe('parseSize', () => {
  it.each([
    ['512', 512],
    ['0', 0],
    ['4KiB', 4 * KiB],
    ['4kib', 4 * KiB],
    ['4K', 4 * KiB],
    ['16MiB', 16 * MiB],
    ['1GiB', GiB],
    ['2G', 2 * GiB], // bare G is binary, as Torus's flags were
    ['1TiB', 1024 * GiB],
    ['500MB', 500_000_000], // the *B forms are decimal
    ['3KB', 3000],
    ['1.5GiB', 1.5 * GiB],
    ['0.5KiB', 512],
    [' 64 MiB ', 64 * MiB],
    ['100B', 100],
  ])('parses %j as %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each([
    ['-1', 'expected a number'],
    ['abc', 'expected a number'],
    ['', 'expected a number'],
    ['1e3', 'expected a number'],
    ['1XB', 'unknown unit "XB"'],
    ['GiB', 'expected a number'],
    ['1.3', 'not a whole number'],
    ['1.5', 'not a whole number'],
    ['99999999PiB', 'too large'],
    ['9007199254740993', 'too large'],
    ['4 KiB B', 'expected a number'],
  ])('rejects %j', (text, mentions) => {
    expectSizeInvalid(() => parseSize(text), mentions);
  });

  it('names the offending input in the message', () => {
    expectSizeInvalid(() => parseSize('12parsecs'), '"12parsecs"');
  });
});

describe('parseSizeOrPercent', () => {
  it('parses percentages', () => {
    expect(parseSizeOrPercent('50%')).toEqual({ percent: 50 });
    expect(parseSizeOrPercent('100%')).toEqual({ percent: 100 });
    expect(parseSizeOrPercent(' 12.5 % ')).toEqual({ percent: 12.5 });
  });

  it('parses sizes', () => {
    expect(parseSizeOrPercent('2GiB')).toEqual({ bytes: 2 * GiB });
    expect(parseSizeOrPercent('512')).toEqual({ bytes: 512 });
  });

  it.each(['0%', '101%', '-5%', '%', 'abc%'])('rejects %j', (text) => {
    expectSizeInvalid(() => parseSizeOrPercent(text));
  });

  it('explains the allowed range', () => {
    expectSizeInvalid(() => parseSizeOrPercent('0%'), 'above 0 and at most 100');
  });
});

describe('formatSize', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [1023, '1023 B'],
    [KiB, '1 KiB'],
    [1536, '1.5 KiB'],
    [GiB, '1 GiB'],
    [1.5 * GiB, '1.5 GiB'],
    [2 * 1024 * GiB, '2 TiB'],
    [3 * 1024 ** 5, '3 PiB'],
  ])('formats %d bytes as %j (binary)', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });

  it.each([
    [999, '999 B'],
    [1000, '1 kB'],
    [500_000_000, '500 MB'],
    [1.6e9, '1.6 GB'],
    [2e12, '2 TB'],
  ])('formats %d bytes as %j (SI)', (bytes, text) => {
    expect(formatSize(bytes, true)).toBe(text);
  });

  it('round-trips whole binary sizes through parseSize', () => {
    for (const bytes of [512, 4 * KiB, 64 * MiB, GiB, 1.5 * GiB]) {
      expect(parseSize(formatSize(bytes).replace(' ', ''))).toBe(bytes);
    }
  });
});
