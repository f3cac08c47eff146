// The replication check must catch every way a block can end up wrong; a
// checker that never fails proves nothing.
import assert from 'node:assert/strict';
import { test } from 'vitest';
import { checkCopies, describeCheck } from '../lib/copies.mjs';

const volume = { id: 7, generation: 1, blocks: 4 };
const ring = { transition: null, members: [{ uuid: 'a' }, { uuid: 'b' }, { uuid: 'c' }] };
// Owners by index, standing in for torus's placement.
const OWNERS = [['a', 'b'], ['b', 'c'], ['c', 'a'], ['a', 'b']];
const ownersOf = (_ring, ref) => ({ now: OWNERS[ref.index] });

function copy(index, extra = {}) {
  return { index, generation: 1, state: 'data', version: 100 + index, digest: 1000 + index, suspect: false, ...extra };
}

/** Every block on its two owners, equal. */
function healthy() {
  const by = { a: [], b: [], c: [] };
  OWNERS.forEach((owners, i) => owners.forEach((u) => by[u].push(copy(i))));
  return by;
}

const run = (copiesByPeer, opts = {}) => checkCopies({ volume, ring, copiesByPeer, replication: 2, expectFull: true, ownersOf, ...opts });

test('a healthy volume passes both checks', () => {
  const r = run(healthy());
  assert.equal(r.ok, true, r.problems.join('\n'));
  assert.deepEqual(r.histogram, { 2: 4 });
  assert.match(describeCheck('v', r), /OK: 4 blocks/);
});

test('a missing copy is short and misplaced', () => {
  const by = healthy();
  by.b = by.b.filter((c) => c.index !== 1);
  const r = run(by);
  assert.equal(r.ok, false);
  assert.equal(r.short, 1);
  assert.equal(r.misplaced, 1);
  assert.match(r.problems.join('\n'), /block 1: 1 copy/);
});

test('a copy on a peer that does not own the block is found, also with the right count', () => {
  const by = healthy();
  by.a = by.a.filter((c) => c.index !== 0);
  by.c.push(copy(0));
  const r = run(by);
  assert.equal(r.ok, false);
  assert.equal(r.short, 0);
  assert.equal(r.misplaced, 1);
  assert.match(r.problems.join('\n'), /missing on a; extra copy on c/);
});

test('copies with different versions or digests, or suspect ones, fail', () => {
  const by = healthy();
  by.b[0] = copy(by.b[0].index, { version: 1 });
  let r = run(by);
  assert.equal(r.unequal, 1);
  const by2 = healthy();
  by2.c[0] = copy(by2.c[0].index, { suspect: true });
  r = run(by2);
  assert.equal(r.suspect, 1);
  assert.equal(r.ok, false);
});

test('three copies are too many', () => {
  const by = healthy();
  by.c.push(copy(0));
  const r = run(by);
  assert.equal(r.over, 1);
  assert.equal(r.ok, false);
});

test('a written block with no copy anywhere fails only when the volume was fully written', () => {
  const by = healthy();
  for (const u of Object.keys(by)) by[u] = by[u].filter((c) => c.index !== 3);
  assert.equal(run(by).holes, 1);
  assert.equal(run(by).ok, false);
  assert.equal(run(by, { expectFull: false }).ok, true);
});

test('without placement the count check still works, and a ring in transition fails', () => {
  const by = healthy();
  by.a = by.a.filter((c) => c.index !== 0);
  assert.equal(run(by, { ownersOf: null }).short, 1);
  const r = run(healthy(), { ring: { ...ring, transition: { phase: 'moving' } } });
  assert.equal(r.ok, false);
});

test('absent entries and other generations are not copies', () => {
  const by = healthy();
  by.c.push(copy(0, { state: 'absent' }), copy(0, { generation: 2 }));
  assert.equal(run(by).ok, true);
});
