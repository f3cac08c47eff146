import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { directReadsSupported, enableDirectReads } from '../../src/util/socket-direct-reads.js';

const servers: net.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A server whose accepted sockets read into `bufs` in turn; resolves with what each read saw. */
async function serve(onSocket: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, onSocket);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

describe('direct socket reads', () => {
  it('are supported by the Node this runs on (the NBD server relies on them for speed)', () => {
    expect(directReadsSupported({})).toBe(true);
    expect(directReadsSupported({ TORUS_DIRECT_READS: '0' })).toBe(false);
  });

  it('land every byte, in order, in the buffers the target hands out; pause stops reading; end is seen', async () => {
    const total = 3 * 1024 * 1024 + 17;
    const sent = Buffer.alloc(total);
    for (let i = 0; i < total; i++) sent[i] = (i * 31 + (i >> 11)) & 0xff;
    const got = Buffer.alloc(total);
    let filled = 0;
    const small = Buffer.alloc(1000);
    let direct = false;
    let ended!: () => void;
    const endSeen = new Promise<void>((r) => (ended = r));
    let sawForeign = false;
    let reads = 0;
    const port = await serve((socket) => {
      direct = enableDirectReads(socket, {
        // Alternate a reused small buffer and a view straight into the destination.
        buffer: () => (filled % 2 === 0 && filled < total ? got.subarray(filled) : small),
        onRead: (n, buf) => {
          if (buf === small) small.copy(got, filled, 0, n);
          else if (buf.buffer !== got.buffer || buf.byteOffset !== filled) sawForeign = true;
          filled += n;
          // Exercise pause/resume with direct reads, now and then.
          if (++reads % 8 === 0) {
            socket.pause();
            setTimeout(() => socket.resume(), 0);
          }
        },
      });
      socket.on('data', () => {
        sawForeign = true; // never with direct reads
      });
      socket.on('end', () => {
        socket.destroy();
        ended();
      });
      socket.resume();
    });
    const client = net.connect(port, '127.0.0.1');
    client.end(sent);
    await endSeen;
    client.destroy();
    expect(direct).toBe(true);
    expect(sawForeign).toBe(false);
    expect(filled).toBe(total);
    expect(got.equals(sent)).toBe(true);
  });
});
