import assert from 'node:assert/strict';
import { test } from 'vitest';
import { ceilingTable, cpuCeilings, formatFigure, goalTally, idleVerdicts, pairedTable, ratios, rssVerdicts, spreadWarnings } from '../lib/report.mjs';
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
  const lines = pairedTable(rows).split('\n');
  assert.match(lines[2], /^r\s+1\.00\s+50%\s+0\.50\s+0%\s+r2\/file$/);
});

test('issue 7 verdicts: RSS per torusd process (VmHWM counts), idle CPU per torusd, nbdkit not judged', () => {
  const rss = {
    targets: {
      'nbdkit-memory': { processes: { 'nbdkit-memory-1': { peakBytes: 2 ** 30, hwmBytes: 2 ** 30 } } },
      torusd: { processes: { 'torusd-p1': { peakBytes: 100 * MiB, hwmBytes: 130 * MiB } } },
      'torusd-r2': { processes: { 'torusd-r2-p1': { peakBytes: 120 * MiB, hwmBytes: 120 * MiB }, 'torusd-r2-p2': { peakBytes: 128 * MiB, hwmBytes: 1 } } },
    },
  };
  const rv = rssVerdicts(rss);
  assert.deepEqual(rv.map((v) => [v.process, v.met]), [['torusd-p1', false], ['torusd-r2-p1', true], ['torusd-r2-p2', true]]);
  const idle = { seconds: 60, targets: { 'nbdkit-file': { processes: { 'nbdkit-file-1': 0.5 } }, torusd: { processes: { 'torusd-p1': 0.011 } }, 'torusd-r2': { processes: { 'torusd-r2-p1': 0.01 } } } };
  const iv = idleVerdicts(idle);
  assert.deepEqual(iv.map((v) => [v.process, v.met]), [['torusd-p1', false], ['torusd-r2-p1', true]]);
  assert.deepEqual(idleVerdicts(null), []);
  const fig = (v) => summarize([v]);
  const rows = ratios([{ job: job('r', 'read', 'IOPS'), figures: { 'nbdkit-file': fig(100), torusd: fig(120) } }]);
  const t = goalTally(rows, rv, iv);
  assert.equal(t.total, 1 + 3 + 2);
  assert.equal(t.met, 1 + 2 + 1);
  assert.deepEqual(t.missed, ['torusd-p1 peak RSS ≤ 128 MiB', 'torusd-p1 idle CPU ≤ 1% of a core']);
});

test('CPU ceilings: CPUs x figure / (target + fio cores), against the figure issue 7 asks of each torus target', () => {
  const fig = (v) => summarize([v]);
  const rows = cpuCeilings(
    [
      {
        job: job('w', 'seqwrite', 'MiB/s'),
        figures: { 'nbdkit-file': fig(4000 * MiB), torusd: fig(3000 * MiB), 'torusd-r2': fig(1000 * MiB) },
        cores: { 'nbdkit-file': 1.0, torusd: 1.0, 'torusd-r2': 1.2 },
        fioCores: { 'nbdkit-file': 0.6, torusd: 0.5, 'torusd-r2': 0.3 },
      },
      {
        job: job('r', 'read', 'IOPS'),
        figures: { torusd: fig(40_000), 'torusd-r2': fig(20_000) },
        cores: { torusd: 1.0, 'torusd-r2': 1.0 },
        fioCores: { torusd: null, 'torusd-r2': 0.25 },
      },
    ],
    2,
  );
  // MiB/s figures are kept in bytes a second. nbdkit file: 2 x 4000 / 1.6; torusd: 2 x 3000 / 1.5; torusd-r2: 2 x 1000 / 1.5.
  assert.equal(rows[0].ceiling['nbdkit-file'], 5000 * MiB);
  assert.equal(rows[0].ceiling.torusd, 4000 * MiB);
  assert.ok(Math.abs(rows[0].ceiling['torusd-r2'] - (4000 / 3) * MiB) < 1);
  // One peer must reach nbdkit file (4000: not above its 4000); three peers 0.9 x 4000 / 2 = 1800, above 1333.
  assert.deepEqual(rows[0].needed, { torusd: 4000 * MiB, 'torusd-r2': 1800 * MiB });
  assert.deepEqual(rows[0].above, { torusd: false, 'torusd-r2': true });
  // No fio figure: no ceiling; no nbdkit file: nothing needed of one peer; reads: 0.9 x one peer
  // (36.0k) against 2 x 20k / 1.25 = 32.0k.
  assert.equal(rows[1].ceiling.torusd, null);
  assert.deepEqual(rows[1].needed, { torusd: null, 'torusd-r2': 36_000 });
  assert.deepEqual(rows[1].above, { torusd: null, 'torusd-r2': true });
  const lines = ceilingTable(rows, ['nbdkit-file', 'torusd', 'torusd-r2'], 2).split('\n');
  assert.match(lines[2], /^w\s+MiB\/s\s+5000\s+4000 \(needs 4000\)\s+1333 \(needs 1800, ABOVE\)$/);
  assert.match(lines[3], /^r\s+IOPS\s+n\/a\s+n\/a \(needs -\)\s+32\.0k \(needs 36\.0k, ABOVE\)$/);
});
