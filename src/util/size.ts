import { TorusError } from '../errors/torus-error.js';

const BINARY: Record<string, number> = { '': 1, B: 1, K: 1024, KI: 1024, KIB: 1024, M: 1024 ** 2, MI: 1024 ** 2, MIB: 1024 ** 2, G: 1024 ** 3, GI: 1024 ** 3, GIB: 1024 ** 3, T: 1024 ** 4, TI: 1024 ** 4, TIB: 1024 ** 4, P: 1024 ** 5, PIB: 1024 ** 5 };
const DECIMAL: Record<string, number> = { KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, PB: 1e15 };

/**
 * Parses `512`, `4KiB`, `1GiB`, `2G` (binary, as Torus did), `500MB` (decimal).
 * Returns bytes as a safe integer; throws TORUS_ERR_SIZE_INVALID otherwise.
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (!m) throw new TorusError('TORUS_ERR_SIZE_INVALID', `invalid size "${text}": expected a number with an optional unit such as 512, 4KiB, 1GiB, 2G or 500MB`);
  const unit = (m[2] ?? '').toUpperCase();
  const mult = BINARY[unit] ?? DECIMAL[unit];
  if (mult === undefined) throw new TorusError('TORUS_ERR_SIZE_INVALID', `invalid size "${text}": unknown unit "${m[2]}" (use B, KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB, TB)`);
  const bytes = Number(m[1]) * mult;
  if (!Number.isSafeInteger(bytes)) throw new TorusError('TORUS_ERR_SIZE_INVALID', `invalid size "${text}": not a whole number of bytes or too large`);
  return bytes;
}

/** A size or a percentage: `{ bytes }` or `{ percent }` (0 < percent <= 100). */
export function parseSizeOrPercent(text: string): { bytes: number } | { percent: number } {
  const m = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(text);
  if (!m) return { bytes: parseSize(text) };
  const percent = Number(m[1]);
  if (!(percent > 0 && percent <= 100)) throw new TorusError('TORUS_ERR_SIZE_INVALID', `invalid size "${text}": a percentage must be above 0 and at most 100`);
  return { percent };
}

/** `1.5 GiB` (binary) or with `si` `1.6 GB`. Whole units print without decimals. */
export function formatSize(bytes: number, si = false): string {
  const base = si ? 1000 : 1024;
  const units = si ? ['B', 'kB', 'MB', 'GB', 'TB', 'PB'] : ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let i = 0;
  while (Math.abs(value) >= base && i < units.length - 1) {
    value /= base;
    i++;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text} ${units[i]}`;
}
