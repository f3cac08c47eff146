import assert from 'node:assert/strict';
import { test } from 'vitest';
import { median, ratio, spread, summarize } from '../lib/stats.mjs';

test('median of odd and even counts, never the best', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([]), null);
});

test('spread is (max - min) / median', () => {
  assert.equal(spread([90, 100, 110]), 0.2);
  assert.equal(spread([5]), 0);
  assert.equal(spread([0, 0]), 0);
  assert.equal(spread([0, 0, 1]), Infinity);
  assert.deepEqual(summarize([110, 90, 100]), { median: 100, spread: 0.2, min: 90, max: 110, rounds: [110, 90, 100] });
});

test('ratio is null when a side is missing or the divisor is 0', () => {
  assert.equal(ratio(1, 2), 0.5);
  assert.equal(ratio(null, 2), null);
  assert.equal(ratio(1, 0), null);
});
