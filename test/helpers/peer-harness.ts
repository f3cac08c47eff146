/**
 * Pieces shared by the peer protocol suites: a server and clients on
 * loopback with test settings, a hand-driven session that speaks raw frames
 * after a real handshake, a stream that damages bytes on purpose, and a
 * logger whose lines a test can count.
 */
import net from 'node:net';
import { Duplex } from 'node:stream';
import pino, { type Logger } from 'pino';
import { isTorusError } from '../../src/errors/torus-error.js';
import type { ReplicaApi } from '../../src/model/replica-api.js';
import type { PeerAddress } from '../../src/peer/address.js';
import { PeerClient, type PeerClientOptions } from '../../src/peer/client.js';
import { ResponseDecoder, type ResponseFrame } from '../../src/peer/codec.js';
import { readHandshakeMessage } from '../../src/peer/handshake-codec.js';
import { ClientHandshake } from '../../src/peer/handshake.js';
import { PeerServer, type PeerServerOptions } from '../../src/peer/server.js';
import type { PeerConnector } from '../../src/peer/transport.js';
import { waitFor } from './wait.js';

export const SECRET = 'cluster secret';
export const CLUSTER = 'test-cluster';
export const SERVER_UUID = 'server-uuid';

export const quietLogger = pino({ level: process.env.PEER_TEST_LOG ?? 'silent' });

/** A logger that keeps its lines so a test can count warnings. */
export function recordingLogger(): { logger: Logger; lines: { level: number; msg: string; [k: string]: unknown }[]; warns(msg?: string): number } {
  const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { logger, lines, warns: (msg) => lines.filter((l) => l.level === 40 && (msg === undefined || l.msg === msg)).length };
}

/** Registers cleanups run after each test, last first. */
export class Cleanups {
  private fns: (() => Promise<void> | void)[] = [];
  add(fn: () => Promise<void> | void): void {
    this.fns.push(fn);
  }
  async run(): Promise<void> {
    for (const fn of this.fns.splice(0).reverse()) await fn();
  }
}

export async function startServer(
  cleanups: Cleanups,
  api: ReplicaApi,
  blockSize: number,
  over: Partial<PeerServerOptions> = {},
  port = 0,
): Promise<{ server: PeerServer; addr: PeerAddress }> {
  const server = new PeerServer({
    replica: api,
    blockSize,
    logger: quietLogger,
    clusterId: CLUSTER,
    peerUuid: SERVER_UUID,
    incarnation: 'server-incarnation-1',
    secret: SECRET,
    ...over,
  });
  const addr = await server.listen('127.0.0.1', port);
  cleanups.add(() => server.close());
  return { server, addr };
}

export function makeClient(cleanups: Cleanups, addr: PeerAddress, blockSize: number, over: Partial<PeerClientOptions> = {}): PeerClient {
  const client = new PeerClient({
    address: addr,
    blockSize,
    clusterId: CLUSTER,
    peerUuid: 'client-uuid',
    incarnation: 'client-incarnation-1',
    secret: SECRET,
    logger: quietLogger,
    requestTimeoutMs: 10_000,
    reconnectDelayMinMs: 10,
    reconnectDelayMaxMs: 100,
    ...over,
  });
  cleanups.add(() => client.close());
  return client;
}

export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isTorusError(err) ? err.code : `not a TorusError: ${String(err)}`;
  }
}

/** A hand-driven client: handshake by the book, then raw frames, to send what PeerClient never would. */
export async function rawSession(cleanups: Cleanups, addr: PeerAddress, blockSize: number, opts: { allowHalfOpen?: boolean } = {}) {
  // allowHalfOpen: the session keeps its side open when the server ends its own (a stubborn peer).
  const socket = net.connect({ port: addr.port, host: addr.host, allowHalfOpen: opts.allowHalfOpen ?? false });
  const decoder = new ResponseDecoder();
  const hs = new ClientHandshake(
    { clusterId: CLUSTER, peerUuid: 'raw', incarnation: 'raw-1', secret: Buffer.from(SECRET), blockSize },
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
  cleanups.add(() => void socket.destroy());
  return {
    socket,
    closed,
    frames,
    send(...bytes: Buffer[]) {
      for (const b of bytes) socket.write(b);
    },
    reply(requestId: number): Promise<ResponseFrame> {
      return waitFor(`reply ${requestId}`, () => frames.find((f) => f.requestId === requestId), 5000, 5);
    },
  };
}

/**
 * A test-only transport: TCP underneath, with a hook that may damage the
 * bytes going out (one write() chunk at a time) or coming in.
 */
export class TamperingStream extends Duplex {
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
export function flippingConnector(direction: 'in' | 'out', minBytes: number): { connect: PeerConnector; flipped: () => boolean } {
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

/**
 * A peer client as the test itself, to a real torusd's peer port: it knows
 * the cluster (id, block size) and the secret, and names itself `name`.
 */
export function testPeerClient(opts: { address: PeerAddress | string; config: { id: string; blockSize: number }; secret: string; remotePeerUuid: string; name: string; seed: number }): PeerClient {
  return new PeerClient({
    address: opts.address,
    blockSize: opts.config.blockSize,
    clusterId: opts.config.id,
    peerUuid: opts.name,
    incarnation: `test-${opts.seed}`,
    secret: opts.secret,
    remotePeerUuid: opts.remotePeerUuid,
    logger: pino({ level: 'silent' }),
  });
}
