/**
 * torusd when etcd stops answering (the process is frozen with SIGSTOP): an
 * open NBD connection reads and writes as before while the lease may still
 * be alive; past its deadline another writer could hold the volume, so
 * reads and writes are refused (EIO) rather than risk overlapping with it
 * or returning data older than its writes (docs/replication.md, guarantee
 * 6); when etcd is back, torusd takes a new lease and the lock again (a
 * newer token) and I/O resumes on the same connection. Then, with etcd
 * frozen for a few seconds (well within the lease): a client that hangs up
 * leaves no lock behind (the unlock is tried again until etcd answers), and
 * a client that connects meanwhile is served once etcd is back. Last, a
 * stop while etcd does not answer ends within a few call timeouts. Takes
 * about 60 s: the lease TTL is 30 s and no test may shorten waiting for it
 * with a sleep.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { nbdConnect, startTorusd, torusctlOk, volumeList, type TorusdHandle } from '../helpers/torusd.js';
import { waitFor } from '../helpers/wait.js';

let etcd: EtcdHandle | undefined;
let d: TorusdHandle | undefined;
let frozen = false;

beforeAll(async () => {
  ensureBuilt();
  etcd = await startEtcd();
  d = await startTorusd({ etcd: etcd.endpoint, size: '1GiB' });
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'pad', '64MiB']);
});

afterAll(async () => {
  if (frozen) etcd?.process.kill('SIGCONT');
  await d?.destroy();
  await etcd?.stop();
});

describe('etcd outage', () => {
  it('I/O goes on within the lease, stops at its deadline, and resumes when etcd is back', async () => {
    const c = await nbdConnect(d!.nbdPort, 'pad');
    const A = Buffer.alloc(4096, 0xa1);
    const B = Buffer.alloc(4096, 0xb2);
    const C = Buffer.alloc(4096, 0xc3);
    await c.write(0, A);
    expect((await c.flush()).error).toBe(0);

    etcd!.process.kill('SIGSTOP');
    frozen = true;
    // Within the lease: the daemon serves as before.
    await c.write(4096, B);
    expect((await c.flush()).error).toBe(0);
    expect((await c.read(0, 4096)).equals(A)).toBe(true);

    // Past the lease deadline another writer could hold the lock: torusd must
    // have stopped writing by then, and says so.
    await d!.waitForLog('the lease to be given up', (l) => String(l.msg).startsWith('etcd session lost'), 45_000);
    await expect(c.write(8192, C)).rejects.toThrow(/write failed with 5\b/);
    await expect(c.read(4096, 4096)).rejects.toThrow(/read failed with 5\b/);

    etcd!.process.kill('SIGCONT');
    frozen = false;
    await d!.waitForLog('a new etcd session', (l) => l.msg === 'etcd session re-established', 30_000);
    await waitFor('writes to resume on the same connection', async () => c.write(8192, C).then(() => true, () => false), 15_000);
    expect((await c.flush()).error).toBe(0);
    expect((await c.read(0, 3 * 4096)).equals(Buffer.concat([A, B, C]))).toBe(true);
    c.close();
  }, 120_000);

  it('a client that hangs up while etcd does not answer leaves no lock behind, and one that connects meanwhile gets the volume once etcd answers', async () => {
    await waitFor('pad to be free', async () => (await volumeList(etcd!.endpoint)).get('pad')?.status === 'free', 15_000, 250);
    const c1 = await nbdConnect(d!.nbdPort, 'pad');
    const D = Buffer.alloc(4096, 0xd4);
    await c1.write(3 * 4096, D);
    expect((await c1.flush()).error).toBe(0);

    etcd!.process.kill('SIGSTOP');
    frozen = true;
    const since = Date.now();
    // Its lock cannot be released now: the unlock times out (5 s) and is
    // tried again, on a lease that lives on (30 s TTL).
    await c1.disconnect();
    const c2 = nbdConnect(d!.nbdPort, 'pad');
    c2.catch(() => undefined);
    await d!.waitForLog('the unlock to fail and be retried', (l) => l.msg === 'releasing the volume lock failed; retrying while etcd is unreachable' && Number(l.time) >= since, 20_000);
    etcd!.process.kill('SIGCONT');
    frozen = false;

    // The client that connected during the outage is served once etcd is back
    // (not told the export does not exist), and sees what c1 wrote.
    const w = await c2;
    expect((await w.read(3 * 4096, 4096)).equals(D)).toBe(true);
    await w.disconnect();
    // Nothing holds the volume any more: no lock was left on torusd's lease.
    await waitFor('pad to be free again', async () => (await volumeList(etcd!.endpoint)).get('pad')?.status === 'free', 15_000, 250);
    await d!.waitForLog('the unlock to succeed once etcd answered', (l) => l.msg === 'volume lock released after etcd answered again' && Number(l.time) >= since, 5_000);
  }, 120_000);

  it('a torusd told to stop while etcd does not answer exits cleanly within a few etcd call timeouts', async () => {
    const c = await nbdConnect(d!.nbdPort, 'pad');
    await c.write(0, Buffer.alloc(4096, 0xe5));
    expect((await c.flush()).error).toBe(0);
    etcd!.process.kill('SIGSTOP');
    frozen = true;
    const since = Date.now();
    // The client's hang-up closes the volume, whose unlock etcd does not
    // answer; the stop begins while that unlock waits to be tried again.
    await c.disconnect();
    await d!.waitForLog('the unlock to fail', (l) => l.msg === 'releasing the volume lock failed; retrying while etcd is unreachable' && Number(l.time) >= since, 20_000);
    const t0 = Date.now();
    const st = await d!.kill('SIGTERM');
    const ms = Date.now() - t0;
    expect(st.code, d!.tail()).toBe(0);
    // Each etcd call gives up after 5 s; the stop makes at most two rounds
    // of them (the watches' cancels and the lease's revoke side by side).
    // Before 2026-12-07 the unlock's retries held the NBD server's close for
    // 20 s and the node's stop waited for each watch in turn: 35 s in all.
    expect(ms, d!.tail()).toBeLessThan(15_000);
    expect(d!.lines().some((l) => l.msg === 'nbd session did not finish closing in time; abandoning it')).toBe(false);
  }, 60_000);
});
