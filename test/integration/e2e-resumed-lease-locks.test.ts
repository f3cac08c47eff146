/**
 * A torusd killed while it had a kernel device attached and an NBD client
 * on another volume: the next run resumes the lease (the device's lock lives
 * on it) and keeps it alive, so the NBD client's lock, also on that lease,
 * would hold its volume for as long as the new run lives. The new run lets
 * go of every lock the earlier one left on the lease that it did not take
 * back (src/metadata/earlier-run-locks.ts).
 *
 * This machine has no kernel nbd driver, so the earlier run's device is
 * written into attachments.json by the test, as the attach API writes it
 * (formatState): the new run resumes the lease for it, finds no nbd netlink
 * interface and lets that device's lock go (attach-manager.ts), which is
 * the path a device detached while torusd was down takes. The real device
 * path is in the VM suite (test/vm).
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatState, STATE_FILE_NAME } from '../../src/attach/state-file.js';
import { readLeaseFile } from '../../src/daemon/identity.js';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { nbdConnect, startTorusd, torusctlOk, volumeList, type TorusdHandle } from '../helpers/torusd.js';
import { waitFor } from '../helpers/wait.js';

let etcd: EtcdHandle | undefined;
let d: TorusdHandle | undefined;

beforeAll(async () => {
  ensureBuilt();
  etcd = await startEtcd();
  d = await startTorusd({ etcd: etcd.endpoint, size: '1GiB' });
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'dev', '64MiB']);
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'served', '64MiB']);
});

afterAll(async () => {
  await d?.destroy();
  await etcd?.stop();
});

describe('locks an earlier run left on a resumed lease', () => {
  it('are let go by the next run, which keeps the lease for its devices', async () => {
    // The earlier run: an NBD client writing "served", and a device of "dev".
    const c = await nbdConnect(d!.nbdPort, 'served');
    const data = Buffer.alloc(4096, 0x5e);
    await c.write(0, data);
    expect((await c.flush()).error).toBe(0);
    const devLock = await nbdConnect(d!.nbdPort, 'dev');
    const held = await volumeList(etcd!.endpoint);
    expect(held.get('served')?.status).not.toBe('free');
    expect(held.get('dev')?.status).not.toBe('free');
    const lease = await readLeaseFile(d!.dataDir);
    expect(lease).toMatch(/^[0-9]+$/);
    const token = held.get('dev')?.lockToken;
    expect(token).toBeGreaterThan(0);
    await writeFile(
      path.join(d!.dataDir, STATE_FILE_NAME),
      formatState({
        leaseId: lease,
        attachments: [{ index: 0, volume: 'dev', mode: 'rw', token: token!, sizeBytes: 64 * 1024 * 1024, timeoutSeconds: 30, deadConnTimeoutSeconds: 120, backend: 'torus-test', attachedAt: new Date().toISOString() }],
      }),
    );
    await d!.kill('SIGKILL');
    c.close();
    devLock.close();

    // The next run resumes the lease (alive for its 30 s TTL) and keeps it.
    await d!.restart();
    expect(d!.lines().some((l) => l.msg === 'session resumed')).toBe(true);
    // Free once the run is ready, not after the lease: this run keeps it
    // alive, so before 2026-12-07 "served" stayed in use until it stopped.
    await waitFor('the earlier run\'s lock of "served" to be let go', async () => (await volumeList(etcd!.endpoint)).get('served')?.status === 'free', 10_000, 250);
    expect((await volumeList(etcd!.endpoint)).get('dev')?.status).toBe('free');
    const looked = await d!.waitForLog('the look for locks left on the lease', (l) => l.msg === 'looked for locks the previous run left on the resumed lease', 5_000);
    expect(looked.locks).toBe(1);
    expect(d!.lines().filter((l) => l.msg === 'let go of a lock the earlier run left on the resumed lease').map((l) => String(l.key))).toEqual([expect.stringMatching(/volume-locks\//)]);
    const again = await nbdConnect(d!.nbdPort, 'served');
    expect((await again.read(0, 4096)).equals(data)).toBe(true);
    await again.disconnect();
    await waitFor('served to be free after its client left', async () => (await volumeList(etcd!.endpoint)).get('served')?.status === 'free', 15_000, 250);
  }, 120_000);
});
