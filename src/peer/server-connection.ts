import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { ReplicaApi } from '../model/replica-api.js';
import { releaseBuffer } from '../util/buffer-pool.js';
import type { Clock } from '../util/clock.js';
import { isAssertionFailure, type InvariantBroken } from '../util/invariant.js';
import {
  RequestDecoder,
  type PayloadBuffers,
  encodeReply,
  encodeResponseHeader,
  knownReplyCrc,
  errorToPayload,
  validateRequest,
  type PeerRequest,
  type RequestFrame,
} from './codec.js';
import { readHandshakeMessage } from './handshake-codec.js';
import { ServerHandshake, type HandshakeConfig } from './handshake.js';
import { OPCODE_NAMES, Opcode, STATUS_ERROR, STATUS_OK, requestPayloadBytesMaxFor } from './protocol.js';
import type { RefusalLog } from './refusal-log.js';
import { attachInput, CorkedWriter } from './transport.js';

/**
 * After the server ends its side (a refusal, a damaged stream, a drain), the
 * client has this long to close its own before the socket is cut: a peer
 * that never closes must not hold a connection slot forever.
 */
export const END_LINGER_MS = 5_000;

export interface ServerConnectionLimits {
  /** Requests handed to the replica at once; further requests wait in the socket. */
  readonly inflightMax: number;
  /** Payload bytes of the requests handed to the replica plus unsent replies before reading stops. */
  readonly inflightBytesMax: number;
  readonly handshakeTimeoutMs: number;
}

/** Who is on the other end, for logs and the refusal log. */
export interface RemoteEnd {
  /** host:port, for log lines. */
  readonly label: string;
  /** The host alone: refusals are counted per address, whatever the port. */
  readonly host: string;
}

/**
 * One client connection of a PeerServer: handshake, then requests handed to
 * the replica in the order they arrive (synchronously: the replica queues
 * changes per block on call order) and answered as they finish, in any
 * order. Reading stops while the connection is at its in-flight limits or
 * its replies are not being read.
 */
export class ServerConnection {
  private state: 'handshake' | 'serving' | 'draining' | 'closed' = 'handshake';
  private readonly decoder: RequestDecoder;
  private readonly handshake: ServerHandshake;
  private readonly writer: CorkedWriter;
  private handshakeTimer: { cancel(): void } | null;
  private lingerTimer: { cancel(): void } | null = null;
  private inflight = 0;
  private inflightBytes = 0;
  private paused = false;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    private readonly socket: Duplex,
    private readonly api: ReplicaApi,
    private readonly handshakeConfig: HandshakeConfig,
    nonce: Buffer,
    private readonly limits: ServerConnectionLimits,
    private readonly clock: Clock,
    private readonly remote: RemoteEnd,
    private readonly refusals: RefusalLog,
    private readonly log: Logger,
    /** A request broke an invariant here (util/invariant.ts): it is not answered, the connection is cut. */
    private readonly invariantBroken: InvariantBroken,
    /** Where request payloads are received (the daemon's pool); plain buffers by default. */
    buffers?: PayloadBuffers,
  ) {
    this.decoder = new RequestDecoder(requestPayloadBytesMaxFor(handshakeConfig.blockSize), buffers);
    this.handshake = new ServerHandshake(handshakeConfig, nonce);
    this.writer = new CorkedWriter(socket);
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    this.handshakeTimer = clock.setTimeout(() => {
      this.handshakeTimer = null;
      if (this.state === 'handshake') {
        this.refusals.refused(
          this.remote.host,
          new TorusError('TORUS_ERR_TIMEOUT', `no handshake within ${limits.handshakeTimeoutMs} ms`),
          { remote: this.remote.label },
        );
        this.destroy();
      }
    }, limits.handshakeTimeoutMs);
    attachInput(socket, this.decoder, () => this.onInput(), () => this.state === 'handshake');
    // The client half-closing means "no more requests": answer those in flight, then close.
    socket.on('end', () => this.drain());
    socket.on('drain', () => this.pump());
    socket.on('error', (err) => this.log.debug({ err }, 'peer connection error'));
    socket.on('close', () => this.onClose());
  }

  /** Resolves once the socket is closed. */
  get closed(): Promise<void> {
    return this.closedPromise;
  }

  /** Stops reading requests; answers those in flight, then closes. */
  drain(): void {
    if (this.state === 'closed' || this.state === 'draining') return;
    if (this.state === 'handshake') {
      this.destroy();
      return;
    }
    this.state = 'draining';
    // Keep reading (and discarding): a paused socket never sees the client's FIN, so it would never close.
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    this.decoder.dispose();
    this.maybeFinishDrain();
  }

  destroy(): void {
    this.socket.destroy();
    this.onClose();
  }

  private onClose(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.handshakeTimer?.cancel();
    this.handshakeTimer = null;
    this.lingerTimer?.cancel();
    this.lingerTimer = null;
    this.decoder.dispose();
    this.resolveClosed();
  }

  /** Bytes arrived (queued in the decoder, or read straight into the payload being received). */
  private onInput(): void {
    if (this.state === 'draining' || this.state === 'closed') {
      this.decoder.dispose();
      return;
    }
    if (this.state === 'handshake') this.continueHandshake();
    if (this.state === 'serving') this.pump();
  }

  private continueHandshake(): void {
    for (;;) {
      let msg;
      try {
        msg = readHandshakeMessage(this.decoder.queue);
      } catch (err) {
        this.refusals.refused(this.remote.host, err, { remote: this.remote.label });
        this.destroy();
        return;
      }
      if (msg === null) return;
      const step = this.handshake.receive(msg);
      for (const out of step.out) this.writer.write(out);
      if (step.kind === 'fail') {
        this.refusals.refused(this.remote.host, step.error, { remote: this.remote.label });
        this.state = 'draining';
        this.endThenCut();
        return;
      }
      if (step.kind === 'done') {
        this.handshakeTimer?.cancel();
        this.handshakeTimer = null;
        this.state = 'serving';
        this.log.debug(
          { peer: step.result.remotePeerUuid, incarnation: step.result.remoteIncarnation, version: step.result.version },
          'peer connection ready',
        );
        return;
      }
    }
  }

  /** Starts every complete request the limits allow, then pauses or resumes reading. */
  private pump(): void {
    while (this.state === 'serving' && this.hasRoom()) {
      let frame: RequestFrame | null;
      try {
        frame = this.decoder.next();
      } catch (err) {
        this.onBrokenStream(err as TorusError);
        return;
      }
      if (frame === null) break;
      this.dispatch(frame);
    }
    if (this.state !== 'serving') return;
    const shouldPause = !this.hasRoom() || this.socket.writableLength > this.limits.inflightBytesMax;
    if (shouldPause && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!shouldPause && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private hasRoom(): boolean {
    // One request always fits, so a single large request cannot deadlock.
    if (this.inflight === 0) return true;
    return this.inflight < this.limits.inflightMax && this.inflightBytes < this.limits.inflightBytesMax;
  }

  /**
   * A frame failed its checksum or broke the framing: nothing after it can be
   * trusted. Tell the client which request was damaged (when known), answer
   * what is in flight, then close.
   */
  private onBrokenStream(err: TorusError): void {
    if (err.code === 'TORUS_ERR_ASSERTION') {
      this.broken(err, {});
      return;
    }
    this.log.warn({ err }, 'peer connection stream is damaged; closing it');
    const requestId = err.details?.['requestId'];
    if (typeof requestId === 'number') {
      const opcode = typeof err.details?.['opcode'] === 'number' ? (err.details['opcode'] as number) : 0;
      this.reply(opcode, requestId, STATUS_ERROR, [errorToPayload(err)]);
    }
    this.drain();
  }

  /** Validates, then calls the replica at once: requests reach it in arrival order. */
  private dispatch(frame: RequestFrame): void {
    const req = validateRequest(frame, this.handshakeConfig.blockSize);
    if (req instanceof TorusError) {
      this.log.debug({ err: req, requestId: frame.requestId, opcode: frame.opcode }, 'invalid peer request');
      releaseBuffer(frame.payload);
      this.reply(frame.opcode, frame.requestId, STATUS_ERROR, [errorToPayload(req)]);
      return;
    }
    const cost = frame.payload.length + (req.opcode === Opcode.READ ? req.length : 0);
    this.inflight++;
    this.inflightBytes += cost;
    this.call(req).then(
      (reply) => this.finish(frame, cost, STATUS_OK, reply.parts, reply.crc),
      (err: unknown) => {
        if (isAssertionFailure(err)) {
          // The request was validated, so the replica (or its answer) broke
          // an invariant: a bug of this process, not an answer for the
          // client (which would take it as this replica's refusal and go on).
          releaseBuffer(frame.payload);
          this.broken(err, { requestId: frame.requestId, opcode: OPCODE_NAMES[req.opcode] });
          return;
        }
        this.log.debug({ err, requestId: frame.requestId }, 'peer request failed');
        this.finish(frame, cost, STATUS_ERROR, [errorToPayload(err)]);
      },
    );
  }

  /**
   * Calls the replica method synchronously (no await before it) and encodes
   * its answer. A method that throws instead of rejecting becomes a rejection.
   */
  private call(req: PeerRequest): Promise<{ parts: Buffer[]; crc: number | undefined }> {
    let pending: Promise<unknown>;
    try {
      pending = this.invoke(req);
    } catch (err) {
      return Promise.reject(err);
    }
    // Encoding inside the promise chain: a value the protocol cannot carry (an assertion of the encoder) goes where the replica's own do.
    return pending.then((value) => {
      const parts = encodeReply(req, value as never);
      return { parts, crc: knownReplyCrc(req, value as never, parts) };
    });
  }

  private invoke(req: PeerRequest): Promise<unknown> {
    const api = this.api;
    switch (req.opcode) {
      case Opcode.READ:
        return api.read(req.ctx, req.ref, req.offset, req.length);
      case Opcode.WRITE:
        return api.write(req.ctx, req.ref, req.offset, req.data, req.stamp, { fua: req.fua, pageCrcs: req.pageCrcs });
      case Opcode.ZERO:
        return api.zero(req.ctx, req.ref, req.offset, req.length, req.stamp, { punch: req.punch, fua: req.fua });
      case Opcode.INSTALL:
        return api.install(req.ctx, req.ref, req.copy, { token: req.token, fua: req.fua });
      case Opcode.CONFIRM:
        return api.confirm(req.ctx, req.ref, req.version, req.digest, { token: req.token });
      case Opcode.META:
        return api.meta(req.ctx, req.refs);
      case Opcode.EXPECT:
        api.expectWrites?.(req.ctx, req.refs);
        return Promise.resolve();
      case Opcode.LIST:
        return api.list(req.ctx, req.volumeId, req.after, req.limit);
      case Opcode.VERIFY:
        return api.verify(req.ctx, req.ref);
      case Opcode.DROP:
        return api.drop(req.ctx, req.ref, req.version, { token: req.token });
      case Opcode.FENCE:
        return api.fence(req.ctx, req.volumeId, req.token);
      case Opcode.FLUSH:
        return api.flush(req.ctx);
      case Opcode.DELETE_VOLUME:
        return api.deleteVolume(req.ctx, req.volumeId);
      case Opcode.USAGE:
        return api.usage(req.ctx);
      case Opcode.HELLO:
        return api.hello(req.ctx);
    }
  }

  /**
   * Reported to the process's hook, which stops it; the connection is cut
   * without answering what is in flight (in case the hook lets the process
   * live: tests), as a crash would.
   */
  private broken(err: TorusError, fields: Record<string, unknown>): void {
    this.invariantBroken(err, { module: 'peer-server', remote: this.remote.label, ...fields });
    this.destroy();
  }

  private finish(frame: RequestFrame, cost: number, status: number, parts: Buffer[], payloadCrc?: number): void {
    // The replica is done with the payload (a store that keeps it longer, e.g. for a pwrite still running, retains it).
    releaseBuffer(frame.payload);
    this.inflight--;
    this.inflightBytes -= cost;
    this.reply(frame.opcode, frame.requestId, status, parts, payloadCrc);
    // A READ's bytes may be a pooled read region of the store: the socket holds its own reference while they are queued.
    for (const part of parts) releaseBuffer(part);
    if (this.state === 'draining') this.maybeFinishDrain();
    else this.pump();
  }

  private reply(opcode: number, requestId: number, status: number, parts: Buffer[], payloadCrc?: number): void {
    if (this.state === 'closed') return;
    this.writer.write(encodeResponseHeader(opcode, requestId, status, parts, payloadCrc), ...parts);
  }

  private maybeFinishDrain(): void {
    if (this.state === 'draining' && this.inflight === 0) this.endThenCut();
  }

  private endThenCut(): void {
    this.socket.end();
    if (this.lingerTimer !== null || this.state === 'closed') return;
    this.lingerTimer = this.clock.setTimeout(() => {
      this.lingerTimer = null;
      this.destroy();
    }, END_LINGER_MS);
  }
}
