import { randomBytes as cryptoRandomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { BlockRef } from '../model/block-ref.js';
import type { BlockStore, StoreUsage, WriteOptions, ZeroOptions } from '../store/block-store.js';
import { assert } from '../util/assert.js';
import { systemClock, type Clock } from '../util/clock.js';
import { formatPeerAddress, parsePeerAddress, type PeerAddress } from './address.js';
import {
  ResponseDecoder,
  decodeBitmap,
  decodeErrorPayload,
  decodeUsage,
  encodeRefList,
  encodeRequestHeader,
  encodeVolumeId,
  type RequestHead,
  type ResponseFrame,
} from './codec.js';
import { readHandshakeMessage } from './handshake-codec.js';
import { ClientHandshake, type HandshakeStep } from './handshake.js';
import {
  ALLOCATED_REFS_MAX,
  FLAG_FUA,
  FLAG_PUNCH,
  NONCE_BYTES,
  OPCODE_NAMES,
  Opcode,
  STATUS_ERROR,
  payloadBytesMaxFor,
} from './protocol.js';
import { CorkedWriter, tcpConnector, type PeerConnector } from './transport.js';

export interface PeerClientOptions {
  /** The remote peer: a PeerAddress or any --peer-address form. */
  readonly address: PeerAddress | string;
  /** The cluster block size; the handshake refuses a peer with another. */
  readonly blockSize: number;
  readonly clusterId: string;
  /** This (local) peer's uuid, sent in the handshake. */
  readonly peerUuid: string;
  /** The shared cluster secret; '' means no authentication (the server must have none either). */
  readonly secret: string | Buffer;
  readonly logger: Logger;
  /** When set, a peer answering with another uuid is refused (the address moved to another peer). */
  readonly remotePeerUuid?: string;
  readonly clock?: Clock;
  readonly randomBytes?: (size: number) => Buffer;
  /** Opens the byte stream; default TCP. */
  readonly connect?: PeerConnector;
  /** Whole life of one request, queueing and connecting included. Default 10 s. */
  readonly requestTimeoutMs?: number;
  /** TCP connect plus handshake. Default 5 s. */
  readonly connectTimeoutMs?: number;
  /** Requests on the wire at once. Default 128. */
  readonly inflightMax?: number;
  /** Requests waiting for an in-flight slot; beyond it calls fail with TORUS_ERR_STORE_BUSY. Default 4096. */
  readonly waitQueueMax?: number;
  /** After a failed connection, no new attempt for this long, doubling per failure up to the max. Defaults 50 ms, 5 s. */
  readonly reconnectDelayMinMs?: number;
  readonly reconnectDelayMaxMs?: number;
  /** usage() starts a background refresh when its value is older than this. Default 1 s. */
  readonly usageRefreshMs?: number;
}

const DEFAULTS = {
  requestTimeoutMs: 10_000,
  connectTimeoutMs: 5_000,
  inflightMax: 128,
  waitQueueMax: 4096,
  reconnectDelayMinMs: 50,
  reconnectDelayMaxMs: 5_000,
  usageRefreshMs: 1_000,
};

/**
 * WriteOptions plus the CRC-32C of the data when the caller already has it:
 * a writer replicating one block to R peers computes it once, not R times.
 */
export interface PeerWriteOptions extends WriteOptions {
  readonly crc32c?: number;
}

type Decode<T> = (frame: ResponseFrame) => T;

interface Pending<T = unknown> {
  readonly head: Omit<RequestHead, 'requestId'>;
  readonly payload: Buffer;
  readonly payloadCrc: number | undefined;
  readonly decode: Decode<T>;
  readonly resolve: (value: T) => void;
  readonly reject: (err: unknown) => void;
  timer: { cancel(): void } | null;
  /** waiting: for a slot; queued: holds a slot, waits for the connection; sent: on the wire. */
  state: 'waiting' | 'queued' | 'sent' | 'done';
  requestId: number;
  conn: Connection | null;
}

interface Connection {
  readonly socket: Duplex;
  readonly writer: CorkedWriter;
  readonly decoder: ResponseDecoder;
  readonly handshake: ClientHandshake;
  state: 'handshake' | 'ready' | 'closed';
  connectTimer: { cancel(): void } | null;
  /** Requests sent on this connection, by request id. */
  readonly sent: Map<number, Pending>;
  /** Requests holding a slot, waiting for the handshake to finish. */
  readonly queued: Pending[];
}

const EMPTY = Buffer.alloc(0);

/**
 * A BlockStore held by a remote peer. One connection, opened on first use,
 * carries many requests at once; replies are matched by request id. When the
 * connection fails, the requests on it fail (TORUS_ERR_PEER_UNAVAILABLE, or
 * the checksum/protocol error that broke it) and the next request after a
 * backoff reconnects; within the backoff requests fail at once, so a writer
 * replicating to a dead peer is not held up.
 */
export class PeerClient implements BlockStore {
  readonly blockSize: number;
  readonly address: PeerAddress;
  private readonly opts: Required<Omit<PeerClientOptions, 'secret' | 'address' | 'remotePeerUuid'>> & { secret: Buffer };
  private readonly expectedPeerUuid: string | undefined;
  private readonly log: Logger;
  private readonly label: string;
  private conn: Connection | null = null;
  private inflight = 0;
  private readonly waiting: Pending[] = [];
  private nextRequestId = 1;
  private failures = 0;
  private retryAt = 0;
  private lastError: TorusError | null = null;
  private closed = false;
  private readonly pendingAll = new Set<Pending>();
  /** close() callers waiting for pendingAll to empty. */
  private idleWaiters: (() => void)[] = [];
  private admitting = false;
  private lastUsage: StoreUsage = { capacity: 0, used: 0, blocks: 0 };
  private usageAt = -Infinity;
  private usageRefreshing = false;

  constructor(options: PeerClientOptions) {
    this.address = typeof options.address === 'string' ? parsePeerAddress(options.address) : options.address;
    this.blockSize = options.blockSize;
    this.expectedPeerUuid = options.remotePeerUuid;
    this.opts = {
      ...DEFAULTS,
      clock: systemClock,
      randomBytes: cryptoRandomBytes,
      connect: tcpConnector,
      ...(Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as PeerClientOptions),
      secret: typeof options.secret === 'string' ? Buffer.from(options.secret, 'utf8') : options.secret,
    };
    assert(Number.isInteger(this.blockSize) && this.blockSize > 0, 'blockSize is a positive integer');
    assert(this.opts.inflightMax > 0 && this.opts.waitQueueMax >= 0, 'client limits are sane');
    assert(this.opts.reconnectDelayMinMs > 0 && this.opts.reconnectDelayMaxMs >= this.opts.reconnectDelayMinMs, 'reconnect delays are sane');
    this.label = formatPeerAddress(this.address);
    this.log = options.logger.child({ module: 'peer-client', peer: this.label });
  }

  // ------------------------------------------------------------ BlockStore

  /**
   * The bytes may be a view into a larger receive buffer (no copy on the
   * read path): copy them before keeping them for long, e.g. in a cache.
   */
  read(ref: BlockRef, offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    return this.request({ opcode: Opcode.READ, flags: 0, ref, offset, length, fence: undefined }, EMPTY, (f) => {
      if (f.payload.length !== length) throw this.brokenReply(`READ answered ${f.payload.length} bytes, asked ${length}`);
      return f.payload;
    });
  }

  /** `data` is sent as is, not copied: the caller must not change it until the promise settles. */
  write(ref: BlockRef, offset: number, data: Buffer, opts: PeerWriteOptions): Promise<void> {
    this.checkRange(offset, data.length);
    const head = { opcode: Opcode.WRITE, flags: opts.fua ? FLAG_FUA : 0, ref, offset, length: data.length, fence: opts.fence };
    return this.request(head, data, this.expectEmpty, opts.crc32c);
  }

  zero(ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void> {
    this.checkRange(offset, length);
    const flags = (opts.fua ? FLAG_FUA : 0) | (opts.punch ? FLAG_PUNCH : 0);
    return this.request({ opcode: Opcode.ZERO, flags, ref, offset, length, fence: opts.fence }, EMPTY, this.expectEmpty);
  }

  flush(): Promise<void> {
    return this.request(noBlock(Opcode.FLUSH), EMPTY, this.expectEmpty);
  }

  async allocated(refs: readonly BlockRef[]): Promise<boolean[]> {
    const parts: Promise<boolean[]>[] = [];
    for (let i = 0; i < refs.length; i += ALLOCATED_REFS_MAX) {
      const slice = refs.slice(i, i + ALLOCATED_REFS_MAX);
      const head = { ...noBlock(Opcode.ALLOCATED), length: slice.length };
      parts.push(
        this.request(head, encodeRefList(slice), (f) => {
          const bits = decodeBitmap(f.payload, slice.length);
          if (bits === null) throw this.brokenReply(`ALLOCATED answered a ${f.payload.length}-byte bitmap for ${slice.length} refs`);
          return bits;
        }),
      );
    }
    return (await Promise.all(parts)).flat();
  }

  deleteVolume(volumeId: number): Promise<void> {
    assert(Number.isInteger(volumeId) && volumeId > 0 && volumeId <= 0xffffffff, 'volumeId is a positive u32');
    return this.request(noBlock(Opcode.DELETE_VOLUME), encodeVolumeId(volumeId), this.expectEmpty);
  }

  /**
   * The peer's usage as last fetched (zeroes before the first answer). A
   * value older than usageRefreshMs starts a refresh in the background.
   */
  usage(): StoreUsage {
    if (!this.closed && !this.usageRefreshing && this.opts.clock.monotonic() - this.usageAt >= this.opts.usageRefreshMs) {
      this.refreshUsage().catch((err: unknown) => this.log.debug({ err }, 'peer usage refresh failed'));
    }
    return this.lastUsage;
  }

  /** Asks the peer for its usage now. */
  async refreshUsage(): Promise<StoreUsage> {
    this.usageRefreshing = true;
    this.usageAt = this.opts.clock.monotonic();
    try {
      const usage = await this.request(noBlock(Opcode.USAGE), EMPTY, (f) => {
        const u = decodeUsage(f.payload);
        if (u === null) throw this.brokenReply(`USAGE answered ${f.payload.length} bytes`);
        return u;
      });
      this.lastUsage = usage;
      return usage;
    } finally {
      this.usageRefreshing = false;
    }
  }

  /** A round trip that touches no block (health checks, tests). */
  ping(): Promise<void> {
    return this.request(noBlock(Opcode.PING), EMPTY, this.expectEmpty);
  }

  /** Fails new requests, waits for those already made to finish, then closes the connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const closedErr = new TorusError('TORUS_ERR_STORE_CLOSED', `the client of peer ${this.label} is closed`);
    for (const p of [...this.waiting]) this.settle(p, closedErr);
    if (this.pendingAll.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const conn = this.conn;
    if (conn !== null) {
      conn.state = 'closed';
      conn.connectTimer?.cancel();
      this.conn = null;
      conn.socket.end(() => conn.socket.destroy());
    }
  }

  /** Requests on the wire or waiting for the connection (tests, metrics). */
  get inflightCount(): number {
    return this.inflight;
  }

  // ------------------------------------------------------------ requests

  private readonly expectEmpty = (f: ResponseFrame): void => {
    if (f.payload.length !== 0) throw this.brokenReply(`${OPCODE_NAMES[f.opcode]} answered ${f.payload.length} unexpected bytes`);
  };

  private checkRange(offset: number, length: number): void {
    assert(Number.isInteger(offset) && offset >= 0, 'offset is a non-negative integer');
    assert(Number.isInteger(length) && length >= 0, 'length is a non-negative integer');
    assert(offset + length <= this.blockSize, 'offset + length lies within the block');
  }

  private request<T>(head: Omit<RequestHead, 'requestId'>, payload: Buffer, decode: Decode<T>, payloadCrc?: number): Promise<T> {
    if (this.closed) {
      return Promise.reject(new TorusError('TORUS_ERR_STORE_CLOSED', `the client of peer ${this.label} is closed`));
    }
    return new Promise<T>((resolve, reject) => {
      const p: Pending<T> = { head, payload, payloadCrc, decode, resolve, reject, timer: null, state: 'waiting', requestId: 0, conn: null };
      const mustWait = this.inflight >= this.opts.inflightMax || this.waiting.length > 0;
      if (mustWait && this.waiting.length >= this.opts.waitQueueMax) {
        reject(
          new TorusError('TORUS_ERR_STORE_BUSY', `too many requests waiting for peer ${this.label}`, {
            details: { peer: this.label, waitQueueMax: this.opts.waitQueueMax },
          }),
        );
        return;
      }
      this.pendingAll.add(p as Pending);
      p.timer = this.opts.clock.setTimeout(() => this.onTimeout(p as Pending), this.opts.requestTimeoutMs);
      if (mustWait) this.waiting.push(p as Pending);
      else this.start(p as Pending);
    });
  }

  /** Takes a slot and sends, or queues on the connection being opened. */
  private start(p: Pending): void {
    this.inflight++;
    p.state = 'queued';
    const conn = this.connection();
    if (conn instanceof TorusError) {
      this.settle(p, conn);
      return;
    }
    p.conn = conn;
    if (conn.state === 'ready') this.send(conn, p);
    else conn.queued.push(p);
  }

  private send(conn: Connection, p: Pending): void {
    let id = this.nextRequestId;
    while (conn.sent.has(id)) id = (id + 1) >>> 0;
    this.nextRequestId = (id + 1) >>> 0;
    p.requestId = id;
    p.state = 'sent';
    conn.sent.set(id, p);
    conn.writer.write(encodeRequestHeader({ ...p.head, requestId: id }, p.payload, p.payloadCrc), p.payload);
  }

  /** Resolves or rejects once, frees its slot and lets the next waiter in. */
  private settle(p: Pending, err: unknown, value?: unknown): void {
    if (p.state === 'done') return;
    const held = p.state === 'queued' || p.state === 'sent';
    if (p.state === 'waiting') {
      const i = this.waiting.indexOf(p);
      if (i >= 0) this.waiting.splice(i, 1);
    }
    if (p.state === 'sent') p.conn?.sent.delete(p.requestId);
    if (p.state === 'queued' && p.conn !== null) {
      const i = p.conn.queued.indexOf(p);
      if (i >= 0) p.conn.queued.splice(i, 1);
    }
    p.state = 'done';
    p.timer?.cancel();
    p.timer = null;
    this.pendingAll.delete(p);
    if (err === null) p.resolve(value);
    else p.reject(err);
    if (held) {
      this.inflight--;
      this.admit();
    }
    if (this.pendingAll.size === 0 && this.idleWaiters.length > 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Lets waiters into free slots; a loop, not recursion, as a start() may fail (and free its slot) at once. */
  private admit(): void {
    if (this.admitting) return;
    this.admitting = true;
    try {
      while (this.inflight < this.opts.inflightMax && this.waiting.length > 0) this.start(this.waiting.shift()!);
    } finally {
      this.admitting = false;
    }
  }

  private onTimeout(p: Pending): void {
    p.timer = null;
    const name = OPCODE_NAMES[p.head.opcode];
    this.log.debug({ opcode: name, timeoutMs: this.opts.requestTimeoutMs, state: p.state }, 'peer request timed out');
    this.settle(
      p,
      new TorusError('TORUS_ERR_TIMEOUT', `${name} to peer ${this.label} did not finish within ${this.opts.requestTimeoutMs} ms`, {
        details: { peer: this.label, timeoutMs: this.opts.requestTimeoutMs },
      }),
    );
  }

  // ------------------------------------------------------------ connection

  /** The open (or opening) connection, or why there is none right now. */
  private connection(): Connection | TorusError {
    if (this.conn !== null) return this.conn;
    const now = this.opts.clock.monotonic();
    if (now < this.retryAt) {
      return new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${this.label} is unavailable (next attempt in ${Math.ceil(this.retryAt - now)} ms)`, {
        cause: this.lastError ?? undefined,
        details: { peer: this.label },
      });
    }
    return this.open();
  }

  private open(): Connection {
    const socket = this.opts.connect(this.address);
    const handshake = new ClientHandshake(
      { clusterId: this.opts.clusterId, peerUuid: this.opts.peerUuid, secret: this.opts.secret, blockSize: this.blockSize },
      this.opts.randomBytes(NONCE_BYTES),
    );
    const conn: Connection = {
      socket,
      writer: new CorkedWriter(socket),
      decoder: new ResponseDecoder(payloadBytesMaxFor(this.blockSize)),
      handshake,
      state: 'handshake',
      connectTimer: null,
      sent: new Map(),
      queued: [],
    };
    this.conn = conn;
    conn.connectTimer = this.opts.clock.setTimeout(() => {
      conn.connectTimer = null;
      this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${this.label} did not complete the handshake within ${this.opts.connectTimeoutMs} ms`));
    }, this.opts.connectTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.onData(conn, chunk));
    socket.on('error', (err) => this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${this.label}: ${err.message}`, { cause: err })));
    // The server half-closing means it reads no more requests (it is closing or found the stream damaged).
    socket.on('end', () => this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${this.label} closed the connection`)));
    socket.on('close', () => this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `the connection to peer ${this.label} closed`)));
    conn.writer.write(handshake.hello());
    return conn;
  }

  private onData(conn: Connection, chunk: Buffer): void {
    if (conn.state === 'closed') return;
    conn.decoder.push(chunk);
    try {
      while (conn.state === 'handshake') {
        const msg = readHandshakeMessage(conn.decoder.queue);
        if (msg === null) return;
        this.onHandshakeStep(conn, conn.handshake.receive(msg));
      }
      for (;;) {
        if (conn.state !== 'ready') return;
        const frame = conn.decoder.next();
        if (frame === null) return;
        this.onResponse(conn, frame);
      }
    } catch (err) {
      this.fail(conn, err instanceof TorusError ? err : new TorusError('TORUS_ERR_PEER_PROTOCOL', String(err), { cause: err }));
    }
  }

  private onHandshakeStep(conn: Connection, step: HandshakeStep): void {
    if (step.kind === 'fail') {
      // Tell the server why (REJECT), then close once it is sent.
      this.fail(conn, step.error, step.out);
      return;
    }
    for (const out of step.out) conn.writer.write(out);
    if (step.kind === 'continue') return;
    if (this.expectedPeerUuid !== undefined && step.result.remotePeerUuid !== this.expectedPeerUuid) {
      this.fail(
        conn,
        new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `the peer at ${this.label} is ${step.result.remotePeerUuid}, not ${this.expectedPeerUuid}`),
      );
      return;
    }
    conn.state = 'ready';
    conn.connectTimer?.cancel();
    conn.connectTimer = null;
    this.failures = 0;
    this.lastError = null;
    this.log.debug({ remotePeerUuid: step.result.remotePeerUuid, version: step.result.version }, 'peer connection ready');
    for (const p of conn.queued.splice(0)) this.send(conn, p);
    // Learn the peer's usage as soon as it can answer.
    if (!this.usageRefreshing) this.refreshUsage().catch((err: unknown) => this.log.debug({ err }, 'peer usage refresh failed'));
  }

  private onResponse(conn: Connection, frame: ResponseFrame): void {
    const p = conn.sent.get(frame.requestId);
    if (p === undefined) {
      // Its request timed out; the late answer has nobody waiting.
      this.log.debug({ requestId: frame.requestId }, 'peer answer for an unknown request');
      return;
    }
    if (frame.opcode !== p.head.opcode) {
      throw this.brokenReply(`request ${frame.requestId} was ${OPCODE_NAMES[p.head.opcode]}, the answer is for opcode ${frame.opcode}`);
    }
    if (frame.status === STATUS_ERROR) {
      this.settle(p, decodeErrorPayload(frame.payload, { peer: this.label }));
      return;
    }
    let value: unknown;
    try {
      value = p.decode(frame);
    } catch (err) {
      // A reply that does not fit its request: this peer cannot be trusted; drop the connection.
      this.settle(p, err);
      throw err;
    }
    this.settle(p, null, value);
  }

  private brokenReply(message: string): TorusError {
    return new TorusError('TORUS_ERR_PEER_PROTOCOL', `peer ${this.label}: ${message}`);
  }

  /** The connection is over: fail what was on it and hold off reconnecting for a while. */
  private fail(conn: Connection, err: TorusError, lastWords: Buffer[] = []): void {
    if (conn.state === 'closed') return;
    const wasReady = conn.state === 'ready';
    conn.state = 'closed';
    conn.connectTimer?.cancel();
    conn.connectTimer = null;
    if (this.conn === conn) this.conn = null;
    if (lastWords.length > 0 && !conn.socket.destroyed) {
      conn.socket.end(Buffer.concat(lastWords), () => conn.socket.destroy());
    } else {
      conn.socket.destroy();
    }
    this.failures++;
    const delay = Math.min(this.opts.reconnectDelayMaxMs, this.opts.reconnectDelayMinMs * 2 ** Math.min(this.failures - 1, 30));
    this.retryAt = this.opts.clock.monotonic() + delay;
    this.lastError = err;
    const fields = { err, inflight: conn.sent.size + conn.queued.length, retryInMs: delay };
    if (wasReady || err.code !== 'TORUS_ERR_PEER_UNAVAILABLE') this.log.warn(fields, 'peer connection lost');
    else this.log.debug(fields, 'peer connection failed');
    // A damaged or misbehaving stream fails every request on it with that error; a drop is "unavailable".
    for (const p of [...conn.queued, ...conn.sent.values()]) this.settle(p, err);
  }
}

function noBlock(opcode: Opcode): Omit<RequestHead, 'requestId'> {
  return { opcode, flags: 0, ref: null, offset: 0, length: 0, fence: undefined };
}
