import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BrokenCircuitError } from 'cockatiel';
import { EtcdError, EtcdLeaseInvalidError, GRPCDeadlineExceededError, GRPCUnavailableError } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { toTorusError, withEtcd } from '../../src/metadata/etcd-errors.js';
import {
  describeKeyLayout,
  fenceIdOf,
  healthKey,
  moveKey,
  movesVersionPrefix,
  normalizePrefix,
  parseMoveKey,
  ringAckKey,
  staleKey,
  staleVolumePrefix,
  volumeFenceKey,
  volumeKey,
  volumeLockKey,
  volumeMaintKey,
  volumeReleasedKey,
  volumeExpiredKey,
  volumeReaderKey,
  volumeReadersPrefix,
} from '../../src/metadata/keys.js';
import {
  decodeClusterSecret,
  decodeCounter,
  decodePeerRecord,
  decodeRingAck,
  decodeRingRecord,
  decodeStaleRecord,
  decodeVolumeHealthRecord,
  decodeVolumeLockRecord,
  decodeVolumeMoveRecord,
  decodeVolumeRecord,
  encodeRecord,
} from '../../src/metadata/record-codec.js';
import type { RingAck, RingRecord, StaleRecord, VolumeHealthRecord, VolumeLockRecord, VolumeMoveRecord } from '../../src/model/records.js';
import { ManualClock, expectCode, peerRecord } from '../helpers/metadata-contract.js';

describe('key layout', () => {
  it('documents every key under the prefix', () => {
    const doc = describeKeyLayout('/torus/');
    expect(doc.map((d) => d.key)).toEqual([
      '/torus/config',
      '/torus/meta/volume-id',
      '/torus/volumes/<name>',
      '/torus/volume-locks/<volumeId>',
      '/torus/volume-fence/<volumeId>',
      '/torus/volume-released/<volumeId>',
      '/torus/volume-expired/<volumeId>',
      '/torus/peers/<uuid>',
      '/torus/ring',
      '/torus/secret',
      '/torus/volume-maint/<volumeId>',
      '/torus/volume-readers/<volumeId>/<lease>',
      '/torus/stale/<volumeId>/<uuid>',
      '/torus/ring-acks/<lease>',
      '/torus/moves/<ringVersion>/<volumeId>',
      '/torus/health/<volumeId>',
    ]);
    for (const d of doc) expect(d.what.length).toBeGreaterThan(10);
    expect([volumeKey('pad'), volumeLockKey(7), volumeFenceKey(7), volumeMaintKey(7), volumeReleasedKey(7), volumeExpiredKey(7)]).toEqual(['volumes/pad', 'volume-locks/7', 'volume-fence/7', 'volume-maint/7', 'volume-released/7', 'volume-expired/7']);
    expect([volumeReadersPrefix(1), volumeReaderKey(1, '99')]).toEqual(['volume-readers/1/', 'volume-readers/1/99']);
    expect([staleKey(1, 'p'), staleVolumePrefix(1), ringAckKey('99'), moveKey(3, 7), movesVersionPrefix(3), healthKey(7)]).toEqual([
      'stale/1/p',
      'stale/1/',
      'ring-acks/99',
      'moves/3/7',
      'moves/3/',
      'health/7',
    ]);
    // Volume 1's records never match volume 10's prefix, nor transition 1's transition 10's.
    expect(staleKey(10, 'p').startsWith(staleVolumePrefix(1))).toBe(false);
    expect(moveKey(10, 1).startsWith(movesVersionPrefix(1))).toBe(false);
    expect(parseMoveKey('moves/12/34')).toEqual({ ringVersion: 12, volumeId: 34 });
    expect(parseMoveKey('moves/x/34')).toBeNull();
    expect(fenceIdOf('volume-fence/42')).toBe(42);
  });

  it("README's key table lists every key of the layout", () => {
    const readme = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'README.md'), 'utf8');
    const missing = describeKeyLayout('/torus/').filter((d) => !readme.includes(`| \`${d.key}\` |`));
    expect(missing.map((d) => d.key)).toEqual([]);
  });

  it('reports a key that is not a fence key as corrupt', async () => {
    await expectCode(Promise.resolve().then(() => fenceIdOf('volume-fence/abc')), 'TORUS_ERR_METADATA_CORRUPT');
  });

  it('normalises prefixes so that one cluster never matches another', async () => {
    expect(normalizePrefix('/torus')).toBe('/torus/');
    expect(normalizePrefix('/a/b/')).toBe('/a/b/');
    await expectCode(Promise.resolve().then(() => normalizePrefix('torus')), 'TORUS_ERR_ARG_INVALID');
  });
});

describe('record codec', () => {
  it('round-trips records', () => {
    const p = peerRecord('u1');
    expect(decodePeerRecord('k', encodeRecord(p))).toEqual(p);
    const r: RingRecord = {
      schema: 2,
      version: 3,
      replication: 2,
      minReplicas: 2,
      members: [{ uuid: 'a', weight: 1.5 }],
      transition: { from: { members: [{ uuid: 'b', weight: 1 }], replication: 1 }, phase: 'settled', startedVersion: 2, startedAt: '2024-01-01T00:00:00.000Z', reason: 'x' },
    };
    expect(decodeRingRecord('k', encodeRecord(r))).toEqual(r);
    const carried: RingRecord = { ...r, transition: { ...r.transition!, phase: 'moving', carried: [{ members: [{ uuid: 'c', weight: 1 }], replication: 1 }] } };
    expect(decodeRingRecord('k', encodeRecord(carried))).toEqual(carried);
    expect(() => decodeRingRecord('k', encodeRecord({ ...r, transition: { ...r.transition!, carried: [] } }))).toThrow(/carried/);
    const p2 = peerRecord('u2', { incarnation: 'i', rebalanceBytesPerSec: 1.5 });
    expect(decodePeerRecord('k', encodeRecord(p2))).toEqual(p2);
    const stale: StaleRecord = { schema: 1, volumeId: 3, peer: 'u1', all: false, ranges: [[0, 4], [9, 10]], updatedAt: 't' };
    expect(decodeStaleRecord('k', encodeRecord(stale))).toEqual(stale);
    const ack: RingAck = { schema: 1, lease: '77', peer: null, kind: 'client', ringVersion: 4, fenceRevision: 0, updatedAt: 't' };
    expect(decodeRingAck('k', encodeRecord(ack))).toEqual(ack);
    const move: VolumeMoveRecord = { schema: 1, ringVersion: 4, volumeId: 3, done: true, scanned: 9, copied: 2, unavailable: 0, updatedAt: 't' };
    expect(decodeVolumeMoveRecord('k', encodeRecord(move))).toEqual(move);
    // How far the pass went, when the release that wrote it records it.
    expect(decodeVolumeMoveRecord('k', encodeRecord({ ...move, done: false, reached: 300 }))).toEqual({ ...move, done: false, reached: 300 });
    const health: VolumeHealthRecord = { schema: 1, volumeId: 3, ringVersion: 4, blocks: 9, short: 1, repaired: 2, divergent: 0, checkedAt: 't' };
    expect(decodeVolumeHealthRecord('k', encodeRecord(health))).toEqual(health);
    const lock: VolumeLockRecord = { schema: 1, volumeId: 3, holder: 'h', token: 2, acquiredAt: 't', kind: 'maintainer' };
    expect(decodeVolumeLockRecord('k', encodeRecord(lock))).toEqual(lock);
    expect(decodeClusterSecret('k', 'ab'.repeat(32))).toBe('ab'.repeat(32));
    expect(decodeCounter('k', null)).toBe(0);
  });

  it('reads 0.1.0 records: a schema-1 ring as stable schema 2 with the default minReplicas, a lock without kind as a writer', () => {
    for (const [replication, min] of [[1, 1], [2, 1], [3, 2], [5, 3]] as const) {
      expect(decodeRingRecord('k', encodeRecord({ schema: 1, version: 9, replication, members: [{ uuid: 'a', weight: 1 }] }))).toEqual({
        schema: 2,
        version: 9,
        replication,
        minReplicas: min,
        members: [{ uuid: 'a', weight: 1 }],
        transition: null,
      });
    }
    expect(decodeVolumeLockRecord('k', encodeRecord({ schema: 1, volumeId: 1, holder: 'h', token: 1, acquiredAt: 't' })).kind).toBe('writer');
    const old = decodePeerRecord('k', encodeRecord({ ...peerRecord('u1') }));
    expect('incarnation' in old || 'rebalanceBytesPerSec' in old).toBe(false);
    expect(decodeCounter('k', '41')).toBe(41);
  });

  it('reports bad records as corrupt, naming the key', async () => {
    const cases: (() => unknown)[] = [
      () => decodeVolumeRecord('/torus/volumes/x', '{'),
      () => decodeVolumeRecord('/torus/volumes/x', '[]'),
      () => decodeVolumeRecord('/torus/volumes/x', '{"schema":2}'),
      () => decodeVolumeRecord('/torus/volumes/x', encodeRecord({ schema: 1, id: 'one', name: 'x', type: 'block', size: 1, blockSize: 1, generation: 1, createdAt: '' })),
      () => decodeVolumeRecord('/torus/volumes/x', encodeRecord({ schema: 1, id: 1, name: 'x', type: 'file', size: 1, blockSize: 1, generation: 1, createdAt: '' })),
      () => decodeRingRecord('/torus/ring', '{"schema":1,"version":1,"replication":1,"members":[{"uuid":3}]}'),
      () => decodeCounter('/torus/meta/volume-id', 'x1'),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 3, version: 1, replication: 1, minReplicas: 1, members: [], transition: null })),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 2, version: 1, replication: 2, minReplicas: 3, members: [], transition: null })),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 2, version: 1, replication: 2, minReplicas: 0, members: [], transition: null })),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 2, version: 1, replication: 2, members: [], transition: null })),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 2, version: 1, replication: 1, minReplicas: 1, members: [{ uuid: 'a', weight: 1 }, { uuid: 'a', weight: 1 }], transition: null })),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 2, version: 2, replication: 1, minReplicas: 1, members: [], transition: { from: { members: [], replication: 1 }, phase: 'gone', startedVersion: 1, startedAt: 't', reason: '' } })),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 2, version: 2, replication: 1, minReplicas: 1, members: [], transition: { from: { members: [], replication: 1 }, phase: 'moving', startedVersion: 3, startedAt: 't', reason: '' } })),
      () => decodeRingRecord('/torus/ring', encodeRecord({ schema: 2, version: 2, replication: 1, minReplicas: 1, members: [], transition: { from: { replication: 1 }, phase: 'moving', startedVersion: 1, startedAt: 't', reason: '' } })),
      () => decodeStaleRecord('/torus/stale/1/u', encodeRecord({ schema: 1, volumeId: 1, peer: 'u', all: false, ranges: [[5, 6], [0, 1]], updatedAt: 't' })),
      () => decodeStaleRecord('/torus/stale/1/u', encodeRecord({ schema: 1, volumeId: 1, peer: 'u', all: false, ranges: [[0, 3], [2, 4]], updatedAt: 't' })),
      () => decodeStaleRecord('/torus/stale/1/u', encodeRecord({ schema: 1, volumeId: 1, peer: 'u', all: false, ranges: [[3, 3]], updatedAt: 't' })),
      () => decodeStaleRecord('/torus/stale/1/u', encodeRecord({ schema: 1, volumeId: 1, peer: 'u', all: 'no', ranges: [], updatedAt: 't' })),
      () => decodeRingAck('/torus/ring-acks/1', encodeRecord({ schema: 1, lease: '1', peer: null, kind: 'daemon', ringVersion: 1, fenceRevision: 0, updatedAt: 't' })),
      () => decodeVolumeMoveRecord('/torus/moves/1/1', encodeRecord({ schema: 1, ringVersion: 1, volumeId: 1, done: true, scanned: -1, copied: 0, unavailable: 0, updatedAt: 't' })),
      () => decodeVolumeHealthRecord('/torus/health/1', encodeRecord({ schema: 1, volumeId: 1, ringVersion: 1, blocks: 1, short: 0, repaired: 0, checkedAt: 't' })),
      () => decodeVolumeLockRecord('/torus/volume-maint/1', encodeRecord({ schema: 1, volumeId: 1, holder: 'h', token: 1, acquiredAt: 't', kind: 'spectator' })),
      () => decodeClusterSecret('/torus/secret', 'not hex'),
      () => decodePeerRecord('/torus/peers/u', encodeRecord({ ...peerRecord('u'), rebalanceBytesPerSec: 'fast' })),
    ];
    for (const c of cases) {
      const err = await expectCode(Promise.resolve().then(c), 'TORUS_ERR_METADATA_CORRUPT');
      expect(err.message).toMatch(/etcd key "\/torus\/[^"]+" holds a bad record/);
    }
  });
});

describe('etcd error mapping', () => {
  const ctx = { endpoints: '127.0.0.1:2379' };

  it('maps "no answer" to ETCD_UNAVAILABLE naming the endpoint, answers to ETCD_FAILED', () => {
    for (const e of [new GRPCUnavailableError('14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:2379. Resolution note: '), new GRPCDeadlineExceededError('4 DEADLINE_EXCEEDED: Deadline exceeded'), new BrokenCircuitError()]) {
      const t = toTorusError(e, ctx, 'get /torus/config');
      expect(t.code).toBe('TORUS_ERR_ETCD_UNAVAILABLE');
      expect(t.message).toMatch(/^etcd at 127\.0\.0\.1:2379 is unavailable \(get \/torus\/config\): /);
    }
    expect(toTorusError(new GRPCUnavailableError('14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:2379. Resolution note: '), ctx, 'op').message).toBe(
      'etcd at 127.0.0.1:2379 is unavailable (op): connection refused',
    );
    expect(toTorusError(new EtcdError('etcdserver: mvcc: required revision has been compacted'), ctx, 'op').code).toBe('TORUS_ERR_ETCD_FAILED');
    expect(toTorusError(new EtcdLeaseInvalidError('123'), ctx, 'op').code).toBe('TORUS_ERR_SESSION_LOST');
    const own = new TorusError('TORUS_ERR_VOLUME_EXISTS', 'x');
    expect(toTorusError(own, ctx, 'op')).toBe(own);
  });

  it('withEtcd bounds a call that never settles', async () => {
    const clock = new ManualClock();
    const p = withEtcd({ ...ctx, timeoutMs: 500, clock }, 'get x', () => new Promise<never>(() => undefined));
    await clock.advance(500);
    const err = await expectCode(p, 'TORUS_ERR_ETCD_UNAVAILABLE');
    expect(err.message).toBe('etcd at 127.0.0.1:2379 did not answer get x within 500 ms');
  });
});
