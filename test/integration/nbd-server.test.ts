/** The TCP listener: address, connection limit and clean shutdown. */
import net from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { MemoryExportProvider } from '../../src/nbd/memory-export.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import { NbdTestClient } from '../helpers/nbd-test-client.js';
import { waitFor } from '../helpers/wait.js';

const servers: NbdServer[] = [];
let logs: Array<Record<string, unknown>> = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
  logs = [];
});

function makeServer(over: Partial<NbdServerOptions> = {}): { server: NbdServer; provider: MemoryExportProvider } {
  const provider = new MemoryExportProvider([{ name: 'disk', size: 1024 * 1024 }]);
  const logger = pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l) as Record<string, unknown>) });
  const server = new NbdServer({ provider, logger, ...over });
  servers.push(server);
  return { server, provider };
}

/** Resolves true if the server closes the socket without sending anything. */
function closedWithoutGreeting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    let got = 0;
    s.on('data', (d: Buffer) => {
      got += d.length;
    });
    s.on('error', () => {
      // reset by the server is fine
    });
    s.on('close', () => resolve(got === 0));
  });
}

describe('NbdServer', () => {
  it('listens on port 0, reports its address and refuses a second listen', async () => {
    const { server } = makeServer();
    const addr = await server.listen('127.0.0.1', 0);
    expect(addr.host).toBe('127.0.0.1');
    expect(addr.port).toBeGreaterThan(0);
    expect(server.address()).toEqual(addr);
    await expect(server.listen('127.0.0.1', 0)).rejects.toThrow(/already listening/);
    expect(logs.some((l) => l.msg === 'nbd server listening' && l.module === 'nbd' && l.port === addr.port)).toBe(true);
  });

  it('fails with TORUS_ERR_DAEMON_START when the port is taken', async () => {
    const { server: first } = makeServer();
    const { port } = await first.listen('127.0.0.1', 0);
    const { server: second } = makeServer();
    const err = await second.listen('127.0.0.1', port).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_DAEMON_START')).toBe(true);
    expect(logs.filter((l) => l.level === 50)).toEqual([]);
    expect(() => second.address()).toThrow(/not listening/);
  });

  it('refuses connections beyond connectionsMax and accepts again when one leaves', async () => {
    const { server } = makeServer({ connectionsMax: 2 });
    const { port } = await server.listen('127.0.0.1', 0);
    const a = await NbdTestClient.tcp(port);
    const b = await NbdTestClient.tcp(port);
    expect(server.connectionCount).toBe(2);
    expect(await closedWithoutGreeting(port)).toBe(true);
    expect(logs.some((l) => l.msg === 'nbd connection refused' && l.level === 40)).toBe(true);
    a.close();
    await waitFor('a slot to free up', () => server.connectionCount === 1, 5000);
    const c = await NbdTestClient.tcp(port);
    await c.go('disk');
    await c.write(0, Buffer.from('ok'));
    b.close();
    c.close();
  });

  it('close() answers in-flight requests, closes every connection and stops accepting', async () => {
    const { server, provider } = makeServer();
    const { port } = await server.listen('127.0.0.1', 0);
    const idle = await NbdTestClient.tcp(port); // still handshaking
    const busy = await NbdTestClient.tcp(port);
    await busy.go('disk');
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let entered = false;
    provider.disk('disk').interceptor = async (op) => {
      if (op !== 'read') return;
      entered = true;
      await gate;
    };
    const read = busy.request({ type: 0, offset: 0, length: 512 });
    await waitFor('read in the export', () => entered, 5000);
    const closing = server.close();
    await idle.reader.closed;
    release();
    expect((await read).error).toBe(0);
    await waitFor('server half-close', () => busy.reader.atEnd, 5000);
    busy.stream.end();
    await closing;
    expect(server.connectionCount).toBe(0);
    expect(provider.releases).toBe(provider.opens);
    const refused = await new Promise<string>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' });
      s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      s.on('connect', () => {
        s.destroy();
        resolve('connected');
      });
    });
    expect(refused).toBe('ECONNREFUSED');
    await server.close(); // idempotent
  });

  it('stops reading requests while replies pile up unread (replyBytesMax), and catches up', async () => {
    // Only replyBytesMax can stop this client: the in-flight limits are out of the way.
    const { server, provider } = makeServer({ replyBytesMax: 256 * 1024, inflightMax: 1000, inflightBytesMax: 1024 * 1024 * 1024, serverInflightBytesMax: 1024 * 1024 * 1024 });
    const { port } = await server.listen('127.0.0.1', 0);
    const c = await NbdTestClient.tcp(port);
    await c.go('disk');
    c.stream.pause(); // a client that does not read its replies
    const len = 256 * 1024;
    const reads = () => provider.disk('disk').stats.reads;
    const batch = () => Array.from({ length: 100 }, (_, i) => c.request({ type: 0, offset: (i % 4) * len, length: len }));
    /** Waits until the server stops taking requests, and returns how many it took. */
    const settled = async (): Promise<number> => {
      let last = -1;
      let stable = 0;
      await waitFor(
        'the request count to settle',
        async () => {
          await new Promise((r) => setTimeout(r, 10));
          const now = reads();
          stable = now === last ? stable + 1 : 0;
          last = now;
          return stable >= 10;
        },
        10_000,
        0,
      );
      return last;
    };
    // 25 MiB of replies per batch: more than loopback socket buffers hold.
    const first = batch();
    const taken = await settled();
    const second = batch();
    const takenAfter = await settled();
    expect(takenAfter).toBe(taken);
    expect(takenAfter).toBeLessThan(200);
    c.stream.resume();
    const replies = await Promise.all([...first, ...second]);
    expect(replies.every((r) => r.error === 0 && r.data!.length === len)).toBe(true);
    expect(reads()).toBe(200);
    await c.disconnect();
  });

  it('close() is bounded when an export call never settles', async () => {
    const { server, provider } = makeServer({ closeTimeoutMs: 200 });
    const { port } = await server.listen('127.0.0.1', 0);
    const c = await NbdTestClient.tcp(port);
    await c.go('disk');
    let entered = false;
    provider.disk('disk').interceptor = () => {
      entered = true;
      return new Promise<void>(() => {});
    };
    const read = c.request({ type: 0, offset: 0, length: 512 });
    read.catch(() => {
      // the connection is dropped; the reply never comes
    });
    await waitFor('read in the export', () => entered, 5000);
    const started = Date.now();
    await server.close();
    expect(Date.now() - started).toBeLessThan(5000);
    await c.reader.closed;
    expect(logs.some((l) => l.msg === 'nbd connection did not close in time; dropping it')).toBe(true);
  });
});
