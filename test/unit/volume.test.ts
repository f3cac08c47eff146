import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import type { VolumeRecord } from '../../src/model/records.js';
import { legacyMemoryStore, type FencingTestStore } from '../helpers/legacy-stores.js';
import { Volume, type Placement } from '../../src/volume/volume.js';
import { VolumeManager } from '../../src/volume/volume-manager.js';
import { ManualClock } from '../helpers/metadata-contract.js';

const log = pino({ level: 'silent' });
const BS = 64 * 1024;
const record: VolumeRecord = { schema: 1, id: 9, name: 'v', type: 'block', size: 10 * BS + 512, blockSize: BS, generation: 1, createdAt: '' };

function twoReplicas(): { placement: Placement; stores: FencingTestStore[] } {
  const stores = [legacyMemoryStore(BS, 100 * BS), legacyMemoryStore(BS, 100 * BS)];
  return { stores, placement: { replicas: (_ref: BlockRef) => stores, all: () => stores } };
}

describe('Volume', () => {
  it('splits I/O at block boundaries and writes every replica', async () => {
    const { placement, stores } = twoReplicas();
    const v = new Volume(record, placement, { writeToken: () => 7 }, log);
    const data = Buffer.alloc(3 * BS, 0).map((_, i) => i % 251);
    await v.write(BS - 100, data, false);
    expect((await v.read(BS - 100, data.length)).equals(data)).toBe(true);
    for (const s of stores) {
      expect(await s.allocated([{ volumeId: 9, generation: 1, index: 0 }, { volumeId: 9, generation: 1, index: 4 }])).toEqual([true, false]);
      expect(s.fenceOf(9)).toBe(7);
    }
  });

  it('reads from the next replica when the first fails', async () => {
    const { placement, stores } = twoReplicas();
    const v = new Volume(record, placement, { writeToken: () => 1 }, log);
    await v.write(0, Buffer.from('hello'), false);
    stores[0]!.read = async () => {
      throw new Error('disk gone');
    };
    expect((await v.read(0, 5)).toString()).toBe('hello');
  });

  it('refuses ranges beyond the end with TORUS_ERR_IO_OUT_OF_RANGE', async () => {
    const { placement } = twoReplicas();
    const v = new Volume(record, placement, { writeToken: () => 1 }, log);
    const err = await v.read(record.size - 10, 11).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_IO_OUT_OF_RANGE')).toBe(true);
  });

  it('reports holes and data as merged base:allocation extents, and trims whole blocks to holes', async () => {
    const { placement } = twoReplicas();
    const v = new Volume(record, placement, { writeToken: () => 1 }, log);
    await v.write(2 * BS + 5, Buffer.alloc(2 * BS, 1), false);
    expect(await v.blockStatus(0, 6 * BS)).toEqual([
      { length: 2 * BS, flags: 3 },
      { length: 3 * BS, flags: 0 },
      { length: BS, flags: 3 },
    ]);
    await v.zero(3 * BS, BS, { punch: true, fua: false });
    expect(await v.blockStatus(3 * BS, BS)).toEqual([{ length: BS, flags: 3 }]);
    expect((await v.read(3 * BS, BS)).equals(Buffer.alloc(BS))).toBe(true);
  });

  it('writes nothing when the guard refuses', async () => {
    const { placement, stores } = twoReplicas();
    const v = new Volume(record, placement, { writeToken: () => { throw new Error('lock lost'); } }, log);
    await expect(v.write(0, Buffer.from('x'), false)).rejects.toThrow('lock lost');
    expect(await stores[0]!.allocated([{ volumeId: 9, generation: 1, index: 0 }])).toEqual([false]);
  });
});

describe('VolumeManager', () => {
  async function setup() {
    const clock = new ManualClock();
    const md = new MemoryMetadata({ clock });
    await md.initCluster({ blockSize: BS, replication: 1 }, { force: false });
    await md.createVolume('pad', 16 * BS);
    const current = { session: await md.openSession({ ttlSeconds: 30 }) };
    const store = legacyMemoryStore(BS, 100 * BS);
    const placement: Placement = { replicas: () => [store], all: () => [store] };
    const vm = new VolumeManager({ metadata: md, session: () => current.session, placement: () => placement, holder: 'test-holder', logger: log, clock });
    return { md, current, vm, clock, store };
  }

  it('shares one open volume and one lock between connections, and releases the lock with the last', async () => {
    const { md, vm } = await setup();
    const a = await vm.acquire('pad', 'rw');
    const b = await vm.acquire('pad', 'rw');
    expect(a).toBe(b);
    expect((await md.getVolumeLock(a.volume.record.id))?.holder).toBe('test-holder');
    await vm.release(a);
    expect(await md.getVolumeLock(a.volume.record.id)).not.toBeNull();
    await vm.release(b);
    expect(await md.getVolumeLock(a.volume.record.id)).toBeNull();
  });

  it('lets a client reconnect while the previous close is still releasing the lock', async () => {
    const { vm } = await setup();
    const a = await vm.acquire('pad', 'rw');
    const closing = vm.release(a);
    const b = await vm.acquire('pad', 'rw');
    await closing;
    await b.volume.write(0, Buffer.from('ok'), false);
    await vm.release(b);
  });

  it('refuses writes once the lease may have expired, and resumes after relock with a newer token', async () => {
    const { md, vm, clock, current, store } = await setup();
    const ov = await vm.acquire('pad', 'rw');
    const first = ov.lock!.token;
    await ov.volume.write(0, Buffer.from('a'), false);
    // etcd unreachable: keepalives fail and the lease deadline passes.
    md.setAvailable(false);
    await clock.advance(31_000);
    const err = await ov.volume.write(0, Buffer.from('x'), false).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_VOLUME_LOCK_LOST')).toBe(true);
    await vm.leaseLost();
    md.setAvailable(true);
    current.session = await md.openSession({ ttlSeconds: 30 });
    await vm.relock();
    expect(ov.lock!.token).toBeGreaterThan(first);
    await ov.volume.write(0, Buffer.from('b'), false);
    expect(store.fenceOf(ov.volume.record.id)).toBe(ov.lock!.token);
    expect((await ov.volume.read(0, 1)).toString()).toBe('b');
  });

  it('opens read-only without a lock and refuses writes with TORUS_ERR_VOLUME_READ_ONLY', async () => {
    const { md, vm } = await setup();
    const ro = await vm.acquire('pad', 'ro');
    expect(await md.getVolumeLock(ro.volume.record.id)).toBeNull();
    const err = await ro.volume.write(0, Buffer.from('x'), false).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_VOLUME_READ_ONLY')).toBe(true);
  });
});
