/**
 * One NBD connection: handshake, option haggling and transmission over any
 * Duplex stream (a TCP socket in production, an in-process pair in tests).
 *
 * Parsing is a synchronous loop over queued bytes; every request starts as
 * soon as its header (and payload) is parsed, so many run at once and reply
 * out of order. Backpressure is done by pausing the stream, never by
 * buffering: the socket is not read while requests in flight, their bytes or
 * the queued replies are at their limits.
 */
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { TorusError } from '../errors/torus-error.js';
import type { Clock } from '../util/clock.js';
import { BufferPool, releaseBuffer } from '../util/buffer-pool.js';
import { assert } from '../util/assert.js';
import { crashOnInvariantBroken, isAssertionFailure, type InvariantBroken } from '../util/invariant.js';
import { ByteQueue } from '../util/byte-queue.js';
import { allSettledNow, InFlight } from '../util/in-flight.js';
import type { DirectReadTarget } from '../util/socket-direct-reads.js';
import {
  clipExtents,
  decodeOptionHeader,
  decodeRequestHeader,
  encodeBlockStatusReply,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReplyData,
  encodeOptionReply,
  encodeReadChunkHeader,
  encodeServerReplyData,
  encodeSimpleReply,
  encodeStructuredError,
  parseInfoRequest,
  parseMetaContextRequest,
  transmissionFlags,
  type OptionHeader,
  type RequestHeader,
} from './codec.js';
import { errnoName, errorMessage, optionReplyName, toNbdErrno, toOptionError } from './errno.js';
import type { ExportProvider, NbdExport } from './export.js';
import type { ByteBudget } from './byte-budget.js';
import type { NbdLimits } from './limits.js';
import {
  BLOCK_SIZE_MIN,
  BLOCK_SIZE_PREFERRED,
  CLIENT_FLAGS_BYTES,
  CLIENT_FLAGS_KNOWN,
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_DISC,
  CMD_FLAG_FUA,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  INFO_DESCRIPTION,
  INFO_NAME,
  META_CONTEXT_BASE_ALLOCATION,
  META_CONTEXT_BASE_ALLOCATION_ID,
  NBD_EIO,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  OPTION_HEADER_BYTES,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_SHUTDOWN,
  REP_ERR_TOO_BIG,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
  REQUEST_HEADER_BYTES,
  commandName,
  optionName,
} from './protocol.js';
import { payloadBytes, validateRequest, type ValidationContext } from './validate.js';

export interface NbdRequestInfo {
  /** read, write, flush, trim, cache, write_zeroes, block_status, unknown. */
  readonly command: string;
  /** Payload bytes moved: the length of a READ or WRITE, 0 otherwise. */
  readonly bytes: number;
  readonly latencyMs: number;
  /** NBD error value when the request failed. */
  readonly error?: number;
}

export type RequestObserver = (info: NbdRequestInfo) => void;

export interface NbdSessionOptions {
  readonly stream: Duplex;
  /** host:port of the peer, for logs and for ExportProvider.open. */
  readonly remote: string;
  readonly provider: ExportProvider;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly limits: NbdLimits;
  readonly onRequest?: RequestObserver;
  /** Where WRITE payloads are read into; each is released once its request is done. */
  readonly pool?: BufferPool;
  /**
   * Lets the transport read straight into the session's buffers (a TCP
   * socket, see util/socket-direct-reads.ts); returns false when it cannot,
   * and the session reads 'data' events instead.
   */
  readonly attachInput?: (target: DirectReadTarget) => boolean;
  /** Shared by every connection of a server (limits.serverInflightBytesMax); none: no shared limit. */
  readonly budget?: ByteBudget;
  /**
   * An export (or this session) broke an invariant (util/invariant.ts): the
   * request gets no reply and the connection is dropped. Default: crash.
   */
  readonly onInvariantBroken?: InvariantBroken;
}

/** The reused buffer socket reads land in when no payload is being read. */
const READ_BUFFER_BYTES = 64 * 1024;

type Phase =
  | 'client-flags'
  | 'option-header'
  | 'request-header'
  /** Filling a buffer of known length (an option's data, a WRITE payload). */
  | 'target'
  /** Dropping a payload we refused (oversized option, invalid WRITE). */
  | 'skip'
  /** A parsed READ/WRITE waits for room in the server's byte budget; its payload stays unread. */
  | 'budget'
  | 'stopped';

interface Timer {
  cancel(): void;
}

/** What a request holds of the server's byte budget: READ and WRITE lengths. */
function budgetBytes(h: RequestHeader): number {
  return h.type === CMD_READ || h.type === CMD_WRITE ? h.length : 0;
}

export class NbdSession {
  readonly remote: string;
  /** Resolves once the stream is closed and the export released. */
  readonly closed: Promise<void>;

  private readonly stream: Duplex;
  private readonly provider: ExportProvider;
  private readonly log: Logger;
  private readonly debug: boolean;
  private readonly clock: Clock;
  private readonly limits: NbdLimits;
  private readonly onRequest: RequestObserver | undefined;
  private readonly invariantBroken: InvariantBroken;
  private readonly queue = new ByteQueue();
  private readonly pool: BufferPool;
  /** Direct reads only: the buffer reads land in while no target takes them. */
  private readBuf: Buffer | null = null;
  private target: Buffer | null = null;
  private targetFilled = 0;
  private targetNext: Phase = 'request-header';
  private targetDone: ((b: Buffer) => void) | null = null;
  private resolveClosed!: () => void;

  private phase: Phase = 'client-flags';
  private pumping = false;
  private noZeroes = false;
  private structured = false;
  /** Export name that base:allocation was selected for, if any. */
  private metaContextExport: string | null = null;
  private optionCount = 0;
  private optionBusy = false;
  private skipRemaining = 0;
  private afterSkip: (() => void) | null = null;
  private skipNextPhase: Phase = 'request-header';

  private exp: NbdExport | null = null;
  private exportName = '';
  private ctx: ValidationContext | null = null;
  private inflight = 0;
  private inflightBytes = 0;
  private readonly budget: ByteBudget | null;
  /** Cancels this session's wait for budget, while in phase 'budget'. */
  private cancelBudgetWait: (() => void) | null = null;
  /** The budget of the WRITE whose payload is being read (given back if the connection ends first). */
  private pendingWriteBytes = 0;
  /** Handlings of WRITE/TRIM/WRITE_ZEROES in flight, for FLUSH ordering. */
  private readonly writes = new InFlight<Promise<unknown>>();
  private idleWaiters: Array<() => void> = [];

  private corked = false;
  private waitingDrain = false;
  /** No more requests are parsed (DISC, close(), input ended). */
  private ending = false;
  private inputEnded = false;
  private outputEnding = false;
  private endQueued = false;
  private finished = false;
  private released = false;
  private handshakeTimer: Timer | null = null;
  private closeTimer: Timer | null = null;

  constructor(opts: NbdSessionOptions) {
    this.stream = opts.stream;
    this.remote = opts.remote;
    this.provider = opts.provider;
    this.clock = opts.clock;
    this.limits = opts.limits;
    this.onRequest = opts.onRequest;
    this.invariantBroken = opts.onInvariantBroken ?? crashOnInvariantBroken;
    this.pool = opts.pool ?? new BufferPool();
    this.budget = opts.budget ?? null;
    this.log = opts.logger.child({ module: 'nbd', remote: opts.remote });
    this.debug = this.log.isLevelEnabled('debug');
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });

    const direct = opts.attachInput?.(this.directTarget) ?? false;
    if (!direct) {
      this.stream.on('data', (chunk: Buffer) => {
        // Once our side is ending, input is only drained so the peer's FIN is seen.
        if (this.finished || this.outputEnding) return;
        this.queue.push(chunk);
        this.pump();
      });
    }
    this.stream.on('end', () => {
      this.inputEnded = true;
      this.pump();
    });
    this.stream.on('error', (err: Error) => {
      if (this.debug) this.log.debug({ err }, 'nbd stream error');
    });
    this.stream.on('close', () => this.finish());

    this.handshakeTimer = this.clock.setTimeout(() => {
      this.handshakeTimer = null;
      this.abort('handshake not finished in time', { handshakeTimeoutMs: this.limits.handshakeTimeoutMs });
    }, this.limits.handshakeTimeoutMs);

    if (this.debug) this.log.debug('nbd client connected');
    this.write(encodeGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
  }

  /** Requests being handled right now (for tests and metrics). */
  get inflightCount(): number {
    return this.inflight;
  }

  /**
   * Ends the session for a server shutdown: reads no more requests, lets
   * in-flight ones reply (bounded by closeTimeoutMs), then closes.
   */
  close(): Promise<void> {
    if (this.finished) return this.closed;
    this.ending = true;
    if (this.exp === null) {
      this.stream.destroy();
      return this.closed;
    }
    // A request still waiting for budget was never started: it is dropped
    // like the requests not parsed yet.
    this.cancelBudgetWait?.();
    this.cancelBudgetWait = null;
    this.phase = 'stopped';
    this.updateFlow();
    this.endWhenIdle();
    this.armCloseTimer();
    return this.closed;
  }

  /** Drops the connection at once (in-flight replies are lost). */
  destroy(): void {
    this.stream.destroy();
  }

  // ------------------------------------------------------------ parsing

  private pump(): void {
    if (this.pumping || this.finished) return;
    this.pumping = true;
    try {
      while (!this.finished && this.step()) {
        // each step consumed bytes or changed phase
      }
    } finally {
      this.pumping = false;
    }
    if (this.finished) return;
    this.updateFlow();
    // A request waiting for budget is still to be answered, even when its client sent its last byte.
    const moreToParse = (this.phase === 'request-header' && !this.ending && this.queue.length >= REQUEST_HEADER_BYTES) || this.phase === 'budget';
    if (this.inputEnded && !this.optionBusy && !moreToParse) {
      // The client sent its last byte: answer what was parsed, then close.
      this.ending = true;
      this.endWhenIdle();
    }
  }

  /** Returns true when it made progress. */
  private step(): boolean {
    const q = this.queue;
    switch (this.phase) {
      case 'client-flags': {
        if (q.length < CLIENT_FLAGS_BYTES) return false;
        const flags = q.take(CLIENT_FLAGS_BYTES).readUInt32BE(0);
        if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
          this.abort('unknown client flags', { flags });
          return false;
        }
        this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
        this.phase = 'option-header';
        return true;
      }
      case 'option-header': {
        if (this.optionBusy || q.length < OPTION_HEADER_BYTES) return false;
        const h = decodeOptionHeader(q.take(OPTION_HEADER_BYTES));
        if (!h.magicOk) {
          this.abort('bad option magic');
          return false;
        }
        if (++this.optionCount > this.limits.optionsMax) {
          this.abort('too many options', { optionsMax: this.limits.optionsMax });
          return false;
        }
        if (h.length > this.limits.optionBytesMax) {
          if (h.option === OPT_EXPORT_NAME) {
            // EXPORT_NAME cannot be answered with an error.
            this.abort('export name option too long', { length: h.length });
            return false;
          }
          this.startSkip(h.length, 'option-header', () =>
            this.reply(h.option, REP_ERR_TOO_BIG, Buffer.from(`option data longer than ${this.limits.optionBytesMax} bytes`)),
          );
          return true;
        }
        // Copied out: option handling outlives the bytes' place in the queue.
        this.startTarget(Buffer.allocUnsafe(h.length), 'option-header', (data) => this.runOption(h.option, data));
        return true;
      }
      case 'target': {
        const t = this.target!;
        if (this.targetFilled < t.length && q.length > 0) this.targetFilled += q.copyTo(t, this.targetFilled, Math.min(q.length, t.length - this.targetFilled));
        if (this.targetFilled < t.length) return false;
        const done = this.targetDone!;
        this.target = null;
        this.targetDone = null;
        this.targetFilled = 0;
        this.phase = this.targetNext;
        done(t);
        return true;
      }
      case 'skip': {
        if (this.skipRemaining > 0) this.skipRemaining -= q.skip(this.skipRemaining);
        if (this.skipRemaining > 0) return false;
        const then = this.afterSkip;
        this.afterSkip = null;
        this.phase = this.skipNextPhase;
        then?.();
        return true;
      }
      case 'request-header': {
        if (this.ending || this.transmissionBlocked() || q.length < REQUEST_HEADER_BYTES) return false;
        const h = decodeRequestHeader(q.take(REQUEST_HEADER_BYTES));
        const v = validateRequest(h, this.ctx!);
        if (v.kind === 'fatal') {
          this.abort(v.reason, { type: h.type, length: h.length });
          return false;
        }
        if (v.kind === 'error') {
          if (this.debug) this.log.debug({ command: commandName(h.type), reason: v.reason, errno: v.errno }, 'nbd request refused');
          const refuse = () => {
            this.replyError(h, v.errno, v.reason);
            this.observe(h, 0, v.errno);
          };
          const payload = payloadBytes(h);
          if (payload > 0) this.startSkip(payload, 'request-header', refuse);
          else refuse();
          return true;
        }
        if (h.type === CMD_DISC) {
          if (this.debug) this.log.debug('nbd client disconnect');
          this.ending = true;
          this.phase = 'stopped';
          this.endWhenIdle();
          this.armCloseTimer();
          return false;
        }
        const bytes = budgetBytes(h);
        if (bytes > 0 && this.budget !== null && !this.budget.tryTake(bytes)) {
          this.phase = 'budget';
          this.cancelBudgetWait = this.budget.wait(bytes, () => {
            this.cancelBudgetWait = null;
            if (this.phase !== 'budget' || this.finished) {
              // Closed meanwhile (close() and finish() cancel, this is a safety net): never start it.
              this.budget?.give(bytes);
              return;
            }
            this.phase = 'request-header';
            this.begin(h);
            this.pump();
          });
          return false;
        }
        this.begin(h);
        return true;
      }
      case 'budget':
        return false;
      case 'stopped':
        return false;
    }
  }

  /** Starts a request that passed validation (and holds its budget). */
  private begin(h: RequestHeader): void {
    if (h.type === CMD_WRITE) {
      this.pendingWriteBytes = h.length;
      // The payload is read into its final buffer: with direct reads the
      // socket fills it itself, without them one copy from the queue.
      this.startTarget(this.pool.acquire(h.length), 'request-header', (payload) => this.dispatch(h, payload));
      return;
    }
    this.dispatch(h, undefined);
  }

  private startTarget(buf: Buffer, next: Phase, done: (b: Buffer) => void): void {
    this.phase = 'target';
    this.target = buf;
    this.targetFilled = 0;
    this.targetNext = next;
    this.targetDone = done;
  }

  /**
   * Direct reads (util/socket-direct-reads.ts): a read goes straight into
   * the rest of the payload being read when nothing is queued ahead of it,
   * otherwise into the one reused read buffer.
   */
  private readonly directTarget: DirectReadTarget = {
    buffer: (): Buffer => {
      const t = this.target;
      if (t !== null && this.phase === 'target' && this.queue.length === 0 && this.targetFilled < t.length) return t.subarray(this.targetFilled);
      this.readBuf ??= Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
      return this.readBuf;
    },
    onRead: (n: number, buf: Buffer): void => {
      if (this.finished || this.outputEnding) return;
      const t = this.target;
      if (t !== null && buf.buffer === t.buffer && buf.byteOffset === t.byteOffset + this.targetFilled) {
        assert(this.queue.length === 0 && this.targetFilled + n <= t.length, 'a direct read lands at the end of what the target holds');
        this.targetFilled += n;
      } else {
        this.queue.push(buf.subarray(0, n));
      }
      this.pump();
      // The read buffer is read into again next: keep what is left of it.
      if (buf === this.readBuf) this.queue.detach();
    },
  };

  private startSkip(bytes: number, next: Phase, then: () => void): void {
    this.phase = 'skip';
    this.skipRemaining = bytes;
    this.skipNextPhase = next;
    this.afterSkip = then;
  }

  private transmissionBlocked(): boolean {
    return this.inflight >= this.limits.inflightMax || this.inflightBytes >= this.limits.inflightBytesMax || this.waitingDrain;
  }

  /** Reads from the stream only while the parser can make use of the bytes. */
  private updateFlow(): void {
    const s = this.stream;
    let want: boolean;
    switch (this.phase) {
      case 'stopped':
        want = this.outputEnding;
        break;
      case 'option-header':
        want = !this.optionBusy;
        break;
      case 'request-header':
        want = !this.ending && !this.transmissionBlocked();
        break;
      case 'budget':
        // The payload stays in the socket until the budget has room.
        want = false;
        break;
      default:
        want = true;
    }
    if (want && s.isPaused()) s.resume();
    else if (!want && !s.isPaused()) s.pause();
  }

  // ------------------------------------------------------------- options

  private runOption(option: number, data: Buffer): void {
    this.optionBusy = true;
    this.handleOption(option, data)
      .catch((err: unknown) => {
        if (isAssertionFailure(err)) return this.broken(err, { option: optionName(option) });
        // A bug in option handling: do not leave the client hanging.
        this.log.warn({ err, option: optionName(option) }, 'nbd option handling failed');
        this.stream.destroy();
      })
      .finally(() => {
        this.optionBusy = false;
        this.pump();
      });
  }

  private async handleOption(option: number, data: Buffer): Promise<void> {
    if (this.debug) this.log.debug({ option: optionName(option), length: data.length }, 'nbd option');
    switch (option) {
      case OPT_EXPORT_NAME:
        return this.optExportName(data);
      case OPT_ABORT:
        this.reply(option, REP_ACK);
        this.phase = 'stopped';
        this.shutdownOutput();
        this.armCloseTimer();
        return;
      case OPT_LIST:
        return this.optList(data);
      case OPT_STARTTLS:
        this.reply(option, REP_ERR_UNSUP, Buffer.from('TLS is not supported by this server'));
        return;
      case OPT_INFO:
      case OPT_GO:
        return this.optInfoGo(option, data);
      case OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.reply(option, REP_ERR_INVALID, Buffer.from('structured reply option takes no data'));
        if (this.structured) return this.reply(option, REP_ERR_INVALID, Buffer.from('structured replies already negotiated'));
        this.structured = true;
        return this.reply(option, REP_ACK);
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT:
        return this.optMetaContext(option, data);
      default:
        return this.reply(option, REP_ERR_UNSUP, Buffer.from(`option ${option} is not supported`));
    }
  }

  private async optExportName(data: Buffer): Promise<void> {
    const name = data.toString('utf8');
    let exp: NbdExport;
    try {
      exp = await this.provider.open(name, { remote: this.remote });
    } catch (err) {
      if (isAssertionFailure(err)) return this.broken(err, { option: optionName(OPT_EXPORT_NAME), export: name });
      // The spec leaves no way to report an error here but closing.
      this.log.info({ export: name, err }, 'nbd export refused');
      this.stream.destroy();
      return;
    }
    if (this.finished || this.ending) {
      await this.releaseQuietly(exp);
      this.stream.destroy();
      return;
    }
    const flags = transmissionFlags({ readOnly: exp.readOnly, multiConn: exp.multiConn, structuredReplies: this.structured });
    this.write(encodeExportNameReply(exp.size, flags, this.noZeroes));
    this.enterTransmission(exp, name);
  }

  private async optList(data: Buffer): Promise<void> {
    if (data.length !== 0) return this.reply(OPT_LIST, REP_ERR_INVALID, Buffer.from('list option takes no data'));
    try {
      const exports = await this.provider.list();
      for (const e of exports) this.reply(OPT_LIST, REP_SERVER, encodeServerReplyData(e.name, e.description));
      this.reply(OPT_LIST, REP_ACK);
    } catch (err) {
      this.replyOptionError(OPT_LIST, err);
    }
  }

  private async optInfoGo(option: number, data: Buffer): Promise<void> {
    const parsed = parseInfoRequest(data);
    if (!parsed.ok) return this.reply(option, REP_ERR_INVALID, Buffer.from(parsed.reason));
    const { name, infos } = parsed.value;
    if (this.ending) return this.reply(option, REP_ERR_SHUTDOWN, Buffer.from('server is shutting down'));

    let exp: NbdExport | null = null;
    let info: { size: number; readOnly: boolean; multiConn: boolean; description: string };
    try {
      if (option === OPT_GO) {
        exp = await this.provider.open(name, { remote: this.remote });
        info = exp;
      } else {
        info = await this.provider.describe(name);
      }
    } catch (err) {
      return this.replyOptionError(option, err, name);
    }
    if (exp !== null && (this.finished || this.ending)) {
      await this.releaseQuietly(exp);
      if (!this.finished) this.reply(option, REP_ERR_SHUTDOWN, Buffer.from('server is shutting down'));
      return;
    }
    const flags = transmissionFlags({ readOnly: info.readOnly, multiConn: info.multiConn, structuredReplies: this.structured });
    this.reply(option, REP_INFO, encodeInfoExport(info.size, flags));
    if (infos.includes(INFO_NAME)) this.reply(option, REP_INFO, encodeInfoString(INFO_NAME, name));
    if (infos.includes(INFO_DESCRIPTION) && info.description !== '') {
      this.reply(option, REP_INFO, encodeInfoString(INFO_DESCRIPTION, info.description));
    }
    // Sent even when not asked for: it only tells what this server accepts.
    this.reply(option, REP_INFO, encodeInfoBlockSize(BLOCK_SIZE_MIN, BLOCK_SIZE_PREFERRED, this.limits.payloadBytesMax));
    this.reply(option, REP_ACK);
    if (exp !== null) this.enterTransmission(exp, name);
  }

  private async optMetaContext(option: number, data: Buffer): Promise<void> {
    const isSet = option === OPT_SET_META_CONTEXT;
    // A SET replaces the previous selection even when it fails.
    if (isSet) this.metaContextExport = null;
    if (isSet && !this.structured) {
      return this.reply(option, REP_ERR_INVALID, Buffer.from('meta contexts need structured replies first'));
    }
    const parsed = parseMetaContextRequest(data, this.limits.metaContextQueriesMax);
    if (!parsed.ok) return this.reply(option, REP_ERR_INVALID, Buffer.from(parsed.reason));
    const { exportName, queries } = parsed.value;
    try {
      await this.provider.describe(exportName);
    } catch (err) {
      return this.replyOptionError(option, err, exportName);
    }
    let match: boolean;
    if (isSet) {
      match = queries.includes(META_CONTEXT_BASE_ALLOCATION);
    } else {
      // LIST: no query means everything; "base:" is a wildcard for the namespace.
      match = queries.length === 0 || queries.some((q) => q === 'base:' || q === META_CONTEXT_BASE_ALLOCATION);
    }
    if (match) {
      const id = isSet ? META_CONTEXT_BASE_ALLOCATION_ID : 0;
      this.reply(option, REP_META_CONTEXT, encodeMetaContextReplyData(id, META_CONTEXT_BASE_ALLOCATION));
      if (isSet) this.metaContextExport = exportName;
    }
    this.reply(option, REP_ACK);
  }

  /**
   * Answers a failed open/describe/list with its reply (errno.ts) and logs
   * the real error: the client may show only its own text for the reply.
   * A refusal about the export itself (missing, held elsewhere) is logged
   * at info; a failure of this server (etcd unreachable, a bug) at warn.
   */
  private replyOptionError(option: number, err: unknown, exportName?: string): void {
    if (isAssertionFailure(err)) return this.broken(err, { option: optionName(option), export: exportName });
    const e = toOptionError(err);
    const fields = { option: optionName(option), export: exportName, reply: optionReplyName(e.type), err };
    if (e.aboutExport) this.log.info(fields, 'nbd export refused');
    else this.log.warn(fields, 'nbd export refused');
    this.reply(option, e.type, Buffer.from(e.message.slice(0, 1024), 'utf8'));
  }

  private reply(option: number, type: number, data?: Buffer): void {
    this.write(encodeOptionReply(option, type, data));
  }

  private enterTransmission(exp: NbdExport, name: string): void {
    this.exp = exp;
    this.exportName = name;
    this.handshakeTimer?.cancel();
    this.handshakeTimer = null;
    this.ctx = {
      exportSize: exp.size,
      readOnly: exp.readOnly,
      structuredReplies: this.structured,
      blockStatusContext: this.structured && this.metaContextExport === name,
      payloadBytesMax: this.limits.payloadBytesMax,
      payloadDiscardBytesMax: this.limits.payloadDiscardBytesMax,
    };
    this.phase = 'request-header';
    this.log.info(
      { export: name, size: exp.size, readOnly: exp.readOnly, structuredReplies: this.structured, blockStatus: this.ctx.blockStatusContext },
      'nbd export opened',
    );
  }

  // -------------------------------------------------------- transmission

  private dispatch(h: RequestHeader, payload: Buffer | undefined): void {
    const bytes = budgetBytes(h);
    this.pendingWriteBytes = 0;
    this.inflight++;
    this.inflightBytes += bytes;
    const started = this.onRequest === undefined ? 0 : this.clock.monotonic();
    const handling = this.execute(h, payload);
    const writeLike = h.type === CMD_WRITE || h.type === CMD_TRIM || h.type === CMD_WRITE_ZEROES;
    const writeSlot = writeLike ? this.writes.add(handling) : -1;
    void handling.then((errno) => {
      // The export is done with the payload (one that keeps it longer retains it).
      if (payload !== undefined) releaseBuffer(payload);
      // A READ answered with data gives its budget back once the socket took the data (write()).
      if (bytes > 0 && !(h.type === CMD_READ && errno === 0)) this.budget?.give(bytes);
      if (writeSlot >= 0) this.writes.delete(writeSlot);
      this.inflight--;
      this.inflightBytes -= bytes;
      if (this.onRequest !== undefined) this.observe(h, this.clock.monotonic() - started, errno);
      if (this.inflight === 0) this.runIdleWaiters();
      this.pump();
    });
  }

  /** Handles one request and sends its reply; resolves to the NBD error value (0 on success). Never rejects. */
  private async execute(h: RequestHeader, payload: Buffer | undefined): Promise<number> {
    const exp = this.exp!;
    const fua = (h.flags & CMD_FLAG_FUA) !== 0;
    // An export that throws rather than rejects is caught here all the same.
    try {
      switch (h.type) {
        case CMD_READ: {
          const data = await exp.read(h.offset, h.length);
          if (data.length !== h.length) {
            releaseBuffer(data);
            assert(false, `the export returned ${data.length} bytes for a ${h.length}-byte read`);
          }
          // The data is ours now; it goes back to its pool once the socket wrote it.
          if (this.structured) this.write(encodeReadChunkHeader(h.cookie, h.offset, data.length), data, true, h.length);
          else this.write(encodeSimpleReply(h.cookie, 0), data, true, h.length);
          return 0;
        }
        case CMD_WRITE:
          await exp.write(h.offset, payload!, fua);
          break;
        case CMD_FLUSH: {
          // Writes already in flight when FLUSH arrived must be covered by it.
          if (this.writes.size > 0) await allSettledNow(this.writes);
          await exp.flush();
          break;
        }
        case CMD_TRIM:
          await exp.trim(h.offset, h.length, fua);
          break;
        case CMD_WRITE_ZEROES:
          // With FAST_ZERO an export that cannot zero fast throws
          // TORUS_ERR_NBD_UNSUPPORTED, which goes out as ENOTSUP.
          await exp.writeZeroes(h.offset, h.length, { noHole: (h.flags & CMD_FLAG_NO_HOLE) !== 0, fua, fastZero: (h.flags & CMD_FLAG_FAST_ZERO) !== 0 });
          break;
        case CMD_CACHE:
          await exp.cache(h.offset, h.length);
          break;
        case CMD_BLOCK_STATUS: {
          const extents = clipExtents(await exp.blockStatus(h.offset, h.length), h.length, (h.flags & CMD_FLAG_REQ_ONE) !== 0);
          assert(extents.length > 0, 'the export returned extents');
          this.write(encodeBlockStatusReply(h.cookie, META_CONTEXT_BASE_ALLOCATION_ID, extents));
          return 0;
        }
        default:
          assert(false, `validation lets through only commands handled here, not ${h.type}`);
      }
      this.write(encodeSimpleReply(h.cookie, 0));
      return 0;
    } catch (err) {
      if (isAssertionFailure(err)) {
        this.broken(err, { export: this.exportName, command: commandName(h.type), offset: h.offset, length: h.length });
        // Counted as failed (metrics, the budget); no reply goes out.
        return NBD_EIO;
      }
      const errno = toNbdErrno(err);
      if (this.debug) this.log.debug({ err, command: commandName(h.type), offset: h.offset, length: h.length, errno: errnoName(errno) }, 'nbd request failed');
      this.replyError(h, errno, errorMessage(err));
      return errno;
    }
  }

  /**
   * A broken invariant is reported, never answered (an EIO would let the
   * client go on against state that is not to be trusted); the connection
   * is dropped, in case the hook lets the process live (tests).
   */
  private broken(err: TorusError, fields: Record<string, unknown>): void {
    this.invariantBroken(err, { module: 'nbd', remote: this.remote, ...fields });
    this.stream.destroy();
  }

  private replyError(h: RequestHeader, errno: number, message: string): void {
    if (this.structured) this.write(encodeStructuredError(h.cookie, errno, message));
    else this.write(encodeSimpleReply(h.cookie, errno));
  }

  private observe(h: RequestHeader, latencyMs: number, errno: number): void {
    if (this.onRequest === undefined) return;
    const bytes = h.type === CMD_READ || h.type === CMD_WRITE ? h.length : 0;
    try {
      this.onRequest(errno === 0 ? { command: commandName(h.type), bytes, latencyMs } : { command: commandName(h.type), bytes, latencyMs, error: errno });
    } catch (err) {
      if (this.debug) this.log.debug({ err }, 'nbd request observer threw');
    }
  }

  // -------------------------------------------------------------- output

  /**
   * Writes one message whole; with `releaseB`, b goes back to its pool once
   * written. Messages written in one turn of the event loop (the replies of
   * requests that finished without waiting for the thread pool: cached
   * reads, small writes) share one writev; they go out at the end of that
   * turn, never held for a later phase.
   */
  private write(a: Buffer, b?: Buffer, releaseB = false, budgetBytes = 0): void {
    const s = this.stream;
    if (s.destroyed || s.writableEnded) {
      if (releaseB && b !== undefined) releaseBuffer(b);
      if (budgetBytes > 0) this.budget?.give(budgetBytes);
      return;
    }
    if (!this.corked) {
      this.corked = true;
      s.cork();
      process.nextTick(this.uncork);
    }
    s.write(a);
    if (b !== undefined) {
      // The callback runs once the bytes are handed to the kernel, or with
      // an error if the stream is torn down first: either way once.
      if (releaseB || budgetBytes > 0) {
        s.write(b, () => {
          if (releaseB) releaseBuffer(b);
          if (budgetBytes > 0) this.budget?.give(budgetBytes);
        });
      } else s.write(b);
    }
    if (!this.waitingDrain && s.writableNeedDrain && s.writableLength > this.limits.replyBytesMax) {
      this.waitingDrain = true;
      s.once('drain', this.onDrain);
    }
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.stream.uncork();
  };

  private readonly onDrain = (): void => {
    this.waitingDrain = false;
    this.pump();
  };

  // ----------------------------------------------------------- lifecycle

  private whenIdle(fn: () => void): void {
    if (this.inflight === 0) fn();
    else this.idleWaiters.push(fn);
  }

  private endWhenIdle(): void {
    if (this.endQueued) return;
    this.endQueued = true;
    this.whenIdle(() => this.shutdownOutput());
  }

  private runIdleWaiters(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /**
   * Closes once everything is answered and flushed to the kernel. An idle
   * client (the kernel's nbd client, a qemu-io that stays open) never hangs
   * up by itself, so waiting for it would stall every shutdown.
   */
  private shutdownOutput(): void {
    if (this.outputEnding || this.finished) return;
    this.outputEnding = true;
    this.phase = 'stopped';
    this.updateFlow();
    this.stream.end(() => this.stream.destroy());
    this.armCloseTimer();
  }

  private armCloseTimer(): void {
    if (this.closeTimer !== null || this.finished) return;
    this.closeTimer = this.clock.setTimeout(() => {
      this.closeTimer = null;
      if (this.finished) return;
      this.log.warn({ closeTimeoutMs: this.limits.closeTimeoutMs, inflight: this.inflight }, 'nbd connection did not close in time; dropping it');
      this.stream.destroy();
    }, this.limits.closeTimeoutMs);
  }

  /** A malformed stream or a broken limit: the connection cannot go on. */
  private abort(reason: string, fields: Record<string, unknown> = {}): void {
    if (this.finished) return;
    this.log.warn({ ...fields, reason }, 'nbd connection dropped: client broke the protocol or a limit');
    this.phase = 'stopped';
    this.stream.destroy();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.phase = 'stopped';
    this.handshakeTimer?.cancel();
    this.handshakeTimer = null;
    this.closeTimer?.cancel();
    this.closeTimer = null;
    this.queue.clear();
    // A request waiting for budget never starts.
    this.cancelBudgetWait?.();
    this.cancelBudgetWait = null;
    // The stream is closed: no read can land in a target any more.
    if (this.target !== null && this.targetNext === 'request-header') {
      releaseBuffer(this.target);
      // A WRITE whose payload never arrived: its budget was taken at its header.
      if (this.pendingWriteBytes > 0) this.budget?.give(this.pendingWriteBytes);
    }
    this.pendingWriteBytes = 0;
    this.target = null;
    this.targetDone = null;
    if (this.debug) this.log.debug({ inflight: this.inflight }, 'nbd connection closed');
    this.whenIdle(() => {
      void this.release().then(() => this.resolveClosed());
    });
  }

  private async release(): Promise<void> {
    if (this.released || this.exp === null) return;
    this.released = true;
    await this.releaseQuietly(this.exp);
    this.log.info({ export: this.exportName }, 'nbd export released');
  }

  private async releaseQuietly(exp: NbdExport): Promise<void> {
    try {
      await exp.release();
    } catch (err) {
      this.log.warn({ err }, 'nbd export release failed');
    }
  }
}
