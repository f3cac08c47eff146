import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { BlockMeta, ListedBlock } from '../model/block-meta.js';
import type { BlockRef } from '../model/block-ref.js';
import type {
  BlockCopy,
  ChangeStamp,
  InstallOutcome,
  PeerInfo,
  ReadReply,
  ReplicaApi,
  ReplicaWriteOptions,
  RequestContext,
  StoreUsageInfo,
} from '../model/replica-api.js';
import type { Version } from '../model/version.js';
import { assert } from '../util/assert.js';
import { releaseBuffer, retainBuffer, type BufferPool } from '../util/buffer-pool.js';
import { systemClock, type Clock } from '../util/clock.js';
import { systemRandom, type Random } from '../util/random.js';
import { formatPeerAddress, parsePeerAddress, type PeerAddress } from './address.js';
import { resolveSecret } from './auth.js';
import {
  ResponseDecoder,
  checkRequest,
  decodeErrorPayload,
  decodeReply,
  encodeRequest,
  type PayloadBuffers,
  type PeerRequest,
  type ReplyOf,
  type ResponseFrame,
} from './codec.js';
import { DeadlineQueue } from '../util/deadline-queue.js';
import { readHandshakeMessage } from './handshake-codec.js';
import { ClientHandshake, type HandshakeStep } from './handshake.js';
import { CLIENT_INFLIGHT_BYTES_MAX, NONCE_BYTES, OPCODE_NAMES, Opcode, PAYLOAD_BYTES_MAX, STATUS_ERROR, replyPayloadBytesMaxFor } from './protocol.js';
import { attachInput, CorkedWriter, tcpConnector, type PeerConnector } from './transport.js';

/** The server's incarnation differs from the one the client saw before: the peer restarted. */
export interface IncarnationChange {
  /** The server's peer uuid. */
  readonly peerUuid: string;
  /** Null at the first handshake of this client. */
  readonly previous: string | null;
  readonly current: string;
}

export interface PeerClientOptions {
  /** The remote peer: a PeerAddress or any --peer-address form. */
  readonly address: PeerAddress | string;
  /** The cluster block size; the handshake refuses a peer with another. */
  readonly blockSize: number;
  readonly clusterId: string;
  /** This (local) process's peer uuid, sent in the handshake. */
  readonly peerUuid: string;
  /** This (local) process's incarnation, sent in the handshake. */
  readonly incarnation: string;
  /** The shared cluster secret. Required: an empty one is refused unless `insecure`. */
  readonly secret: string | Buffer;
  /** Allows an empty secret (no authentication). For tests only. */
  readonly insecure?: boolean;
  readonly logger: Logger;
  /** When set, a peer answering with another uuid is refused (the address moved to another peer). */
  readonly remotePeerUuid?: string;
  readonly clock?: Clock;
  /** Handshake nonces and reconnect jitter. */
  readonly random?: Random;
  /** Opens the byte stream; default TCP. */
  readonly connect?: PeerConnector;
  /**
   * Upper bound on the whole life of one request, queueing and connecting
   * included. Default 30 s. The replication layer bounds its calls with its
   * own, shorter replica timeout; this one only guarantees that nothing
   * waits forever.
   */
  readonly requestTimeoutMs?: number;
  /**
   * How long close() waits for the answers of requests on the wire before
   * it fails them and drops the connection. Default 2 s: a peer that does
   * not answer at all (frozen, cut off) would otherwise hold the close, and
   * a torusd's stop, for the whole request timeout.
   */
  readonly closeWaitMs?: number;
  /** TCP connect plus handshake. Default 5 s. */
  readonly connectTimeoutMs?: number;
  /** Requests on the wire at once. Default 128. */
  readonly inflightMax?: number;
  /**
   * Request payload bytes (WRITE, INSTALL blocks) on the connection and not
   * yet answered, those of requests the caller gave up on included: a peer
   * that stops reading holds at most this much of this process's memory
   * (README, "Memory"). Beyond it requests wait their turn. One request is
   * always let through. Default 8 MiB.
   */
  readonly inflightBytesMax?: number;
  /** Where replies are received (the daemon's data-path pool); a READ's bytes then are a pooled view the caller may release. */
  readonly pool?: BufferPool;
  /** Requests waiting for an in-flight slot; beyond it calls fail with TORUS_ERR_STORE_BUSY. Default 4096. */
  readonly waitQueueMax?: number;
  /**
   * After a failed connection, no new attempt for a while: the delay starts
   * at the min, doubles per failure up to the max, and is jittered down by
   * up to half so that many clients of a restarted peer do not redial in
   * step. Defaults 50 ms, 5 s.
   */
  readonly reconnectDelayMinMs?: number;
  readonly reconnectDelayMaxMs?: number;
  /**
   * Called when a handshake shows a server incarnation other than the last
   * one seen (and at the first handshake, with previous null), before any
   * request is sent on the new connection: the peer restarted, and writes
   * it acknowledged but had not flushed may be gone.
   */
  readonly onIncarnationChange?: (change: IncarnationChange) => void;
}

/** Payloads on backings up to this size are sent as they are (the pool's buffers are at most twice what they hold). */
const OWN_COPY_BACKING_MIN = 4 * 1024 * 1024;

const DEFAULTS = {
  requestTimeoutMs: 30_000,
  closeWaitMs: 2_000,
  connectTimeoutMs: 5_000,
  inflightMax: 128,
  inflightBytesMax: CLIENT_INFLIGHT_BYTES_MAX,
  waitQueueMax: 4096,
  reconnectDelayMinMs: 50,
  reconnectDelayMaxMs: 5_000,
};

interface Pending {
  readonly req: PeerRequest;
  /** Known CRC-32C of the payload (a block sent to several replicas is summed once). */
  readonly payloadCrc: number | undefined;
  /** Request payload bytes (counted against inflightBytesMax while on the wire). */
  readonly bytes: number;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: unknown) => void;
  /** Monotonic time (the client's clock) the request is given up at. */
  readonly deadline: number;
  readonly startedAt: number;
  /** The request holds a reference on its (pooled) payload until it is written or given up. */
  holdsPayload: boolean;
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
  /**
   * Requests sent on this connection, by request id; null for an id nobody
   * waits on any more. Ids are reused (freeIds) rather than deleted and new
   * ones added: a key added and deleted per request rebuilds a long-lived
   * Map's table in the old generation every few dozen requests
   * (util/recency.ts).
   */
  readonly sent: Map<number, Pending | null>;
  /**
   * Ids whose answer came: the peer is done with them, so they may go to a
   * new request. An id settled without its answer (a timeout, a failure)
   * never comes back here: a late answer must not reach a new request.
   */
  readonly freeIds: number[];
  /** The next id never used on this connection. */
  nextId: number;
  /** Requests holding a slot, waiting for the handshake to finish, in call order. */
  readonly queued: Pending[];
  /**
   * Requests sent on this connection whose caller gave up (timed out)
   * before the answer: request id -> payload bytes. Their bytes still count
   * against inflightBytesMax until the late answer comes or the connection
   * closes: they may still be queued on the socket.
   */
  readonly abandoned: Map<number, number>;
}

/**
 * The ReplicaApi of a remote peer. One connection, opened on first use,
 * carries many requests at once; replies are matched by request id.
 *
 * Order: requests are written to the connection in the order the methods
 * were called (FIFO through the wait queue and the handshake), and the
 * server hands them to its replica in arrival order, so changes to one
 * block sent through one client apply in call order. Requests never move
 * to another connection: when the connection fails, the requests on it fail
 * (TORUS_ERR_PEER_UNAVAILABLE, or the checksum/protocol error that broke it)
 * and the next request after a backoff reconnects; within the backoff
 * requests fail at once, so a writer replicating to a dead peer is not held up.
 */
export class PeerClient implements ReplicaApi {
  readonly blockSize: number;
  readonly address: PeerAddress;
  /** Calls are bounded by RequestContext.deadline here, on one timer per client; the caller need not race them against a timer of its own. */
  readonly enforcesDeadline = true;
  private readonly opts: Required<Omit<PeerClientOptions, 'secret' | 'address' | 'remotePeerUuid' | 'insecure' | 'onIncarnationChange' | 'pool'>> & {
    secret: Buffer;
  };
  private readonly expectedPeerUuid: string | undefined;
  private readonly onIncarnationChange: ((change: IncarnationChange) => void) | undefined;
  private readonly log: Logger;
  private readonly label: string;
  private conn: Connection | null = null;
  private inflight = 0;
  /** Payload bytes of requests holding a slot, plus those abandoned on the connection. */
  private inflightBytes = 0;
  private readonly deadlines: DeadlineQueue<Pending>;
  private readonly buffers: PayloadBuffers | undefined;
  private readonly waiting: Pending[] = [];
  private failures = 0;
  private retryAt = 0;
  private lastError: TorusError | null = null;
  private closed = false;
  /**
   * Calls accepted and not yet settled. A count, not a Set of them: adding
   * and deleting one per request rebuilds a long-lived Set's table in the
   * old generation every few dozen requests (util/recency.ts).
   */
  private pendingCount = 0;
  /** close() callers waiting for pendingCount to reach 0. */
  private idleWaiters: (() => void)[] = [];
  private admitting = false;
  private serverIncarnation: string | null = null;
  private serverUuid: string | null = null;

  constructor(options: PeerClientOptions) {
    const { secret, insecure, address, remotePeerUuid, onIncarnationChange, pool, ...rest } = options;
    this.buffers = pool === undefined ? undefined : { acquire: (n) => pool.acquire(n) };
    this.address = typeof address === 'string' ? parsePeerAddress(address) : address;
    this.blockSize = options.blockSize;
    this.expectedPeerUuid = remotePeerUuid;
    this.onIncarnationChange = onIncarnationChange;
    this.opts = {
      ...DEFAULTS,
      clock: systemClock,
      random: systemRandom,
      connect: tcpConnector,
      ...(Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)) as typeof rest),
      secret: resolveSecret(secret, insecure, 'peer client'),
    };
    assert(Number.isInteger(this.blockSize) && this.blockSize > 0 && this.blockSize <= PAYLOAD_BYTES_MAX, 'blockSize is sane');
    assert(this.opts.incarnation.length > 0, 'an incarnation is set');
    assert(this.opts.inflightMax > 0 && this.opts.waitQueueMax >= 0 && this.opts.inflightBytesMax > 0, 'client limits are sane');
    assert(this.opts.requestTimeoutMs > 0 && this.opts.connectTimeoutMs > 0, 'timeouts are positive');
    assert(this.opts.reconnectDelayMinMs > 0 && this.opts.reconnectDelayMaxMs >= this.opts.reconnectDelayMinMs, 'reconnect delays are sane');
    this.label = formatPeerAddress(this.address);
    this.log = options.logger.child({ module: 'peer-client', peer: this.label });
    this.deadlines = new DeadlineQueue<Pending>(
      this.opts.clock,
      (p) => p.state !== 'done',
      (p) => this.onTimeout(p),
    );
  }

  // ------------------------------------------------------------ ReplicaApi

  /**
   * The bytes are a view into the buffer the reply was received into (no
   * copy on the read path); with a pool it is pooled and the caller may
   * release it (util/buffer-pool.ts) when done. Copy them before keeping
   * them for long, e.g. in a cache.
   */
  read(ctx: RequestContext, ref: BlockRef, offset: number, length: number): Promise<ReadReply> {
    return this.call({ opcode: Opcode.READ, ctx, ref, offset, length });
  }

  /**
   * `data` is sent as is, not copied: the caller must not change it until
   * the promise settles. `crc32c` may carry the data's CRC-32C when the
   * caller already has it (one block sent to R replicas is summed once).
   */
  write(ctx: RequestContext, ref: BlockRef, offset: number, data: Buffer, stamp: ChangeStamp, opts: ReplicaWriteOptions): Promise<void> {
    return this.call({ opcode: Opcode.WRITE, ctx, ref, offset, data, stamp, fua: opts.fua }, opts.crc32c);
  }

  zero(ctx: RequestContext, ref: BlockRef, offset: number, length: number, stamp: ChangeStamp, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void> {
    return this.call({ opcode: Opcode.ZERO, ctx, ref, offset, length, stamp, punch: opts.punch, fua: opts.fua });
  }

  install(ctx: RequestContext, ref: BlockRef, copy: BlockCopy, opts: { readonly token: number; readonly fua: boolean }): Promise<InstallOutcome> {
    return this.call({ opcode: Opcode.INSTALL, ctx, ref, copy, token: opts.token, fua: opts.fua });
  }

  confirm(ctx: RequestContext, ref: BlockRef, version: Version, digest: number, opts: { readonly token: number }): Promise<boolean> {
    return this.call({ opcode: Opcode.CONFIRM, ctx, ref, version, digest, token: opts.token });
  }

  meta(ctx: RequestContext, refs: readonly BlockRef[]): Promise<BlockMeta[]> {
    return this.call({ opcode: Opcode.META, ctx, refs });
  }

  list(ctx: RequestContext, volumeId: number, after: BlockRef | null, limit: number): Promise<{ blocks: ListedBlock[]; more: boolean }> {
    return this.call({ opcode: Opcode.LIST, ctx, volumeId, after, limit });
  }

  verify(ctx: RequestContext, ref: BlockRef): Promise<BlockMeta> {
    return this.call({ opcode: Opcode.VERIFY, ctx, ref });
  }

  drop(ctx: RequestContext, ref: BlockRef, version: Version, opts: { readonly token: number }): Promise<boolean> {
    return this.call({ opcode: Opcode.DROP, ctx, ref, version, token: opts.token });
  }

  fence(ctx: RequestContext, volumeId: number, token: number): Promise<void> {
    return this.call({ opcode: Opcode.FENCE, ctx, volumeId, token });
  }

  flush(ctx: RequestContext): Promise<void> {
    return this.call({ opcode: Opcode.FLUSH, ctx });
  }

  deleteVolume(ctx: RequestContext, volumeId: number): Promise<void> {
    return this.call({ opcode: Opcode.DELETE_VOLUME, ctx, volumeId });
  }

  usage(ctx: RequestContext): Promise<StoreUsageInfo> {
    return this.call({ opcode: Opcode.USAGE, ctx });
  }

  /** Who answers; also the cheapest round trip (health checks, tests). */
  hello(ctx: RequestContext): Promise<PeerInfo> {
    return this.call({ opcode: Opcode.HELLO, ctx });
  }

  /**
   * Sent without waiting: a hint, so a failure (a closed connection, a
   * timeout, a peer of an earlier release that does not know EXPECT) only
   * means the peer makes its own write-ahead records per block, as before.
   */
  expectWrites(ctx: RequestContext, refs: readonly BlockRef[]): void {
    if (this.closed || refs.length === 0) return;
    this.call({ opcode: Opcode.EXPECT, ctx, refs }).catch(() => undefined);
  }

  // ------------------------------------------------------------ state

  /** The server's incarnation as of the last handshake; null before the first. */
  get incarnation(): string | null {
    return this.serverIncarnation;
  }

  /** The server's peer uuid as of the last handshake; null before the first. */
  get remotePeerUuid(): string | null {
    return this.serverUuid;
  }

  /** Requests on the wire or waiting for the connection (tests, metrics). */
  get inflightCount(): number {
    return this.inflight;
  }

  /** Fails new requests, waits up to closeWaitMs for those already made to finish, fails the rest, then closes the connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const closedErr = new TorusError('TORUS_ERR_STORE_CLOSED', `the client of peer ${this.label} is closed`);
    for (const p of [...this.waiting]) this.settle(p, closedErr);
    if (this.pendingCount > 0) await this.idleWithin(this.opts.closeWaitMs);
    this.deadlines.clear();
    const conn = this.conn;
    if (this.pendingCount > 0) {
      // Every call left is on this connection (queued or sent: a connection
      // that failed settled its own): failing it destroys the socket first,
      // so no payload it held is written after it went back to the pool.
      assert(conn !== null, 'calls left at close are on the current connection');
      this.log.info({ unanswered: this.pendingCount, waitedMs: this.opts.closeWaitMs }, 'closing with requests unanswered; failing them');
      this.fail(conn, closedErr);
      assert(this.pendingCount === 0, 'closing failed every call left on the connection');
      return;
    }
    if (conn === null) return;
    conn.state = 'closed';
    conn.connectTimer?.cancel();
    this.conn = null;
    conn.socket.end(() => conn.socket.destroy());
  }

  /** Resolves once no call is pending, or after `ms`, whichever is first. */
  private idleWithin(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = this.opts.clock.setTimeout(resolve, ms);
      this.idleWaiters.push(() => {
        timer.cancel();
        resolve();
      });
    });
  }

  // ------------------------------------------------------------ requests

  /**
   * Checks the request (a bad one is a caller bug: it throws at once) and
   * queues it behind every earlier call.
   */
  private call<R extends PeerRequest>(req: R, payloadCrc?: number): Promise<ReplyOf<R>> {
    const bad = checkRequest(req, this.blockSize);
    assert(bad === null, `a valid ${OPCODE_NAMES[req.opcode]} request (${bad?.message ?? ''})`);
    if (this.closed) {
      return Promise.reject(new TorusError('TORUS_ERR_STORE_CLOSED', `the client of peer ${this.label} is closed`));
    }
    return new Promise<ReplyOf<R>>((resolve, reject) => {
      const payload = req.opcode === Opcode.WRITE ? req.data : req.opcode === Opcode.INSTALL ? req.copy.data : null;
      const now = this.opts.clock.monotonic();
      const p: Pending = {
        req,
        payloadCrc,
        bytes: payload?.length ?? 0,
        resolve: resolve as (value: unknown) => void,
        reject,
        deadline: Math.min(req.ctx.deadline ?? Infinity, now + this.opts.requestTimeoutMs),
        startedAt: now,
        holdsPayload: false,
        state: 'waiting',
        requestId: 0,
        conn: null,
      };
      // Anyone already waiting goes first: FIFO.
      const mustWait = this.waiting.length > 0 || !this.fits(p);
      if (mustWait && this.waiting.length >= this.opts.waitQueueMax) {
        reject(
          new TorusError('TORUS_ERR_STORE_BUSY', `too many requests waiting for peer ${this.label}`, {
            details: { peer: this.label, waitQueueMax: this.opts.waitQueueMax },
          }),
        );
        return;
      }
      this.pendingCount++;
      // The caller may give up (and recycle a pooled payload) while this
      // waits; the bytes must stay as they were until they are written.
      if (payload !== null && payload.length > 0) {
        retainBuffer(payload);
        p.holdsPayload = true;
      }
      this.deadlines.add(p);
      if (mustWait) this.waiting.push(p);
      else this.start(p);
    });
  }

  /** Is there a slot, and room for its payload under inflightBytesMax (one request always fits)? */
  private fits(p: Pending): boolean {
    if (this.inflight >= this.opts.inflightMax) return false;
    return this.inflightBytes === 0 || this.inflightBytes + p.bytes <= this.opts.inflightBytesMax;
  }

  /** Takes a slot and sends, or queues on the connection being opened. */
  private start(p: Pending): void {
    this.inflight++;
    this.inflightBytes += p.bytes;
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
    let id = conn.freeIds.pop();
    if (id === undefined) {
      id = conn.nextId;
      while (conn.sent.has(id) || conn.abandoned.has(id)) id = (id + 1) >>> 0;
      conn.nextId = (id + 1) >>> 0;
    }
    p.requestId = id;
    p.state = 'sent';
    conn.sent.set(id, p);
    const { header, payload } = encodeRequest(p.req, id, p.payloadCrc);
    const own = this.ownCopy(payload);
    conn.writer.write(header, own ?? payload);
    // The socket holds its own reference while the bytes are queued on it.
    if (own !== null) releaseBuffer(own);
    this.dropPayload(p);
  }

  /**
   * A payload that is a small part of a much larger buffer (one block of a
   * 32 MiB NBD WRITE) would keep that whole buffer alive for as long as it
   * sits on the socket, and a stalled peer keeps it there: up to
   * inflightBytesMax / blockSize whole NBD payloads, not inflightBytesMax
   * bytes (measured: 230 MiB in test/stress). Such a payload goes out as a
   * pooled copy of its own size; null when it is sent as it is.
   */
  private ownCopy(payload: Buffer): Buffer | null {
    if (this.buffers === undefined || payload.length === 0) return null;
    const backing = payload.buffer.byteLength;
    if (backing <= OWN_COPY_BACKING_MIN || backing <= 2 * payload.length) return null;
    const copy = this.buffers.acquire(payload.length);
    payload.copy(copy);
    return copy;
  }

  private dropPayload(p: Pending): void {
    if (!p.holdsPayload) return;
    p.holdsPayload = false;
    const payload = p.req.opcode === Opcode.WRITE ? p.req.data : p.req.opcode === Opcode.INSTALL ? p.req.copy.data : null;
    if (payload !== null) releaseBuffer(payload);
  }

  /**
   * Resolves or rejects once, frees its slot and lets the next waiter in.
   * `abandon`: the caller gives up on a request that is on the wire; its
   * payload bytes stay counted until its answer comes or the connection closes.
   */
  private settle(p: Pending, err: unknown, value?: unknown, abandon = false): void {
    if (p.state === 'done') return;
    const held = p.state === 'queued' || p.state === 'sent';
    if (p.state === 'waiting') {
      const i = this.waiting.indexOf(p);
      if (i >= 0) this.waiting.splice(i, 1);
    }
    if (p.state === 'sent') {
      p.conn?.sent.set(p.requestId, null);
      if (abandon && p.bytes > 0 && p.conn !== null && p.conn.state !== 'closed') {
        p.conn.abandoned.set(p.requestId, p.bytes);
        this.inflightBytes += p.bytes; // handed over from the slot to the connection
      }
    }
    if (p.state === 'queued' && p.conn !== null) {
      const i = p.conn.queued.indexOf(p);
      if (i >= 0) p.conn.queued.splice(i, 1);
    }
    p.state = 'done';
    if (!abandon) this.deadlines.forgot();
    this.dropPayload(p);
    if (held) this.inflightBytes -= p.bytes;
    this.pendingCount--; // every call counted is settled here once (state 'done' above)
    assert(this.pendingCount >= 0, 'settled calls were counted');
    if (err === null) p.resolve(value);
    else p.reject(err);
    if (held) {
      this.inflight--;
      this.admit();
    }
    if (this.pendingCount === 0 && this.idleWaiters.length > 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Lets waiters into free slots, oldest first; a loop, not recursion, as a start() may fail (and free its slot) at once. */
  private admit(): void {
    if (this.admitting) return;
    this.admitting = true;
    try {
      while (this.waiting.length > 0 && this.fits(this.waiting[0]!)) this.start(this.waiting.shift()!);
    } finally {
      this.admitting = false;
    }
  }

  private onTimeout(p: Pending): void {
    const name = OPCODE_NAMES[p.req.opcode];
    const timeoutMs = Math.round(p.deadline - p.startedAt);
    this.log.debug({ opcode: name, timeoutMs, state: p.state }, 'peer request timed out');
    this.settle(
      p,
      new TorusError('TORUS_ERR_TIMEOUT', `${name} to peer ${this.label} did not finish within ${timeoutMs} ms`, {
        details: { peer: this.label, timeoutMs },
      }),
      undefined,
      true,
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
      {
        clusterId: this.opts.clusterId,
        peerUuid: this.opts.peerUuid,
        incarnation: this.opts.incarnation,
        secret: this.opts.secret,
        blockSize: this.blockSize,
      },
      this.opts.random.bytes(NONCE_BYTES),
    );
    const conn: Connection = {
      socket,
      writer: new CorkedWriter(socket),
      decoder: new ResponseDecoder(replyPayloadBytesMaxFor(this.blockSize), this.buffers),
      handshake,
      state: 'handshake',
      connectTimer: null,
      sent: new Map(),
      freeIds: [],
      nextId: 1,
      queued: [],
      abandoned: new Map(),
    };
    this.conn = conn;
    conn.connectTimer = this.opts.clock.setTimeout(() => {
      conn.connectTimer = null;
      this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${this.label} did not complete the handshake within ${this.opts.connectTimeoutMs} ms`));
    }, this.opts.connectTimeoutMs);
    attachInput(socket, conn.decoder, () => this.onInput(conn), () => conn.state === 'handshake');
    socket.on('error', (err) => this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${this.label}: ${err.message}`, { cause: err })));
    // The server half-closing means it reads no more requests (it is closing or found the stream damaged).
    socket.on('end', () => this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `peer ${this.label} closed the connection`)));
    socket.on('close', () => this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `the connection to peer ${this.label} closed`)));
    conn.writer.write(handshake.hello());
    return conn;
  }

  /** Bytes arrived (queued in the decoder, or read straight into the reply payload being received). */
  private onInput(conn: Connection): void {
    if (conn.state === 'closed') {
      conn.decoder.dispose();
      return;
    }
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
    const { remotePeerUuid, remoteIncarnation, version } = step.result;
    if (this.expectedPeerUuid !== undefined && remotePeerUuid !== this.expectedPeerUuid) {
      this.fail(conn, new TorusError('TORUS_ERR_PEER_UNAVAILABLE', `the peer at ${this.label} is ${remotePeerUuid}, not ${this.expectedPeerUuid}`));
      return;
    }
    conn.state = 'ready';
    conn.connectTimer?.cancel();
    conn.connectTimer = null;
    this.failures = 0;
    this.lastError = null;
    this.log.debug({ remotePeerUuid, incarnation: remoteIncarnation, version }, 'peer connection ready');
    const previous = this.serverIncarnation;
    this.serverIncarnation = remoteIncarnation;
    this.serverUuid = remotePeerUuid;
    // Before any request goes out on this connection: whoever tracks what
    // the peer holds in memory must learn of a restart before it sees
    // answers from the new incarnation.
    if (previous !== remoteIncarnation) {
      if (previous !== null) this.log.info({ remotePeerUuid, previous, current: remoteIncarnation }, 'peer restarted (new incarnation)');
      try {
        this.onIncarnationChange?.({ peerUuid: remotePeerUuid, previous, current: remoteIncarnation });
      } catch (err) {
        this.log.error({ err }, 'onIncarnationChange threw');
      }
    }
    for (const p of conn.queued.splice(0)) this.send(conn, p);
  }

  private onResponse(conn: Connection, frame: ResponseFrame): void {
    const p = conn.sent.get(frame.requestId);
    if (p == null) {
      // Its request timed out; the late answer has nobody waiting.
      releaseBuffer(frame.payload);
      const bytes = conn.abandoned.get(frame.requestId);
      if (bytes !== undefined) {
        conn.abandoned.delete(frame.requestId);
        conn.freeIds.push(frame.requestId);
        this.inflightBytes -= bytes;
        this.admit();
      }
      this.log.debug({ requestId: frame.requestId }, 'peer answer for an unknown request');
      return;
    }
    if (frame.opcode !== p.req.opcode) {
      releaseBuffer(frame.payload);
      throw this.brokenReply(`request ${frame.requestId} was ${OPCODE_NAMES[p.req.opcode]}, the answer is for opcode ${frame.opcode}`);
    }
    // Answered: the id may go to a new request (settle() below takes p off it first).
    conn.freeIds.push(frame.requestId);
    if (frame.status === STATUS_ERROR) {
      const err = decodeErrorPayload(frame.payload, { peer: this.label });
      releaseBuffer(frame.payload);
      this.settle(p, err);
      return;
    }
    let value: unknown;
    try {
      value = decodeReply(p.req, frame.payload);
    } catch (err) {
      releaseBuffer(frame.payload);
      // A reply that does not fit its request: this peer cannot be trusted; drop the connection.
      const broken = err instanceof TorusError ? this.brokenReply(err.message) : err;
      this.settle(p, broken);
      throw broken;
    }
    // A READ's bytes are a view of the payload and go to the caller with it; nothing else keeps it.
    if (p.req.opcode !== Opcode.READ) releaseBuffer(frame.payload);
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
    conn.decoder.dispose();
    for (const bytes of conn.abandoned.values()) this.inflightBytes -= bytes;
    conn.abandoned.clear();
    if (lastWords.length > 0 && !conn.socket.destroyed) {
      conn.socket.end(Buffer.concat(lastWords), () => conn.socket.destroy());
    } else {
      conn.socket.destroy();
    }
    this.failures++;
    const ceiling = Math.min(this.opts.reconnectDelayMaxMs, this.opts.reconnectDelayMinMs * 2 ** Math.min(this.failures - 1, 30));
    const delay = Math.max(1, Math.round(ceiling / 2 + (this.opts.random.next() * ceiling) / 2));
    this.retryAt = this.opts.clock.monotonic() + delay;
    this.lastError = err;
    const sent = [...conn.sent.values()].filter((p): p is Pending => p !== null);
    const fields = { err, inflight: sent.length + conn.queued.length, retryInMs: delay };
    // Closing (close() gave up waiting) was logged there.
    if (err.code === 'TORUS_ERR_STORE_CLOSED') this.log.debug(fields, 'peer connection dropped at close');
    else if (wasReady || err.code !== 'TORUS_ERR_PEER_UNAVAILABLE') this.log.warn(fields, 'peer connection lost');
    else this.log.debug(fields, 'peer connection failed');
    // A damaged or misbehaving stream fails every request on it with that error; a drop is "unavailable".
    for (const p of [...conn.queued, ...sent]) this.settle(p, err);
  }
}
