import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatFigure, ratios, spreadWarnings } from '../lib/report.mjs';
import { summarize } from '../lib/stats.mjs';

const MiB = 2 ** 20;
const job = (name, kind, unit) => ({ name, kind, unit });

test("issue 7's ratios: reads vs single peer, sequential writes vs file ÷ 2, random vs file", () => {
  const fig = (v) => summarize([v]);
  const rows = ratios([
    { job: job('r', 'read', 'IOPS'), figures: { 'nbdkit-file': fig(100), torusd: fig(120), 'torusd-r2': fig(100), 'nbdkit-memory': fig(200), 'nbdkit-null': fig(400) } },
    { job: job('s', 'seqwrite', 'MiB/s'), figures: { 'nbdkit-file': fig(1000), torusd: fig(500), 'torusd-r2': fig(460) } },
    { job: job('w', 'random', 'IOPS'), figures: { 'nbdkit-file': fig(1000), torusd: fig(900), 'torusd-r2': fig(400) } },
  ]);
  assert.equal(rows[0].single.value, 1.2);
  assert.equal(rows[0].single.met, true);
  assert.equal(rows[0].replicated.label, 'r2/torusd');
  assert.ok(Math.abs(rows[0].replicated.value - 100 / 120) < 1e-9);
  assert.equal(rows[0].replicated.met, false);
  assert.equal(rows[0].ceilings['torusd/memory'], 0.6);
  assert.equal(rows[0].ceilings['torusd/null'], 0.3);
  assert.equal(rows[1].replicated.value, 0.92);
  assert.equal(rows[1].replicated.met, true);
  assert.equal(rows[1].single.met, false);
  assert.equal(rows[2].replicated.value, 0.4);
  assert.equal(rows[2].replicated.met, false);
  // A target that did not run gives no verdict rather than a wrong one.
  assert.equal(rows[1].ceilings['torusd/memory'], null);
});

test('spread over 15 % is warned about, 15 % is not', () => {
  const w = spreadWarnings([{ job: job('r', 'read', 'IOPS'), figures: { a: summarize([85, 100, 100]), b: summarize([84, 100, 100]) } }]);
  assert.deepEqual(w.map((x) => x.target), ['b']);
});

test('figures print as k IOPS or MiB/s', () => {
  assert.equal(formatFigure('IOPS', 83_012), '83.0k');
  assert.equal(formatFigure('IOPS', 950), '950');
  assert.equal(formatFigure('MiB/s', 898 * MiB), '898');
  assert.equal(formatFigure('MiB/s', 24.44 * MiB), '24.4');
});

test('ratios are also given round by round', () => {
  const rows = ratios([{ job: job('r', 'random', 'IOPS'), figures: { 'nbdkit-file': summarize([100, 200, 100]), torusd: summarize([50, 200, 100]), 'torusd-r2': summarize([50, 100, 50]) } }]);
  assert.deepEqual(rows[0].single.paired.rounds, [0.5, 1, 1]);
  assert.equal(rows[0].single.paired.median, 1);
  assert.deepEqual(rows[0].replicated.paired.rounds, [0.5, 0.5, 0.5]);
});
