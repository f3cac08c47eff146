import assert from 'node:assert/strict';
import { test } from 'vitest';
import { quietState } from '../lib/torus.mjs';

const base = { ring: { members: ['a', 'b'], transition: null }, stale: [], degraded: [], balanced: true, unbalancedBecause: [] };

test('balanced is quiet', () => {
  assert.equal(quietState(base).balanced, true);
  assert.equal(quietState(base).onlyOrphanStale, false);
});

test('a stale record of a removed peer alone is recognised, and counted apart', () => {
  const s = {
    ...base,
    balanced: false,
    unbalancedBecause: ['1 stale record(s)'],
    stale: [{ volume: 'v', volumeId: 1, peer: 'gone', all: true, blocks: 8 }],
    degraded: [{ volume: 'v', volumeId: 1, shortBlocks: 8, stalePeers: ['gone'], healthShort: null }],
  };
  const q = quietState(s);
  assert.equal(q.onlyOrphanStale, true);
  assert.deepEqual(q.orphanStale.map((x) => x.peer), ['gone']);
  assert.equal(q.memberStale.length, 0);
  assert.equal(q.degradedByOthers.length, 0);
});

test('a stale member, a short health record or a transition is not quiet', () => {
  const orphan = { volume: 'v', volumeId: 1, peer: 'gone', all: true, blocks: 8 };
  const member = { ...orphan, peer: 'a', all: false, blocks: 1 };
  const unbalanced = { ...base, balanced: false, unbalancedBecause: ['2 stale record(s)'] };
  assert.equal(quietState({ ...unbalanced, stale: [orphan, member], degraded: [{ volume: 'v', volumeId: 1, shortBlocks: 8, stalePeers: ['a', 'gone'], healthShort: null }] }).onlyOrphanStale, false);
  assert.equal(
    quietState({ ...unbalanced, stale: [orphan], unbalancedBecause: ['1 stale record(s)', '1 volume(s) with blocks short of 2 copies'], degraded: [{ volume: 'v', volumeId: 1, shortBlocks: 8, stalePeers: ['gone'], healthShort: 3 }] })
      .onlyOrphanStale,
    false,
  );
  assert.equal(quietState({ ...unbalanced, stale: [orphan], ring: { members: ['a', 'b'], transition: { phase: 'moving' } } }).onlyOrphanStale, false);
});
