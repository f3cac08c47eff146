// The bench's resident-memory sampler (lib/rss.mjs) read against this very
// process's /proc, and the peak lines it leads to (lib/report.mjs).
import assert from 'node:assert/strict';
import { test } from 'vitest';
import { rssLines } from '../lib/report.mjs';
import { RssSampler } from '../lib/rss.mjs';

const MiB = 2 ** 20;

test('a sampled peak is split into what is mapped from files and what is anonymous, adding up to it', () => {
  const sampler = new RssSampler();
  sampler.track('self', 'self-1', process.pid);
  sampler.setPhase('now');
  sampler.sample();
  const p = sampler.report().targets.self.processes['self-1'];
  assert.equal(p.peakPhase, 'now');
  // node's binary is mapped from its file; the V8 heap is anonymous.
  assert.ok(p.peakFileBytes > MiB, `from files: ${p.peakFileBytes}`);
  assert.ok(p.peakAnonBytes > MiB, `anonymous: ${p.peakAnonBytes}`);
  // The kernel's VmRSS is RssAnon + RssFile + RssShmem, read from the same text.
  assert.equal(p.peakFileBytes + p.peakAnonBytes, p.peakBytes);
  assert.ok(p.hwmBytes >= p.peakBytes);
});

test('the peak lines name the split of each torusd peak, alone or per peer', () => {
  const peer = (peak, file) => ({ peakBytes: peak * MiB, hwmBytes: (peak + 1) * MiB, peakPhase: 'jobs:x', peakFileBytes: file * MiB, peakAnonBytes: (peak - file) * MiB });
  const rss = {
    targets: {
      torusd: { peakBytes: 130 * MiB, hwmSumBytes: 131 * MiB, peakPhase: 'jobs:x', processes: { 'torusd-p1': peer(130, 54) } },
      'torusd-r2': { peakBytes: 300 * MiB, processes: { 'torusd-r2-p1': peer(120, 53), 'torusd-r2-p2': peer(90, 50) } },
    },
  };
  const [single, replicated] = rssLines(rss, ['torusd', 'torusd-r2']);
  assert.match(single, /^ {2}torusd {9}peak {3}130\.0 MiB \(VmHWM 131\.0 MiB; in jobs:x; 54\.0 MiB from files, 76\.0 MiB anonymous\); OVER the 128\.0 MiB target: torusd-p1$/);
  assert.match(replicated, /torusd-r2-p1 120\.0 MiB \(VmHWM 121\.0 MiB; in jobs:x; 53\.0 MiB from files, 67\.0 MiB anonymous\), torusd-r2-p2 90\.0 MiB \(VmHWM 91\.0 MiB; in jobs:x; 50\.0 MiB from files, 40\.0 MiB anonymous\)/);
});
