/**
 * End to end, on a real torusd: a listener port held by another socket at
 * start (a port in Linux's ephemeral range, as the peer default 40000 is,
 * may be any outgoing connection's local port while torusd is down). The
 * start waits for it, says so once, and comes up when it is freed, rather
 * than exiting with EADDRINUSE (src/daemon/listen-retry.ts). The peer, NBD
 * and HTTP listeners all do.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { freePort } from '../helpers/ports.js';
import { startTorusd, type TorusdHandle } from '../helpers/torusd.js';

let etcd: EtcdHandle | undefined;
let peer: TorusdHandle | undefined;
let second: TorusdHandle | undefined;

beforeAll(async () => {
  ensureBuilt();
  etcd = await startEtcd();
}, 60_000);

afterAll(async () => {
  await peer?.destroy();
  await second?.destroy();
  await etcd?.stop();
});

/**
 * Starts a torusd (through `start`) while another socket holds `port` for
 * 2 s; fails unless the start returned after the port was freed.
 */
async function startWithPortHeld(port: number, start: () => Promise<TorusdHandle>): Promise<TorusdHandle> {
  const holder = net.createServer();
  await new Promise<void>((r) => holder.listen({ host: '127.0.0.1', port }, () => r()));
  const freedAt = Date.now() + 2_000;
  const release = setTimeout(() => holder.close(), 2_000);
  let started: TorusdHandle;
  try {
    started = await start();
  } finally {
    clearTimeout(release);
    holder.close();
  }
  expect(Date.now()).toBeGreaterThanOrEqual(freedAt);
  return started;
}

const WAITING = 'address in use (another socket holds the port); trying again';

describe('a listener port in use at start', () => {
  it('is waited for: torusd comes up once the socket holding its NBD port lets go, with one warning', async () => {
    const port = await freePort();
    peer = await startWithPortHeld(port, () => startTorusd({ etcd: etcd!.endpoint, nbdPort: port }));
    const lines = peer.lines();
    expect(lines.filter((l) => l.msg === WAITING).map((l) => l['listener'])).toEqual(['nbd']);
    expect(lines.some((l) => l.msg === 'listening after the address was freed' && l['listener'] === 'nbd')).toBe(true);
    expect(lines.filter((l) => l.msg === 'torusd ready').map((l) => l['nbd'])).toEqual([`127.0.0.1:${port}`]);
  }, 60_000);

  it('is waited for on the HTTP port too: a fastify listen that failed with EADDRINUSE binds when tried again', async () => {
    const port = await freePort();
    second = await startWithPortHeld(port, () => startTorusd({ etcd: etcd!.endpoint, extraArgs: ['--port', String(port)] }));
    const lines = second.lines();
    expect(lines.filter((l) => l.msg === WAITING).map((l) => l['listener'])).toEqual(['http']);
    expect(lines.filter((l) => l.msg === 'torusd ready').map((l) => l['http'])).toEqual([`127.0.0.1:${port}`]);
    const res = await fetch(`${second.httpUrl}/metrics`);
    expect(res.status).toBe(200);
  }, 60_000);
});
