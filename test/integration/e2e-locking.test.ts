/**
 * End to end volume locking across processes: torusd holds a volume for a
 * client, `torusblk nbdserve` in another process is refused as a writer (the
 * holder is named) but may read with --read-only; torusctl shows and
 * respects the lock; a deleted volume's space is freed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as P from '../../src/nbd/protocol.js';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { run } from '../helpers/nbd-exec.js';
import type { NbdTestClient } from '../helpers/nbd-test-client.js';
import {
  nbdConnect,
  qemuIo,
  qemuIoOk,
  startTorusblkServe,
  startTorusd,
  torusctl,
  torusctlOk,
  torusdStatus,
  volumeList,
  type TorusblkServeHandle,
  type TorusdHandle,
} from '../helpers/torusd.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const ONE_ERROR_LINE = /^torusctl: [^\n]+ \((TORUS_ERR_[A-Z_]+)\)\n$/;

let etcd: EtcdHandle | undefined;
let d: TorusdHandle;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  requireTool('nbdinfo', 'libnbd-bin');
  requireTool('qemu-io', 'qemu-utils');
  ensureBuilt();
  etcd = await startEtcd();
  d = await startTorusd({ etcd: etcd.endpoint, size: '2GiB' });
  await torusctlOk(etcd.endpoint, ['volume', 'create-block', 'pad', '1GiB']);
});

afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  await d?.destroy();
  await etcd?.stop();
});

function track<T extends { stop(): Promise<unknown> }>(x: T): T {
  cleanups.push(() => x.stop());
  return x;
}

describe('one writer per volume', () => {
  let holder: NbdTestClient | null = null;
  let rw: TorusblkServeHandle;
  let ro: TorusblkServeHandle;
  const holderName = () => `torusd ${d.uuid}`;

  it('a client of torusd holds pad: volume list says in-use, by torusd', async () => {
    holder = await nbdConnect(d.nbdPort, 'pad');
    cleanups.push(async () => holder?.close());
    await holder.write(0, Buffer.alloc(MiB, 0x77));
    await holder.write(5 * MiB + 123, Buffer.alloc(4000, 0x78));
    expect((await holder.flush()).error).toBe(0);

    const v = (await volumeList(etcd!.endpoint)).get('pad');
    expect(v?.status).toBe('in-use');
    expect(v?.holder).toContain(holderName());
    expect(v?.holder).toContain(`(pid ${d.pid})`);
  });

  it('torusblk nbdserve in another process is refused as a writer, naming the holder', async () => {
    rw = track(await startTorusblkServe({ etcd: etcd!.endpoint }));

    const info = await run('nbdinfo', [rw.nbdUri('pad')], { env: { ...process.env, LIBNBD_DEBUG: '1' } });
    expect(info.code).not.toBe(0);
    // nbdinfo prints the server's message only in its debug output.
    expect(info.stderr).toContain('TORUS_ERR_VOLUME_IN_USE');
    expect(info.stderr).toContain(holderName());

    const q = await qemuIo(rw.nbdUri('pad'), ['read 0 512']);
    expect(q.code).not.toBe(0);
    expect(q.stderr).toMatch(new RegExp(`server reported: TORUS_ERR_VOLUME_IN_USE: volume "pad" is in use by ${holderName()}`));

    const refused = await rw.waitForLog('torusblk logging the refusal', (l) => l.msg === 'nbd export refused');
    expect(JSON.stringify(refused)).toContain(holderName());
    // The refused opens left no lock behind: torusd still holds it.
    expect((await volumeList(etcd!.endpoint)).get('pad')?.holder).toContain(holderName());
  });

  it('torusblk nbdserve --read-only serves the flushed data beside the writer and refuses writes', async () => {
    ro = track(await startTorusblkServe({ etcd: etcd!.endpoint, readOnly: true }));

    const info = await run('nbdinfo', ['--json', ro.nbdUri('pad')]);
    expect(info.code, info.stderr).toBe(0);
    const e = (JSON.parse(info.stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
    expect(e).toMatchObject({ 'export-name': 'pad', 'export-size': 1024 * MiB, is_read_only: true });

    await qemuIoOk(ro.nbdUri('pad'), ['read -P 0x77 0 1M', `read -P 0 ${MiB} ${4 * MiB + 123}`, `read -P 0x78 ${5 * MiB + 123} 4000`], { readOnly: true });

    // qemu-io asking for write access is turned away at open...
    const q = await qemuIo(ro.nbdUri('pad'), ['write -P 1 0 512']);
    expect(q.code).not.toBe(0);
    expect(q.stdout + q.stderr).toMatch(/Permission denied|read-only|read only/i);
    // ...and a raw write on a read-only connection gets EPERM.
    const c = await nbdConnect(ro.port, 'pad');
    try {
      expect((await c.request({ type: P.CMD_WRITE, offset: 0, data: Buffer.alloc(512, 1) })).error).toBe(P.NBD_EPERM);
      expect((await c.request({ type: P.CMD_TRIM, offset: 0, length: MiB })).error).not.toBe(0);
      expect((await c.read(0, 512)).equals(Buffer.alloc(512, 0x77))).toBe(true);
    } finally {
      await c.disconnect();
    }
    // The read-only gateway took no lock.
    expect((await volumeList(etcd!.endpoint)).get('pad')?.holder).toContain(holderName());
  });

  it('torusctl volume delete is refused while pad is in use', async () => {
    const r = await torusctl(etcd!.endpoint, ['volume', 'delete', 'pad']);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe('');
    const m = ONE_ERROR_LINE.exec(r.stderr);
    expect(m, r.stderr).not.toBeNull();
    expect(m![1]).toBe('TORUS_ERR_VOLUME_IN_USE');
    expect(r.stderr).toContain(holderName());
    expect((await volumeList(etcd!.endpoint)).has('pad')).toBe(true);
  });

  it('once the client hangs up pad is free, and the other process may write it', async () => {
    await holder!.disconnect();
    holder = null;
    await waitFor('pad to be free', async () => (await volumeList(etcd!.endpoint)).get('pad')?.status === 'free', 10_000);
    await waitFor('torusd to close pad', async () => (await torusdStatus(d)).openVolumes.length === 0, 10_000);

    // The same torusblk that was refused now writes (and releases on hang-up).
    await qemuIoOk(rw.nbdUri('pad'), [`write -P 0x79 ${2 * MiB} 4096`, 'flush']);
    await waitFor('pad to be free again', async () => (await volumeList(etcd!.endpoint)).get('pad')?.status === 'free', 10_000);
    // torusd sees that write (its blocks are the ones torusblk wrote, over the peer protocol).
    await qemuIoOk(d.nbdUri('pad'), [`read -P 0x79 ${2 * MiB} 4096`, 'read -P 0x77 0 1M']);
    await waitFor('pad to be free once more', async () => (await volumeList(etcd!.endpoint)).get('pad')?.status === 'free', 10_000);
    await rw.stop();
    await ro.stop();
  });

  it('delete is allowed once free, and torusd frees the blocks at once', async () => {
    const usedBefore = (await torusdStatus(d)).used;
    expect(usedBefore).toBeGreaterThanOrEqual(2 * MiB);
    const id = (await volumeList(etcd!.endpoint)).get('pad')!.id;

    const r = await torusctl(etcd!.endpoint, ['volume', 'delete', 'pad']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('deleted volume "pad"');
    expect((await volumeList(etcd!.endpoint)).has('pad')).toBe(false);
    const gone = await run('nbdinfo', [d.nbdUri('pad')]);
    expect(gone.code).not.toBe(0);

    // torusd watches volume deletions: the newest (here the only) volume's
    // blocks go at once, without a restart or the 30 s periodic pass.
    await d.waitForLog('torusd freeing pad\'s blocks', (l) => l.msg === 'freeing the blocks of a deleted volume' && l.volumeId === id, 20_000);
    await waitFor('the space to be freed', async () => (await torusdStatus(d)).used <= usedBefore - 2 * MiB, 20_000);
  });
});
