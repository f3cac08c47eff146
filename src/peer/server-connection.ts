import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { BlockStore } from '../store/block-store.js';
import type { Clock } from '../util/clock.js';
import {
  RequestDecoder,
  encodeBitmap,
  encodeResponseHeader,
  encodeUsage,
  errorToPayload,
  validateRequest,
  type RequestFrame,
  type ValidRequest,
} from './codec.js';
import { readHandshakeMessage } from './handshake-codec.js';
import { ServerHandshake, type HandshakeConfig } from './handshake.js';
import { Opcode, STATUS_ERROR, STATUS_OK, payloadBytesMaxFor } from './protocol.js';
import { CorkedWriter } from './transport.js';

export interface ServerConnectionLimits {
  readonly inflightMax: number;
  readonly inflightBytesMax: number;
  readonly handshakeTimeoutMs: number;
}

const EMPTY = Buffer.alloc(0);

/**
 * One client connection of a PeerServer: handshake, then requests handled
 * concurrently and answered as they finish. Reading stops while the
 * connection is at its in-flight limits or its replies are not being read.
 */
export class ServerConnection {
  private state: 'handshake' | 'serving' | 'draining' | 'closed' = 'handshake';
  private readonly decoder: RequestDecoder;
  private readonly handshake: ServerHandshake;
  private readonly writer: CorkedWriter;
  private handshakeTimer: { cancel(): void } | null;
  private inflight = 0;
  private inflightBytes = 0;
  private paused = false;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    private readonly socket: Duplex,
    private readonly store: BlockStore,
    handshakeConfig: HandshakeConfig,
    nonce: Buffer,
    private readonly limits: ServerConnectionLimits,
    clock: Clock,
    private readonly log: Logger,
  ) {
    this.decoder = new RequestDecoder(payloadBytesMaxFor(store.blockSize));
    this.handshake = new ServerHandshake(handshakeConfig, nonce);
    this.writer = new CorkedWriter(socket);
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    this.handshakeTimer = clock.setTimeout(() => {
      this.handshakeTimer = null;
      if (this.state === 'handshake') {
        this.log.warn({ timeoutMs: limits.handshakeTimeoutMs }, 'peer handshake timed out');
        this.destroy();
      }
    }, limits.handshakeTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
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
    this.decoder.queue.clear();
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
    this.decoder.queue.clear();
    this.resolveClosed();
  }

  private onData(chunk: Buffer): void {
    if (this.state === 'draining' || this.state === 'closed') return;
    this.decoder.push(chunk);
    if (this.state === 'handshake') this.continueHandshake();
    if (this.state === 'serving') this.pump();
  }

  private continueHandshake(): void {
    for (;;) {
      let msg;
      try {
        msg = readHandshakeMessage(this.decoder.queue);
      } catch (err) {
        this.log.warn({ err }, 'peer handshake failed');
        this.destroy();
        return;
      }
      if (msg === null) return;
      const step = this.handshake.receive(msg);
      for (const out of step.out) this.writer.write(out);
      if (step.kind === 'fail') {
        this.log.warn({ err: step.error }, 'peer handshake failed');
        this.state = 'draining';
        this.socket.end();
        return;
      }
      if (step.kind === 'done') {
        this.handshakeTimer?.cancel();
        this.handshakeTimer = null;
        this.state = 'serving';
        this.log.debug({ peer: step.result.remotePeerUuid, version: step.result.version }, 'peer connection ready');
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
    this.log.warn({ err }, 'peer connection stream is damaged; closing it');
    const requestId = err.details?.['requestId'];
    if (typeof requestId === 'number') {
      const opcode = typeof err.details?.['opcode'] === 'number' ? (err.details['opcode'] as number) : 0;
      this.reply(opcode, requestId, STATUS_ERROR, errorToPayload(err));
    }
    this.drain();
  }

  private dispatch(frame: RequestFrame): void {
    const req = validateRequest(frame, this.store.blockSize);
    if (req instanceof TorusError) {
      this.log.debug({ err: req, requestId: frame.requestId }, 'invalid peer request');
      this.reply(frame.opcode, frame.requestId, STATUS_ERROR, errorToPayload(req));
      return;
    }
    const cost = frame.payload.length + (req.opcode === Opcode.READ ? req.length : 0);
    this.inflight++;
    this.inflightBytes += cost;
    this.handle(req).then(
      (payload) => this.finish(frame, cost, STATUS_OK, payload),
      (err: unknown) => {
        if (err instanceof TorusError && err.code === 'TORUS_ERR_ASSERTION') {
          // The request was validated, so the store broke an invariant: a bug worth an error log.
          this.log.error({ err, requestId: frame.requestId }, 'block store assertion failed');
        } else {
          this.log.debug({ err, requestId: frame.requestId }, 'peer request failed');
        }
        this.finish(frame, cost, STATUS_ERROR, errorToPayload(err));
      },
    );
  }

  private finish(frame: RequestFrame, cost: number, status: number, payload: Buffer): void {
    this.inflight--;
    this.inflightBytes -= cost;
    this.reply(frame.opcode, frame.requestId, status, payload);
    if (this.state === 'draining') this.maybeFinishDrain();
    else this.pump();
  }

  private async handle(req: ValidRequest): Promise<Buffer> {
    const store = this.store;
    switch (req.opcode) {
      case Opcode.READ:
        return store.read(req.ref, req.offset, req.length);
      case Opcode.WRITE:
        await store.write(req.ref, req.offset, req.data, { fua: req.fua, fence: req.fence });
        return EMPTY;
      case Opcode.ZERO:
        await store.zero(req.ref, req.offset, req.length, { fua: req.fua, punch: req.punch, fence: req.fence });
        return EMPTY;
      case Opcode.FLUSH:
        await store.flush();
        return EMPTY;
      case Opcode.ALLOCATED:
        return encodeBitmap(await store.allocated(req.refs));
      case Opcode.DELETE_VOLUME:
        await store.deleteVolume(req.volumeId);
        return EMPTY;
      case Opcode.USAGE:
        return encodeUsage(store.usage());
      case Opcode.PING:
        return EMPTY;
    }
  }

  private reply(opcode: number, requestId: number, status: number, payload: Buffer): void {
    if (this.state === 'closed') return;
    this.writer.write(encodeResponseHeader(opcode, requestId, status, payload), payload);
  }

  private maybeFinishDrain(): void {
    if (this.state === 'draining' && this.inflight === 0) this.socket.end();
  }
}
