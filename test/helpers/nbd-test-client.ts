/**
 * A small hand-written NBD client for tests: it speaks the protocol byte by
 * byte (so tests can also send garbage) and matches replies by cookie.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import {
  decodeOptionReplyHeader,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionHeader,
  encodeRequestHeader,
  readUint64,
} from '../../src/nbd/codec.js';
import type { Extent } from '../../src/nbd/export.js';
import {
  CMD_BLOCK_STATUS,
  CMD_DISC,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  NBD_MAGIC_HI,
  NBD_MAGIC_LO,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_SET_META_CONTEXT,
  OPT_STRUCTURED_REPLY,
  REP_ACK,
  REP_INFO,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_ERROR_OFFSET,
  REPLY_TYPE_NONE,
  REPLY_TYPE_OFFSET_DATA,
  REPLY_TYPE_OFFSET_HOLE,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from '../../src/nbd/protocol.js';

export class ConnectionClosedError extends Error {
  constructor() {
    super('connection closed');
  }
}

/** Reads exact byte counts from a stream. */
export class ByteReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended = false;
  /** Resolves when the peer has finished sending (end) or the stream closed. */
  readonly closed: Promise<void>;

  constructor(private readonly stream: Duplex) {
    stream.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.length += c.length;
      this.serve();
    });
    const end = () => {
      this.ended = true;
      this.serve();
    };
    stream.on('error', () => {
      // surfaced as ConnectionClosedError to waiters
    });
    // The peer is done once it half-closed (FIN) or the stream closed.
    this.closed = new Promise((resolve) => {
      stream.on('end', () => {
        end();
        resolve();
      });
      stream.on('close', () => {
        end();
        resolve();
      });
    });
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter !== null) throw new Error('one read at a time');
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.serve();
    });
  }

  /** True when the peer ended and nothing is left to read. */
  get atEnd(): boolean {
    return this.ended && this.length === 0;
  }

  private serve(): void {
    const w = this.waiter;
    if (w === null) return;
    if (this.length >= w.n) {
      const all = Buffer.concat(this.chunks);
      const out = all.subarray(0, w.n);
      const rest = all.subarray(w.n);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.length = rest.length;
      this.waiter = null;
      w.resolve(out);
    } else if (this.ended) {
      this.waiter = null;
      w.reject(new ConnectionClosedError());
    }
  }
}

export interface OptionReply {
  readonly option: number;
  readonly type: number;
  readonly data: Buffer;
}

export interface Reply {
  readonly cookie: bigint;
  readonly error: number;
  readonly structured: boolean;
  readonly data?: Buffer;
  readonly extents?: Extent[];
  readonly contextId?: number;
  readonly message?: string;
}

export interface RequestSpec {
  readonly type: number;
  readonly flags?: number;
  readonly offset?: number;
  readonly length?: number;
  readonly data?: Buffer;
  readonly cookie?: bigint;
  readonly magic?: number;
}

interface Pending {
  readonly type: number;
  readonly offset: number;
  readonly length: number;
  readonly resolve: (r: Reply) => void;
  readonly reject: (e: Error) => void;
  data?: Buffer;
  extents?: Extent[];
  contextId?: number;
  error: number;
  message?: string;
}

export class NbdTestClient {
  readonly reader: ByteReader;
  handshakeFlags = 0;
  structured = false;
  exportSize = 0;
  transmissionFlags = 0;
  /** Cookies in the order their replies completed. */
  readonly replyOrder: bigint[] = [];
  private nextCookie = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private loopError: Error | null = null;

  private constructor(readonly stream: Duplex) {
    this.reader = new ByteReader(stream);
  }

  static async tcp(port: number, host = '127.0.0.1'): Promise<NbdTestClient> {
    const socket = net.connect({ port, host, allowHalfOpen: true });
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    });
    return NbdTestClient.connect(socket);
  }

  /** Reads the greeting and answers with client flags (default FIXED_NEWSTYLE|NO_ZEROES). */
  static async connect(stream: Duplex, clientFlags: number = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES): Promise<NbdTestClient> {
    const c = new NbdTestClient(stream);
    const g = await c.reader.read(18);
    if (g.readUInt32BE(0) !== NBD_MAGIC_HI || g.readUInt32BE(4) !== NBD_MAGIC_LO || g.readUInt32BE(8) !== IHAVEOPT_HI || g.readUInt32BE(12) !== IHAVEOPT_LO) {
      throw new Error(`bad greeting ${g.toString('hex')}`);
    }
    c.handshakeFlags = g.readUInt16BE(16);
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags, 0);
    stream.write(f);
    return c;
  }

  send(raw: Buffer): void {
    this.stream.write(raw);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    this.stream.write(Buffer.concat([encodeOptionHeader(option, data.length), data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = decodeOptionReplyHeader(await this.reader.read(20));
    if (!h.magicOk) throw new Error('bad option reply magic');
    const data = h.length > 0 ? Buffer.from(await this.reader.read(h.length)) : Buffer.alloc(0);
    return { option: h.option, type: h.type, data };
  }

  /** Sends an option and reads replies up to the final one (ACK or an error). */
  async option(option: number, data: Buffer = Buffer.alloc(0)): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      if (r.option !== option) throw new Error(`reply for option ${r.option}, expected ${option}`);
      out.push(r);
      if (r.type === REP_ACK || r.type >= 0x80000000) return out;
    }
  }

  async structuredReplies(): Promise<void> {
    const r = await this.option(OPT_STRUCTURED_REPLY);
    if (r[0]?.type !== REP_ACK) throw new Error('structured replies refused');
    this.structured = true;
  }

  async setMetaContext(exportName: string, queries: string[]): Promise<OptionReply[]> {
    return this.option(OPT_SET_META_CONTEXT, encodeMetaContextRequest(exportName, queries));
  }

  /** NBD_OPT_GO; throws with the server's message if refused. Starts the reply loop. */
  async go(name: string, infos: number[] = [INFO_BLOCK_SIZE]): Promise<OptionReply[]> {
    const replies = await this.option(OPT_GO, encodeInfoRequest(name, infos));
    const last = replies[replies.length - 1]!;
    if (last.type !== REP_ACK) {
      throw Object.assign(new Error(`GO refused (0x${last.type.toString(16)}): ${last.data.toString()}`), { replyType: last.type });
    }
    for (const r of replies) {
      if (r.type === REP_INFO && r.data.readUInt16BE(0) === INFO_EXPORT) {
        this.exportSize = readUint64(r.data, 2);
        this.transmissionFlags = r.data.readUInt16BE(10);
      }
    }
    this.startReplyLoop();
    return replies;
  }

  /** NBD_OPT_EXPORT_NAME; expects 124 zero bytes unless NO_ZEROES was sent. */
  async exportName(name: string, noZeroes = true): Promise<void> {
    this.sendOption(OPT_EXPORT_NAME, Buffer.from(name));
    const r = await this.reader.read(10 + (noZeroes ? 0 : 124));
    this.exportSize = readUint64(r, 0);
    this.transmissionFlags = r.readUInt16BE(8);
    if (!noZeroes && !r.subarray(10).equals(Buffer.alloc(124))) throw new Error('padding is not zero');
    this.startReplyLoop();
  }

  /** Sends one request (payload included) and resolves with its reply. */
  request(spec: RequestSpec): Promise<Reply> {
    const cookie = spec.cookie ?? this.nextCookie++;
    const length = spec.length ?? spec.data?.length ?? 0;
    const offset = spec.offset ?? 0;
    const p = new Promise<Reply>((resolve, reject) => {
      if (this.loopError !== null) return reject(this.loopError);
      if (spec.type !== CMD_DISC) this.pending.set(cookie, { type: spec.type, offset, length, resolve, reject, error: 0 });
    });
    const header = encodeRequestHeader({ flags: spec.flags ?? 0, type: spec.type, cookie, offset, length, magic: spec.magic });
    this.stream.write(spec.data === undefined ? header : Buffer.concat([header, spec.data]));
    if (spec.type === CMD_DISC) return Promise.resolve({ cookie, error: 0, structured: false });
    return p;
  }

  /** Registers a reply for a request the test wrote by hand (see send()). */
  expectReply(cookie: bigint, type: number, offset: number, length: number): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      if (this.loopError !== null) return reject(this.loopError);
      this.pending.set(cookie, { type, offset, length, resolve, reject, error: 0 });
    });
  }

  async read(offset: number, length: number, flags = 0): Promise<Buffer> {
    const r = await this.request({ type: CMD_READ, offset, length, flags });
    if (r.error !== 0) throw new Error(`read failed with ${r.error}`);
    return r.data!;
  }

  async write(offset: number, data: Buffer, flags = 0): Promise<void> {
    const r = await this.request({ type: CMD_WRITE, offset, data, flags });
    if (r.error !== 0) throw new Error(`write failed with ${r.error}`);
  }

  flush(): Promise<Reply> {
    return this.request({ type: CMD_FLUSH });
  }

  trim(offset: number, length: number, flags = 0): Promise<Reply> {
    return this.request({ type: CMD_TRIM, offset, length, flags });
  }

  zeroes(offset: number, length: number, flags = 0): Promise<Reply> {
    return this.request({ type: CMD_WRITE_ZEROES, offset, length, flags });
  }

  blockStatus(offset: number, length: number, flags = 0): Promise<Reply> {
    return this.request({ type: CMD_BLOCK_STATUS, offset, length, flags });
  }

  /** Sends NBD_CMD_DISC and waits for the server to close. */
  async disconnect(): Promise<void> {
    await this.request({ type: CMD_DISC });
    this.stream.end();
    await this.reader.closed;
  }

  close(): void {
    this.stream.destroy();
  }

  get pendingCount(): number {
    return this.pending.size;
  }

  private startReplyLoop(): void {
    void this.replyLoop().catch((err: Error) => {
      this.loopError = err;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    });
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (p === undefined) throw new Error(`reply for unknown cookie ${cookie}`);
    return p;
  }

  private finish(cookie: bigint, p: Pending, structured: boolean): void {
    this.pending.delete(cookie);
    this.replyOrder.push(cookie);
    p.resolve({ cookie, error: p.error, structured, data: p.data, extents: p.extents, contextId: p.contextId, message: p.message });
  }

  private async replyLoop(): Promise<void> {
    for (;;) {
      const magic = (await this.reader.read(4)).readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) {
        const rest = await this.reader.read(12);
        const error = rest.readUInt32BE(0);
        const cookie = rest.readBigUInt64BE(4);
        const p = this.take(cookie);
        p.error = error;
        if (p.type === CMD_READ && error === 0) p.data = Buffer.from(await this.reader.read(p.length));
        this.finish(cookie, p, false);
      } else if (magic === STRUCTURED_REPLY_MAGIC) {
        const rest = await this.reader.read(16);
        const flags = rest.readUInt16BE(0);
        const type = rest.readUInt16BE(2);
        const cookie = rest.readBigUInt64BE(4);
        const length = rest.readUInt32BE(12);
        const payload = length > 0 ? Buffer.from(await this.reader.read(length)) : Buffer.alloc(0);
        const p = this.take(cookie);
        switch (type) {
          case REPLY_TYPE_NONE:
            break;
          case REPLY_TYPE_OFFSET_DATA: {
            const off = readUint64(payload, 0);
            p.data ??= Buffer.alloc(p.length);
            payload.copy(p.data, off - p.offset, 8);
            break;
          }
          case REPLY_TYPE_OFFSET_HOLE:
            p.data ??= Buffer.alloc(p.length);
            break;
          case REPLY_TYPE_BLOCK_STATUS: {
            p.contextId = payload.readUInt32BE(0);
            const extents: Extent[] = [];
            for (let at = 4; at + 8 <= payload.length; at += 8) extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
            p.extents = extents;
            break;
          }
          case REPLY_TYPE_ERROR:
          case REPLY_TYPE_ERROR_OFFSET: {
            p.error = payload.readUInt32BE(0);
            const mlen = payload.readUInt16BE(4);
            p.message = payload.toString('utf8', 6, 6 + mlen);
            break;
          }
          default:
            throw new Error(`unknown structured reply type ${type}`);
        }
        if ((flags & REPLY_FLAG_DONE) !== 0) this.finish(cookie, p, true);
      } else {
        throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
    }
  }
}

/** A client that has negotiated structured replies (optional), base:allocation and GO. */
export async function openExport(
  stream: Duplex,
  name: string,
  opts: { structured?: boolean; blockStatus?: boolean } = {},
): Promise<NbdTestClient> {
  const c = await NbdTestClient.connect(stream);
  if (opts.structured ?? true) {
    await c.structuredReplies();
    if (opts.blockStatus ?? true) await c.setMetaContext(name, ['base:allocation']);
  }
  await c.go(name);
  return c;
}
