import net from 'node:net';
import { Duplex } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import type { PeerAddress } from '../../src/peer/address.js';
import { PeerClient, type PeerClientOptions } from '../../src/peer/client.js';
import { ResponseDecoder, decodeErrorPayload, encodeRequestHeader, type ResponseFrame } from '../../src/peer/codec.js';
import { readHandshakeMessage } from '../../src/peer/handshake-codec.js';
import { ClientHandshake } from '../../src/peer/handshake.js';
import { Opcode, STATUS_ERROR, STATUS_OK } from '../../src/peer/protocol.js';
import { PeerServer, type PeerServerOptions } from '../../src/peer/server.js';
import { crc32c } from '../../src/util/crc32c.js';
import { tcpConnector, type PeerConnector } from '../../src/peer/transport.js';
import type { BlockStore, StoreUsage, WriteOptions, ZeroOptions } from '../../src/store/block-store.js';
import type { Clock } from '../../src/util/clock.js';
import { legacyMemoryStore, type FencingTestStore } from '../helpers/legacy-stores.js';
import { waitFor } from '../helpers/wait.js';

const BS = 4096;
const SECRET = 'cluster secret';
const logger = pino({ level: process.env.PEER_TEST_LOG ?? 'silent' });

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function startServer(store: BlockStore, over: Partial<PeerServerOptions> = {}, port = 0): Promise<{ server: PeerServer; addr: PeerAddress }> {
  const server = new PeerServer({ store, logger, clusterId: 'test-cluster', peerUuid: 'server-uuid', secret: SECRET, ...over });
  const addr = await server.listen('127.0.0.1', port);
  cleanups.push(() => server.close());
  return { server, addr };
}

function makeClient(addr: PeerAddress, over: Partial<PeerClientOptions> = {}): PeerClient {
  const client = new PeerClient({
    address: addr,
    blockSize: BS,
    clusterId: 'test-cluster',
    peerUuid: 'client-uuid',
    secret: SECRET,
    logger,
    requestTimeoutMs: 10_000,
    reconnectDelayMinMs: 10,
    reconnectDelayMaxMs: 100,
    ...over,
  });
  cleanups.push(() => client.close());
  return client;
}

function memStore(blocks = 1024): FencingTestStore {
  return legacyMemoryStore(BS, blocks * BS);
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isTorusError(err) ? err.code : `not a TorusError: ${String(err)}`;
  }
}

/** A store whose writes wait until the test opens the gate; counts what it holds. */
class GatedStore implements BlockStore {
  readonly blockSize: number;
  held = 0;
  heldMax = 0;
  private gate!: Promise<void>;
  private openGate!: () => void;

  constructor(private readonly inner: BlockStore) {
    this.blockSize = inner.blockSize;
    this.close_();
  }

  close_(): void {
    this.gate = new Promise((resolve) => (this.openGate = resolve));
  }

  open(): void {
    this.openGate();
  }

  async write(ref: BlockRef, offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    this.held++;
    this.heldMax = Math.max(this.heldMax, this.held);
    try {
      await this.gate;
    } finally {
      this.held--;
    }
    return this.inner.write(ref, offset, data, opts);
  }
  read(ref: BlockRef, offset: number, length: number): Promise<Buffer> {
    return this.inner.read(ref, offset, length);
  }
  zero(ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void> {
    return this.inner.zero(ref, offset, length, opts);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  allocated(refs: readonly BlockRef[]): Promise<boolean[]> {
    return this.inner.allocated(refs);
  }
  deleteVolume(volumeId: number): Promise<void> {
    return this.inner.deleteVolume(volumeId);
  }
  usage(): StoreUsage {
    return this.inner.usage();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * A test-only transport: TCP underneath, with a hook that may damage the
 * bytes going out (one write() chunk at a time) or coming in.
 */
class TamperingStream extends Duplex {
  constructor(
    private readonly socket: net.Socket,
    private readonly onIn: (chunk: Buffer) => Buffer,
    private readonly onOut: (chunk: Buffer) => Buffer,
  ) {
    super({ allowHalfOpen: false });
    socket.on('data', (d: Buffer) => {
      if (!this.push(this.onIn(d))) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.on('close', () => this.destroy());
  }
  override _read(): void {
    this.socket.resume();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.socket.write(this.onOut(chunk), cb);
  }
  override _final(cb: () => void): void {
    this.socket.end(cb);
  }
  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}

/** Flips one byte, once, in the first chunk of at least minBytes in the chosen direction. */
function flippingConnector(direction: 'in' | 'out', minBytes: number): { connect: PeerConnector; flipped: () => boolean } {
  let done = false;
  const flip = (chunk: Buffer): Buffer => {
    if (done || chunk.length < minBytes) return chunk;
    done = true;
    const copy = Buffer.from(chunk);
    copy[copy.length - 1]! ^= 0x01;
    return copy;
  };
  const same = (c: Buffer): Buffer => c;
  return {
    connect: (addr) => {
      const socket = net.connect({ host: addr.host, port: addr.port });
      return direction === 'in' ? new TamperingStream(socket, flip, same) : new TamperingStream(socket, same, flip);
    },
    flipped: () => done,
  };
}

/** A clock the test moves by hand. */
class ManualClock implements Clock {
  private t = 1_000_000;
  private timers: { at: number; fn: () => void; cancelled: boolean }[] = [];
  now(): number {
    return this.t;
  }
  monotonic(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): { cancel(): void } {
    const timer = { at: this.t + ms, fn, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  }
  advance(ms: number): void {
    this.t += ms;
    const due = this.timers.filter((x) => x.at <= this.t && !x.cancelled);
    this.timers = this.timers.filter((x) => x.at > this.t && !x.cancelled);
    for (const x of due) x.fn();
  }
}

const W = { fua: false };

/** A hand-driven client: handshake by the book, then raw frames, to test what PeerClient never sends. */
async function rawSession(addr: PeerAddress) {
  const socket = net.connect(addr.port, addr.host);
  const decoder = new ResponseDecoder();
  const hs = new ClientHandshake(
    { clusterId: 'test-cluster', peerUuid: 'raw', secret: Buffer.from(SECRET), blockSize: BS },
    Buffer.alloc(32, 9),
  );
  const frames: ResponseFrame[] = [];
  let ready!: () => void;
  const isReady = new Promise<void>((resolve) => (ready = resolve));
  let handshaking = true;
  socket.on('data', (chunk: Buffer) => {
    decoder.push(chunk);
    while (handshaking) {
      const msg = readHandshakeMessage(decoder.queue);
      if (msg === null) return;
      const step = hs.receive(msg);
      for (const out of step.out) socket.write(out);
      if (step.kind === 'done') {
        handshaking = false;
        ready();
      }
    }
    for (let f = decoder.next(); f !== null; f = decoder.next()) frames.push(f);
  });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('error', () => {});
  socket.write(hs.hello());
  await isReady;
  cleanups.push(() => void socket.destroy());
  return {
    socket,
    closed,
    send(bytes: Buffer) {
      socket.write(bytes);
    },
    async reply(requestId: number): Promise<ResponseFrame> {
      return waitFor(`reply ${requestId}`, () => frames.find((f) => f.requestId === requestId), 5000, 5);
    },
  };
}

describe('peer protocol over TCP', () => {
  it('round-trips read, write, zero, flush, allocated, deleteVolume, usage and ping', async () => {
    const store = memStore(16);
    const { addr } = await startServer(store);
    const client = makeClient(addr);
    expect(client.usage()).toEqual({ capacity: 0, used: 0, blocks: 0 });

    const a = blockRef(1, 1, 0);
    const b = blockRef(1, 1, 2 ** 40);
    const c = blockRef(2, 1, 5);
    await client.write(a, 10, Buffer.from('hello peer'), { fua: true, fence: 3 });
    await client.write(b, 0, Buffer.alloc(BS, 0xab), W);
    await client.write(c, BS - 1, Buffer.from([7]), W);
    expect((await client.read(a, 8, 14)).toString('latin1')).toBe('\0\0hello peer\0\0');
    expect(await client.read(b, 0, BS)).toEqual(Buffer.alloc(BS, 0xab));
    expect(await client.read(blockRef(9, 9, 9), 0, 16)).toEqual(Buffer.alloc(16));
    expect(await client.read(a, 0, 0)).toEqual(Buffer.alloc(0));
    expect(store.fenceOf(1)).toBe(3);

    await client.zero(a, 10, 5, { fua: false, punch: false });
    expect((await client.read(a, 10, 10)).toString('latin1')).toBe('\0\0\0\0\0 peer');
    await client.zero(b, 0, BS, { fua: true, punch: true, fence: 3 });
    expect(await client.allocated([a, b, c, blockRef(3, 1, 1)])).toEqual([true, false, true, false]);
    expect(await client.allocated([])).toEqual([]);
    await client.flush();
    await client.ping();

    expect(await client.refreshUsage()).toEqual({ capacity: 16 * BS, used: 2 * BS, blocks: 2 });
    expect(client.usage()).toEqual(store.usage());

    await client.deleteVolume(1);
    expect(await client.allocated([a, c])).toEqual([false, true]);
    expect(await client.refreshUsage()).toEqual({ capacity: 16 * BS, used: BS, blocks: 1 });
  });

  it('usage() refreshes in the background and returns the last value', async () => {
    const store = memStore(8);
    const { addr } = await startServer(store);
    const client = makeClient(addr, { usageRefreshMs: 0 });
    await client.ping(); // connecting also fetches the usage
    await waitFor('first usage', () => client.usage().capacity === 8 * BS);
    await store.write(blockRef(1, 1, 1), 0, Buffer.from('x'), W);
    await waitFor('refreshed usage', () => client.usage().blocks === 1);
  });

  it('splits ALLOCATED lists longer than one request may carry', async () => {
    const store = memStore(4);
    const { addr } = await startServer(store);
    const client = makeClient(addr);
    await client.write(blockRef(1, 1, 70_000), 0, Buffer.from('x'), W);
    const refs = Array.from({ length: 70_001 }, (_, i) => blockRef(1, 1, i));
    const bits = await client.allocated(refs);
    expect(bits.length).toBe(70_001);
    expect(bits.filter(Boolean).length).toBe(1);
    expect(bits[70_000]).toBe(true);
  });

  it('pipelines 500 concurrent writes on one connection, then reads them all back', async () => {
    const store = memStore(1024);
    const { server, addr } = await startServer(store, { inflightMax: 32 });
    const client = makeClient(addr, { inflightMax: 64 });
    const data = (i: number) => Buffer.alloc(BS, i % 251).fill(`block ${i};`, 0, 16);
    await Promise.all(Array.from({ length: 500 }, (_, i) => client.write(blockRef(1, 1, i), 0, data(i), W)));
    expect(server.connectionCount).toBe(1);
    const back = await Promise.all(Array.from({ length: 500 }, (_, i) => client.read(blockRef(1, 1, i), 0, BS)));
    back.forEach((buf, i) => expect(buf.equals(data(i)), `block ${i}`).toBe(true));
    expect(store.usage().blocks).toBe(500);
  });

  it('keeps error codes across the wire: NO_SPACE, FENCED, STORE_CLOSED', async () => {
    const store = memStore(1);
    const { addr } = await startServer(store);
    const client = makeClient(addr);
    await client.write(blockRef(1, 1, 0), 0, Buffer.from('a'), { fua: false, fence: 10 });
    expect(await codeOf(client.write(blockRef(1, 1, 1), 0, Buffer.from('b'), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
    expect(await codeOf(client.write(blockRef(1, 1, 0), 0, Buffer.from('c'), { fua: false, fence: 9 }))).toBe('TORUS_ERR_VOLUME_FENCED');
    expect(await codeOf(client.zero(blockRef(1, 1, 0), 0, BS, { fua: false, punch: true, fence: 2 }))).toBe('TORUS_ERR_VOLUME_FENCED');
    // The connection survives error replies.
    expect((await client.read(blockRef(1, 1, 0), 0, 1)).toString()).toBe('a');
    await store.close();
    expect(await codeOf(client.read(blockRef(1, 1, 0), 0, 1))).toBe('TORUS_ERR_STORE_CLOSED');
  });

  it('answers an invalid request with an error and keeps the connection', async () => {
    const { addr } = await startServer(memStore());
    const raw = await rawSession(addr);
    const none = Buffer.alloc(0);
    raw.send(encodeRequestHeader({ opcode: Opcode.READ, flags: 0, requestId: 5, ref: blockRef(1, 1, 0), offset: BS - 1, length: 2, fence: undefined }, none));
    const bad = await raw.reply(5);
    expect(bad.status).toBe(STATUS_ERROR);
    expect(decodeErrorPayload(bad.payload).code).toBe('TORUS_ERR_IO_OUT_OF_RANGE');
    const hdr = Buffer.from(encodeRequestHeader({ opcode: Opcode.PING, flags: 0, requestId: 6, ref: null, offset: 0, length: 0, fence: undefined }, none));
    hdr[4] = 200; // unknown opcode
    hdr.writeUInt32BE(crc32c(hdr.subarray(0, 52)), 52);
    raw.send(hdr);
    expect(decodeErrorPayload((await raw.reply(6)).payload).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    raw.send(encodeRequestHeader({ opcode: Opcode.PING, flags: 0, requestId: 7, ref: null, offset: 0, length: 0, fence: undefined }, none));
    expect((await raw.reply(7)).status).toBe(STATUS_OK);
  });

  it('closes the connection on a damaged header', async () => {
    const { server, addr } = await startServer(memStore());
    const raw = await rawSession(addr);
    const hdr = Buffer.from(encodeRequestHeader({ opcode: Opcode.PING, flags: 0, requestId: 1, ref: null, offset: 0, length: 0, fence: undefined }, Buffer.alloc(0)));
    hdr[30]! ^= 1;
    raw.send(hdr);
    await raw.closed;
    await waitFor('server to forget the connection', () => server.connectionCount === 0);
  });

  it('takes a precomputed CRC for a write and refuses a wrong one', async () => {
    const store = memStore();
    const { addr } = await startServer(store);
    const client = makeClient(addr);
    const data = Buffer.alloc(BS, 0x5a);
    await client.write(blockRef(1, 1, 0), 0, data, { fua: false, crc32c: crc32c(data) });
    expect(await client.read(blockRef(1, 1, 0), 0, BS)).toEqual(data);
    expect(await codeOf(client.write(blockRef(1, 1, 1), 0, data, { fua: false, crc32c: crc32c(data) ^ 1 }))).toBe('TORUS_ERR_PEER_CHECKSUM');
    expect(await store.allocated([blockRef(1, 1, 1)])).toEqual([false]);
  });

  it('serves several clients at once', async () => {
    const store = memStore();
    const { server, addr } = await startServer(store);
    const clients = [0, 1, 2].map(() => makeClient(addr));
    await Promise.all(clients.map((c, i) => c.write(blockRef(1, 1, i), 0, Buffer.from(`c${i}`), W)));
    expect(server.connectionCount).toBe(3);
    for (const [i, c] of clients.entries()) expect((await c.read(blockRef(1, 1, (i + 1) % 3), 0, 2)).toString()).toBe(`c${(i + 1) % 3}`);
  });

  it('asserts ranges on the client side: they are caller bugs', async () => {
    const client = makeClient({ host: '127.0.0.1', port: 1 });
    expect(() => client.read(blockRef(1, 1, 0), BS, 1)).toThrow(/assertion failed/);
    expect(() => client.write(blockRef(1, 1, 0), 1, Buffer.alloc(BS), W)).toThrow(/assertion failed/);
  });
});

describe('peer authentication', () => {
  it('refuses a client with the wrong secret with TORUS_ERR_PEER_AUTH, and keeps refusing', async () => {
    const store = memStore();
    const { server, addr } = await startServer(store);
    const bad = makeClient(addr, { secret: 'not the secret' });
    expect(await codeOf(bad.ping())).toBe('TORUS_ERR_PEER_AUTH');
    await waitFor('server to drop the connection', () => server.connectionCount === 0);
    const good = makeClient(addr);
    await good.ping();
  });

  it('refuses when only one side has a secret, or the cluster differs', async () => {
    const { addr } = await startServer(memStore());
    expect(await codeOf(makeClient(addr, { secret: '' }).ping())).toBe('TORUS_ERR_PEER_AUTH');
    expect(await codeOf(makeClient(addr, { clusterId: 'other-cluster' }).ping())).toBe('TORUS_ERR_PEER_AUTH');
    const { addr: open } = await startServer(memStore(), { secret: '' });
    expect(await codeOf(makeClient(open).ping())).toBe('TORUS_ERR_PEER_AUTH');
    await makeClient(open, { secret: '' }).ping();
  });

  it('refuses a peer of another block size, or another uuid than expected', async () => {
    const { addr } = await startServer(memStore());
    expect(await codeOf(makeClient(addr, { blockSize: 8192 }).ping())).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(await codeOf(makeClient(addr, { remotePeerUuid: 'someone-else' }).ping())).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    await makeClient(addr, { remotePeerUuid: 'server-uuid' }).ping();
  });

  it('drops a stranger that does not speak the protocol and keeps serving', async () => {
    const { server, addr } = await startServer(memStore());
    const stranger = net.connect(addr.port, addr.host);
    stranger.on('error', () => {});
    const closed = new Promise<void>((resolve) => stranger.on('close', () => resolve()));
    stranger.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await closed;
    await makeClient(addr).ping();
    await waitFor('stranger gone', () => server.connectionCount === 1);
  });
});

describe('peer failures', () => {
  it('fails requests in flight with TORUS_ERR_PEER_UNAVAILABLE when the server dies, and reconnects when it is back', async () => {
    const gated = new GatedStore(memStore());
    const { server, addr } = await startServer(gated);
    const client = makeClient(addr);
    await client.ping();
    const writes = Array.from({ length: 10 }, (_, i) => codeOf(client.write(blockRef(1, 1, i), 0, Buffer.from('x'), W)));
    await waitFor('writes to reach the store', () => gated.held === 10);
    server.abort();
    expect(await Promise.all(writes)).toEqual(Array(10).fill('TORUS_ERR_PEER_UNAVAILABLE'));
    gated.open();

    // While no one listens, requests fail with the same code.
    expect(await codeOf(client.ping())).toBe('TORUS_ERR_PEER_UNAVAILABLE');

    const store2 = memStore();
    await startServer(store2, {}, addr.port);
    await waitFor('client to reconnect', async () => {
      await client.ping();
      return true;
    });
    await client.write(blockRef(1, 1, 0), 0, Buffer.from('back'), W);
    expect((await store2.read(blockRef(1, 1, 0), 0, 4)).toString()).toBe('back');
  });

  it('a payload damaged on its way to the client fails every request on the connection with TORUS_ERR_PEER_CHECKSUM', async () => {
    const inner = memStore();
    await inner.write(blockRef(1, 1, 0), 0, Buffer.alloc(BS, 5), W);
    const gated = new GatedStore(inner);
    const { addr } = await startServer(gated);
    const tamper = flippingConnector('in', 1000);
    const client = makeClient(addr, { connect: tamper.connect });
    await client.ping();
    // Two writes wait in the store while the one big answer, the read's, is damaged.
    const writes = [1, 2].map((i) => codeOf(client.write(blockRef(1, 1, i), 0, Buffer.from('x'), W)));
    await waitFor('writes held', () => gated.held === 2);
    const read = codeOf(client.read(blockRef(1, 1, 0), 0, BS));
    expect(await Promise.all([read, ...writes])).toEqual(Array(3).fill('TORUS_ERR_PEER_CHECKSUM'));
    expect(tamper.flipped()).toBe(true);
    gated.open();
    // A fresh connection (the tamperer flips only once) works again.
    await waitFor('client to reconnect', async () => (await client.read(blockRef(1, 1, 0), 0, BS)).equals(Buffer.alloc(BS, 5)));
  });

  it('a payload damaged on its way to the server is refused with TORUS_ERR_PEER_CHECKSUM and not stored', async () => {
    const store = memStore();
    const { addr } = await startServer(store);
    const tamper = flippingConnector('out', BS);
    const client = makeClient(addr, { connect: tamper.connect });
    await client.ping();
    expect(await codeOf(client.write(blockRef(1, 1, 0), 0, Buffer.alloc(BS, 9), W))).toBe('TORUS_ERR_PEER_CHECKSUM');
    expect(tamper.flipped()).toBe(true);
    expect(await store.allocated([blockRef(1, 1, 0)])).toEqual([false]);
    await waitFor('client to reconnect', async () => {
      await client.write(blockRef(1, 1, 0), 0, Buffer.alloc(BS, 9), W);
      return true;
    });
    expect(await store.read(blockRef(1, 1, 0), 0, BS)).toEqual(Buffer.alloc(BS, 9));
  });

  it('times a request out with TORUS_ERR_TIMEOUT', async () => {
    const gated = new GatedStore(memStore());
    const { addr } = await startServer(gated);
    const client = makeClient(addr, { requestTimeoutMs: 150 });
    await client.ping();
    expect(await codeOf(client.write(blockRef(1, 1, 0), 0, Buffer.from('x'), W))).toBe('TORUS_ERR_TIMEOUT');
    // The late answer is ignored and the connection still serves.
    gated.open();
    await client.ping();
    expect(client.inflightCount).toBe(0);
  });

  it('bounds the wait queue: beyond it requests fail with TORUS_ERR_STORE_BUSY', async () => {
    const gated = new GatedStore(memStore());
    const { addr } = await startServer(gated);
    const client = makeClient(addr, { inflightMax: 2, waitQueueMax: 3 });
    await client.ping();
    await waitFor('the usage fetched on connect', () => client.inflightCount === 0);
    const writes = Array.from({ length: 5 }, (_, i) => client.write(blockRef(1, 1, i), 0, Buffer.from('x'), W));
    expect(await codeOf(client.write(blockRef(1, 1, 9), 0, Buffer.from('x'), W))).toBe('TORUS_ERR_STORE_BUSY');
    await waitFor('two writes in the store', () => gated.held === 2);
    expect(client.inflightCount).toBe(2);
    gated.open();
    await Promise.all(writes);
    expect(gated.heldMax).toBe(2);
  });

  it('the server handles at most inflightMax requests of a connection at once', async () => {
    const gated = new GatedStore(memStore());
    const { addr } = await startServer(gated, { inflightMax: 4 });
    const client = makeClient(addr);
    const writes = Array.from({ length: 40 }, (_, i) => client.write(blockRef(1, 1, i), 0, Buffer.alloc(BS, 1), W));
    await waitFor('four writes in the store', () => gated.held === 4);
    // A ping queued behind the held writes is not read until a slot frees.
    let pinged = false;
    const ping = client.ping().then(() => (pinged = true));
    await new Promise((r) => setImmediate(r));
    expect(pinged).toBe(false);
    gated.open();
    await Promise.all([...writes, ping]);
    expect(gated.heldMax).toBe(4);
  });

  it('close() answers the requests in flight before closing', async () => {
    const gated = new GatedStore(memStore());
    const { server, addr } = await startServer(gated);
    const client = makeClient(addr);
    const writes = Array.from({ length: 5 }, (_, i) => client.write(blockRef(1, 1, i), 0, Buffer.from('x'), W));
    await waitFor('writes held', () => gated.held === 5);
    const closing = server.close();
    gated.open();
    await Promise.all(writes);
    await closing;
    expect(server.connectionCount).toBe(0);
  });

  it('backs off after a failed connection, on the injected clock', async () => {
    // A port nobody listens on: take one and close it.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));

    const clock = new ManualClock();
    let attempts = 0;
    const connect: PeerConnector = (addr) => {
      attempts++;
      return tcpConnector(addr);
    };
    const client = makeClient({ host: '127.0.0.1', port }, { clock, connect, reconnectDelayMinMs: 100, reconnectDelayMaxMs: 400 });
    expect(await codeOf(client.ping())).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(1);
    // Within the backoff requests fail at once, without dialling.
    expect(await codeOf(client.ping())).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(1);
    clock.advance(100);
    expect(await codeOf(client.ping())).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(2);
    // The delay doubled: 100 ms is not enough now, 200 is.
    clock.advance(100);
    expect(await codeOf(client.ping())).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(2);
    clock.advance(100);
    await codeOf(client.ping());
    expect(attempts).toBe(3);
    // Bounded: never more than reconnectDelayMaxMs.
    for (let i = 0; i < 5; i++) {
      clock.advance(400);
      await codeOf(client.ping());
    }
    expect(attempts).toBe(8);
  });
});
