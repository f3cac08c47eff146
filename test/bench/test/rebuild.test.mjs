import assert from 'node:assert/strict';
import { test } from 'vitest';
import { coresOver } from '../lib/cpu.mjs';
import { copyWindow } from '../lib/rebuild.mjs';

test('the copy window runs from the last sample before the counter moved to the first at its final value', () => {
  const w = copyWindow([
    { atMs: 0, bytes: 10 },
    { atMs: 1000, bytes: 10 },
    { atMs: 2000, bytes: 60 },
    { atMs: 3000, bytes: 110 },
    { atMs: 4000, bytes: 110 },
    { atMs: 5000, bytes: 110 },
  ]);
  assert.deepEqual(w, { startMs: 1000, endMs: 3000, bytes: 100 });
});

test('no copy window when the counter never moved', () => {
  assert.equal(copyWindow([{ atMs: 0, bytes: 5 }, { atMs: 10, bytes: 5 }]), null);
  assert.equal(copyWindow([{ atMs: 0, bytes: 5 }]), null);
});

test('cores over a window; a process gone at the end counts 0, never negative', () => {
  const c = coresOver({ a: 1, b: 2 }, { a: 1.5, b: 0 }, 10);
  assert.equal(c.a, 0.05);
  assert.equal(c.b, 0);
});
