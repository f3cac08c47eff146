// Figures over repeated rounds: the median (never the best run) and the
// spread, (max - min) / median. Pure.

/** Spread above this fraction of the median gets a warning line. */
export const SPREAD_WARN = 0.15;

export function median(values) {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** (max - min) / median; null for no values, 0 for one, Infinity when the median is 0 but the values differ. */
export function spread(values) {
  if (values.length === 0) return null;
  const m = median(values);
  const range = Math.max(...values) - Math.min(...values);
  if (range === 0) return 0;
  return m === 0 ? Infinity : range / m;
}

/** Median and spread of one figure over rounds, with the rounds kept. */
export function summarize(values) {
  return { median: median(values), spread: spread(values), min: values.length ? Math.min(...values) : null, max: values.length ? Math.max(...values) : null, rounds: [...values] };
}

/** a / b, or null when either is missing or b is 0. */
export function ratio(a, b) {
  if (a == null || b == null || b === 0) return null;
  return a / b;
}
