import net from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { addressInUse, listenRetrying } from '../../src/daemon/listen-retry.js';
import { TorusError } from '../../src/errors/torus-error.js';
import { systemClock, type Clock } from '../../src/util/clock.js';

function capture(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

const open: net.Server[] = [];
afterEach(async () => {
  for (const s of open.splice(0)) await new Promise((r) => s.close(() => r(undefined)));
});

/** Listens on 127.0.0.1:port, as the daemon's listeners do (EADDRINUSE wrapped in a TorusError). */
function listenOn(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', (err) => reject(new TorusError('TORUS_ERR_DAEMON_START', `cannot listen on ${port}: ${err.message}`, { cause: err })));
    s.listen({ host: '127.0.0.1', port }, () => {
      open.push(s);
      resolve(s);
    });
  });
}

async function takenPort(): Promise<{ port: number; release: () => Promise<void> }> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen({ host: '127.0.0.1', port: 0 }, () => r()));
  const port = (s.address() as net.AddressInfo).port;
  return { port, release: () => new Promise((r) => s.close(() => r())) };
}

describe('listenRetrying', () => {
  it('binds once the socket that held the port lets it go, with one warning and one line when it is through', async () => {
    const { port, release } = await takenPort();
    const { log, lines } = capture();
    let attempts = 0;
    setTimeout(() => void release(), 300);
    const server = await listenRetrying(
      'peer',
      () => {
        attempts++;
        return listenOn(port);
      },
      { clock: systemClock, log, waitMs: 10_000, everyMs: 50 },
    );
    expect((server.address() as net.AddressInfo).port).toBe(port);
    expect(attempts).toBeGreaterThan(1);
    expect(lines.filter((l) => l['msg'] === 'address in use (another socket holds the port); trying again')).toHaveLength(1);
    expect(lines.filter((l) => l['msg'] === 'listening after the address was freed').map((l) => [l['listener'], l['attempts']])).toEqual([['peer', attempts]]);
  });

  it('gives up with the listen\'s own error once the wait is over', async () => {
    const { port, release } = await takenPort();
    try {
      const { log } = capture();
      // Time moves only by the waits between attempts: the count of attempts is exact.
      let now = 0;
      const clock: Clock = {
        now: () => now,
        monotonic: () => now,
        setTimeout(fn, ms) {
          now += ms;
          queueMicrotask(fn);
          return { cancel: () => undefined };
        },
      };
      let attempts = 0;
      const err = await listenRetrying(
        'nbd',
        () => {
          attempts++;
          return listenOn(port);
        },
        { clock, log, waitMs: 400, everyMs: 100 },
      ).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TorusError);
      expect((err as TorusError).code).toBe('TORUS_ERR_DAEMON_START');
      expect(addressInUse(err)).toBe(true);
      // Tried at 0, 100, 200, 300 and 400 ms; one more wait would pass the 400.
      expect({ attempts, waitedMs: now }).toEqual({ attempts: 5, waitedMs: 400 });
    } finally {
      await release();
    }
  });

  it('does not wait on any other failure', async () => {
    const { log, lines } = capture();
    let attempts = 0;
    const denied = Object.assign(new Error('listen EACCES: permission denied 0.0.0.0:80'), { code: 'EACCES' });
    const err = await listenRetrying(
      'peer',
      () => {
        attempts++;
        return Promise.reject(new TorusError('TORUS_ERR_DAEMON_START', 'cannot listen for peers', { cause: denied }));
      },
      { clock: systemClock, log, waitMs: 10_000, everyMs: 50 },
    ).catch((e: unknown) => e);
    expect(attempts).toBe(1);
    expect((err as TorusError).code).toBe('TORUS_ERR_DAEMON_START');
    expect(lines).toEqual([]);
  });

  it('tells an address in use by the error or by the cause a TorusError wraps', () => {
    const inUse = Object.assign(new Error('in use'), { code: 'EADDRINUSE' });
    expect(addressInUse(inUse)).toBe(true);
    expect(addressInUse(new TorusError('TORUS_ERR_DAEMON_START', 'x', { cause: inUse }))).toBe(true);
    expect(addressInUse(new TorusError('TORUS_ERR_DAEMON_START', 'x'))).toBe(false);
    expect(addressInUse(null)).toBe(false);
    expect(addressInUse('EADDRINUSE')).toBe(false);
  });
});
