import { BrokenCircuitError } from 'cockatiel';
import { EtcdError, EtcdLeaseInvalidError, GRPCDeadlineExceededError, GRPCUnavailableError } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { toTorusError, withEtcd } from '../../src/metadata/etcd-errors.js';
import { describeKeyLayout, normalizePrefix, volumeFenceKey, volumeKey, volumeLockKey } from '../../src/metadata/keys.js';
import { decodeCounter, decodePeerRecord, decodeRingRecord, decodeVolumeRecord, encodeRecord } from '../../src/metadata/record-codec.js';
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
      '/torus/peers/<uuid>',
      '/torus/ring',
    ]);
    for (const d of doc) expect(d.what.length).toBeGreaterThan(10);
    expect([volumeKey('pad'), volumeLockKey(7), volumeFenceKey(7)]).toEqual(['volumes/pad', 'volume-locks/7', 'volume-fence/7']);
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
    const r = { schema: 1 as const, version: 3, replication: 2, members: [{ uuid: 'a', weight: 1.5 }] };
    expect(decodeRingRecord('k', encodeRecord(r))).toEqual(r);
    expect(decodeCounter('k', null)).toBe(0);
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
