/**
 * Releasing a volume lock and opening a volume while etcd does not answer
 * (an etcd restart): the release is tried again until it succeeds or the
 * lease that holds the key is gone, so no lock is left behind on a lease
 * that lives on; an open is tried again within its bound, and what etcd
 * answered (no such volume, held elsewhere) is final at once.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { LOCK_RELEASE_ATTEMPTS_MAX, releaseLock } from '../../src/cluster/lock-release.js';
import type { OpenVolume, VolumeManager } from '../../src/cluster/volume-manager.js';
import { TorusError } from '../../src/errors/torus-error.js';
import type { MetadataService } from '../../src/metadata/metadata-service.js';
import type { VolumeRecord } from '../../src/model/records.js';
import { VolumeExports } from '../../src/volume/volume-exports.js';
import { ManualClock } from '../helpers/metadata-contract.js';

const quiet = pino({ level: 'silent' });
const unavailable = () => new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'etcd at 127.0.0.1:2379 is unavailable (unlock): connection refused');

/** A lock whose release fails with `failures` errors first (made by `make`), then succeeds. */
function flakyLock(failures: number, make: () => Error = unavailable) {
  const lock = {
    attempts: 0,
    released: false,
    async release() {
      lock.attempts++;
      if (lock.attempts <= failures) throw make();
      lock.released = true;
    },
  };
  return lock;
}

/** Settles `p` while moving the clock on in steps; fails if it takes longer than `budgetMs`. */
async function settle<T>(clock: ManualClock, p: Promise<T>, budgetMs = 600_000): Promise<T> {
  let done = false;
  const watched = p.finally(() => void (done = true));
  for (let t = 0; !done && t < budgetMs; t += 100) await clock.advance(100);
  if (!done) throw new Error(`did not settle within ${budgetMs} ms of clock time`);
  return watched;
}

describe('releaseLock', () => {
  it('tries again while etcd does not answer, and releases once it does', async () => {
    const clock = new ManualClock();
    const lock = flakyLock(5);
    const ok = await settle(clock, releaseLock(lock, { clock, logger: quiet, session: { leaseDeadline: () => Infinity }, stillWanted: () => true, retryMs: 200, fields: {} }));
    expect(ok).toBe(true);
    expect(lock.released).toBe(true);
    expect(lock.attempts).toBe(6);
  });

  it('stops once the lease holding the key has passed its deadline (the key went with it)', async () => {
    const clock = new ManualClock();
    const deadline = clock.monotonic() + 3_000;
    const lock = flakyLock(1_000);
    const ok = await settle(clock, releaseLock(lock, { clock, logger: quiet, session: { leaseDeadline: () => deadline }, stillWanted: () => true, retryMs: 200, fields: {} }));
    expect(ok).toBe(false);
    expect(clock.monotonic()).toBeGreaterThanOrEqual(deadline);
    expect(clock.monotonic()).toBeLessThan(deadline + 6_000);
  });

  it('stops when no longer wanted (a new session, or the process stopping)', async () => {
    const clock = new ManualClock();
    let wanted = true;
    const lock = flakyLock(1_000);
    const p = releaseLock(lock, { clock, logger: quiet, session: { leaseDeadline: () => Infinity }, stillWanted: () => wanted, retryMs: 200, fields: {} });
    await clock.advance(1_000);
    wanted = false;
    expect(await settle(clock, p)).toBe(false);
    expect(lock.released).toBe(false);
  });

  it('a stop that begins during a pause ends the pause and gives up without another attempt', async () => {
    const clock = new ManualClock();
    let wanted = true;
    let interrupt!: () => void;
    const interrupted = new Promise<void>((resolve) => (interrupt = resolve));
    const lock = flakyLock(1_000);
    let done = false;
    const p = releaseLock(lock, { clock, logger: quiet, session: { leaseDeadline: () => Infinity }, stillWanted: () => wanted, interrupted, retryMs: 5_000, fields: {} }).finally(() => (done = true));
    await clock.advance(1_000); // in the 5 s pause after the first failure
    expect(lock.attempts).toBe(1);
    wanted = false;
    interrupt();
    await new Promise((r) => setImmediate(r));
    expect(done).toBe(true); // no clock time passed: the pause ended with the stop
    expect(await p).toBe(false);
    expect(lock.attempts).toBe(1);
  });

  it('a stop that begins during an attempt lets that attempt finish: one that etcd answers still releases', async () => {
    const clock = new ManualClock();
    let wanted = true;
    let interrupt!: () => void;
    const interrupted = new Promise<void>((resolve) => (interrupt = resolve));
    let answer!: () => void;
    const lock = {
      attempts: 0,
      release: () => {
        lock.attempts++;
        return new Promise<void>((resolve) => (answer = resolve));
      },
    };
    const p = releaseLock(lock, { clock, logger: quiet, session: { leaseDeadline: () => Infinity }, stillWanted: () => wanted, interrupted, retryMs: 200, fields: {} });
    wanted = false;
    interrupt();
    answer();
    expect(await p).toBe(true);
    expect(lock.attempts).toBe(1);
  });

  it('gives up at once on an answer that is an error, and after a bounded number of attempts', async () => {
    const clock = new ManualClock();
    const failed = flakyLock(1, () => new TorusError('TORUS_ERR_ETCD_FAILED', 'etcd at x failed unlock: permission denied'));
    expect(await releaseLock(failed, { clock, logger: quiet, session: { leaseDeadline: () => Infinity }, stillWanted: () => true, retryMs: 200, fields: {} })).toBe(false);
    expect(failed.attempts).toBe(1);
    const forever = flakyLock(Number.MAX_SAFE_INTEGER);
    expect(await settle(clock, releaseLock(forever, { clock, logger: quiet, session: { leaseDeadline: () => Infinity }, stillWanted: () => true, retryMs: 200, fields: {} }))).toBe(false);
    expect(forever.attempts).toBe(LOCK_RELEASE_ATTEMPTS_MAX);
  });
});

describe('VolumeExports while etcd does not answer', () => {
  const record = { name: 'v', size: 1024 * 1024 } as VolumeRecord;

  function setup(getVolume: () => Promise<VolumeRecord>, acquire: () => Promise<OpenVolume> = async () => ({ name: 'v', mode: 'rw', volume: { size: record.size } }) as unknown as OpenVolume) {
    const clock = new ManualClock();
    const metadata = { getVolume } as unknown as MetadataService;
    const volumes = { acquire, release: async () => undefined } as unknown as VolumeManager;
    return { clock, exports: new VolumeExports(metadata, volumes, 'rw', { clock, logger: quiet, openRetryMs: 15_000 }) };
  }

  it('opens once etcd answers again within the bound', async () => {
    let calls = 0;
    const { clock, exports } = setup(async () => {
      if (++calls <= 4) throw unavailable();
      return record;
    });
    const exp = await settle(clock, exports.open('v'));
    expect(exp.size).toBe(record.size);
    expect(calls).toBe(5);
  });

  it('retries a lock that lost its races or a session being re-established, too', async () => {
    const errs = [new TorusError('TORUS_ERR_CLUSTER_CONFLICT', 'lost races'), new TorusError('TORUS_ERR_SESSION_LOST', 'lease gone'), new TorusError('TORUS_ERR_TIMEOUT', 'slow')];
    const { clock, exports } = setup(
      async () => record,
      async () => {
        const e = errs.shift();
        if (e) throw e;
        return { name: 'v', mode: 'rw', volume: { size: record.size } } as unknown as OpenVolume;
      },
    );
    expect((await settle(clock, exports.open('v'))).size).toBe(record.size);
  });

  it('a second release waits for the first and answers what it answered: never done sooner, never a hidden failure', async () => {
    const clock = new ManualClock();
    const metadata = { getVolume: async () => record } as unknown as MetadataService;
    let finish!: (err?: Error) => void;
    let releases = 0;
    const release = () => {
      releases++;
      return new Promise<void>((resolve, reject) => (finish = (err) => (err ? reject(err) : resolve())));
    };
    const acquire = async () => ({ name: 'v', mode: 'rw', volume: { size: record.size } }) as unknown as OpenVolume;
    const exports = new VolumeExports(metadata, { acquire, release } as unknown as VolumeManager, 'rw', { clock, logger: quiet });
    const exp = await exports.open('v');
    const first = exp.release();
    let secondDone = false;
    const second = exp.release().finally(() => (secondDone = true));
    await new Promise((r) => setImmediate(r));
    expect(secondDone).toBe(false); // the first is still flushing and letting the lock go
    finish(new TorusError('TORUS_ERR_DATA_LOST', 'a flush lost its last copy'));
    await expect(first).rejects.toMatchObject({ code: 'TORUS_ERR_DATA_LOST' });
    await expect(second).rejects.toMatchObject({ code: 'TORUS_ERR_DATA_LOST' });
    await expect(exp.release()).rejects.toMatchObject({ code: 'TORUS_ERR_DATA_LOST' });
    expect(releases).toBe(1);
  });

  it('gives up with the real error once the bound has passed', async () => {
    const { clock, exports } = setup(async () => {
      throw unavailable();
    });
    const started = clock.monotonic();
    await expect(settle(clock, exports.open('v'))).rejects.toMatchObject({ code: 'TORUS_ERR_ETCD_UNAVAILABLE' });
    expect(clock.monotonic() - started).toBeLessThanOrEqual(15_000 + 100);
    await expect(settle(clock, exports.describe('v'))).rejects.toMatchObject({ code: 'TORUS_ERR_ETCD_UNAVAILABLE' });
  });

  it('takes what etcd answered as final at once: no such volume, held elsewhere', async () => {
    let calls = 0;
    const missing = setup(async () => {
      calls++;
      throw new TorusError('TORUS_ERR_VOLUME_NOT_FOUND', 'no volume "v"');
    });
    await expect(missing.exports.open('v')).rejects.toMatchObject({ code: 'TORUS_ERR_NBD_EXPORT_UNKNOWN' });
    expect(calls).toBe(1);
    const held = setup(
      async () => record,
      async () => {
        calls++;
        throw new TorusError('TORUS_ERR_VOLUME_IN_USE', 'volume "v" is in use by torusd x');
      },
    );
    await expect(held.exports.open('v')).rejects.toMatchObject({ code: 'TORUS_ERR_VOLUME_IN_USE' });
    expect(calls).toBe(2);
  });
});
