/**
 * Rendering of command output: bordered and plain tables in the style of
 * Torus's tablewriter output, sizes, rates, ages, CSV and JSON. Pure: callers write the strings.
 */

export type OutputFormat = 'table' | 'json';
export type Align = 'left' | 'right';

export interface TableOptions {
  /** Per column; default left. */
  readonly align?: readonly Align[];
}

function width(text: string): number {
  // Code points, not UTF-16 units: names are ASCII, but be fair to the rest.
  return [...text].length;
}

function pad(text: string, w: number, align: Align): string {
  const fill = ' '.repeat(Math.max(0, w - width(text)));
  return align === 'right' ? fill + text : text + fill;
}

function center(text: string, w: number): string {
  const total = Math.max(0, w - width(text));
  const left = Math.floor(total / 2);
  return ' '.repeat(left) + text + ' '.repeat(total - left);
}

/** Cells are one line each: newlines and tabs would break the grid. */
function clean(cell: string): string {
  return cell.replace(/[\r\n\t]+/g, ' ');
}

/**
 * ```
 * +--------+------+
 * |  NAME  | SIZE |
 * +--------+------+
 * | pad    | 1GiB |
 * +--------+------+
 * ```
 */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[], opts: TableOptions = {}): string {
  const cells = rows.map((r) => headers.map((_, i) => clean(r[i] ?? '')));
  const widths = headers.map((h, i) => Math.max(width(h), ...cells.map((r) => width(r[i] ?? ''))));
  const rule = `+${widths.map((w) => '-'.repeat(w + 2)).join('+')}+`;
  const line = (parts: string[]): string => `| ${parts.join(' | ')} |`;
  const out = [rule, line(headers.map((h, i) => center(h, widths[i] ?? 0))), rule];
  for (const r of cells) out.push(line(r.map((c, i) => pad(c, widths[i] ?? 0, opts.align?.[i] ?? 'left'))));
  if (cells.length > 0) out.push(rule);
  return `${out.join('\n')}\n`;
}

function csvField(text: string): string {
  return /[",\r\n]/.test(text) || /^\s|\s$/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** RFC 4180: a header line, then one line per row. */
export function renderCsv(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  return [headers, ...rows].map((r) => headers.map((_, i) => csvField(r[i] ?? '')).join(',')).join('\n') + '\n';
}

/** One JSON document, pretty-printed, newline-terminated. */
export function renderJson(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** `key:   value` lines with the values lined up. */
export function renderKeyValues(pairs: readonly (readonly [string, string])[]): string {
  const w = Math.max(0, ...pairs.map(([k]) => width(k) + 1));
  return pairs.map(([k, v]) => `${pad(`${k}:`, w, 'left')} ${clean(v)}`).join('\n') + '\n';
}

/**
 * Columns padded with spaces, two between columns, no borders (Torus's
 * `list-peers` look). Trailing spaces are trimmed.
 */
export function renderPlainTable(headers: readonly string[], rows: readonly (readonly string[])[], opts: TableOptions = {}): string {
  const cells = rows.map((r) => headers.map((_, i) => clean(r[i] ?? '')));
  const widths = headers.map((h, i) => Math.max(width(h), ...cells.map((r) => width(r[i] ?? ''))));
  const line = (parts: readonly string[], align: boolean): string =>
    parts.map((c, i) => pad(c, widths[i] ?? 0, align ? (opts.align?.[i] ?? 'left') : 'left')).join('  ').trimEnd();
  return [line(headers, false), ...cells.map((r) => line(r, true))].join('\n') + '\n';
}

/** `0 B`, `512 B`, `5.0 GiB`, `12.3 MiB` (or kB, MB, GB with `si`): one decimal from the first unit up. */
export function formatBytes(bytes: number, si = false): string {
  const base = si ? 1000 : 1024;
  const units = si ? ['B', 'kB', 'MB', 'GB', 'TB', 'PB'] : ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = Math.max(0, bytes);
  let i = 0;
  while (value >= base && i < units.length - 1) {
    value /= base;
    i++;
  }
  return i === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[i]}`;
}

/** `0 B/s`, `12.0 MiB/s`. */
export function formatRate(bytesPerSec: number, si = false): string {
  return `${formatBytes(bytesPerSec, si)}/s`;
}

/** `now`, `1 second ago`, `4 seconds ago`, `3 minutes ago`, `2 hours ago`, `5 days ago` (as Torus printed it). */
export function formatAgo(ms: number): string {
  const s = Math.floor(ms / 1000);
  const ago = (n: number, unit: string): string => `${n} ${unit}${n === 1 ? '' : 's'} ago`;
  if (s < 1) return 'now';
  if (s < 60) return ago(s, 'second');
  if (s < 3600) return ago(Math.floor(s / 60), 'minute');
  if (s < 86_400) return ago(Math.floor(s / 3600), 'hour');
  return ago(Math.floor(s / 86_400), 'day');
}
