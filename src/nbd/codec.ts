/**
 * Pure encoders and decoders for NBD messages: no I/O, no state. The session
 * feeds bytes it has gathered; the test client uses the same functions.
 */
import type { Extent } from './export.js';
import {
  EXPORT_NAME_PADDING_BYTES,
  GREETING_BYTES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  INFO_BLOCK_SIZE,
  INFO_DESCRIPTION,
  INFO_EXPORT,
  INFO_NAME,
  NBD_MAGIC_HI,
  NBD_MAGIC_LO,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_ERROR_OFFSET,
  REPLY_TYPE_NONE,
  REPLY_TYPE_OFFSET_DATA,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRING_BYTES_MAX,
  STRUCTURED_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
  TFLAG_CAN_MULTI_CONN,
  TFLAG_HAS_FLAGS,
  TFLAG_READ_ONLY,
  TFLAG_SEND_CACHE,
  TFLAG_SEND_DF,
  TFLAG_SEND_FAST_ZERO,
  TFLAG_SEND_FLUSH,
  TFLAG_SEND_FUA,
  TFLAG_SEND_TRIM,
  TFLAG_SEND_WRITE_ZEROES,
} from './protocol.js';

const TWO_POW_32 = 0x1_0000_0000;

/**
 * Reads an unsigned 64-bit big-endian integer as a number. Values above
 * 2^53 lose precision but stay above any real export size, so range checks
 * on them remain correct.
 */
export function readUint64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_POW_32 + buf.readUInt32BE(at + 4);
}

export function writeUint64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_POW_32), at);
  buf.writeUInt32BE(value % TWO_POW_32, at + 4);
}

// ---------------------------------------------------------------- handshake

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(GREETING_BYTES);
  b.writeUInt32BE(NBD_MAGIC_HI, 0);
  b.writeUInt32BE(NBD_MAGIC_LO, 4);
  b.writeUInt32BE(IHAVEOPT_HI, 8);
  b.writeUInt32BE(IHAVEOPT_LO, 12);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export interface OptionHeader {
  /** False when the header does not start with IHAVEOPT: the stream is malformed. */
  readonly magicOk: boolean;
  readonly option: number;
  readonly length: number;
}

export function decodeOptionHeader(buf: Buffer, at = 0): OptionHeader {
  return {
    magicOk: buf.readUInt32BE(at) === IHAVEOPT_HI && buf.readUInt32BE(at + 4) === IHAVEOPT_LO,
    option: buf.readUInt32BE(at + 8),
    length: buf.readUInt32BE(at + 12),
  };
}

export function encodeOptionHeader(option: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_BYTES);
  b.writeUInt32BE(IHAVEOPT_HI, 0);
  b.writeUInt32BE(IHAVEOPT_LO, 4);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(length, 12);
  return b;
}

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data?.length ?? 0;
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + len);
  b.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0);
  b.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(len, 16);
  if (data !== undefined) data.copy(b, OPTION_REPLY_HEADER_BYTES);
  return b;
}

export interface OptionReplyHeader {
  readonly magicOk: boolean;
  readonly option: number;
  readonly type: number;
  readonly length: number;
}

export function decodeOptionReplyHeader(buf: Buffer, at = 0): OptionReplyHeader {
  return {
    magicOk: buf.readUInt32BE(at) === OPTION_REPLY_MAGIC_HI && buf.readUInt32BE(at + 4) === OPTION_REPLY_MAGIC_LO,
    option: buf.readUInt32BE(at + 8),
    type: buf.readUInt32BE(at + 12),
    length: buf.readUInt32BE(at + 16),
  };
}

/** Cuts a UTF-8 string to the spec's 4096-byte limit (on a byte boundary; good enough for messages). */
export function stringBytes(s: string, max = STRING_BYTES_MAX): Buffer {
  const b = Buffer.from(s, 'utf8');
  return b.length <= max ? b : b.subarray(0, max);
}

/** NBD_REP_SERVER payload: name length, name, description. */
export function encodeServerReplyData(name: string, description: string): Buffer {
  const n = stringBytes(name);
  const d = stringBytes(description);
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(INFO_EXPORT, 0);
  writeUint64(b, size, 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoString(type: typeof INFO_NAME | typeof INFO_DESCRIPTION, s: string): Buffer {
  const v = stringBytes(s);
  const b = Buffer.allocUnsafe(2 + v.length);
  b.writeUInt16BE(type, 0);
  v.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export function encodeMetaContextReplyData(id: number, name: string): Buffer {
  const n = stringBytes(name);
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING_BYTES));
  writeUint64(b, size, 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string };

export interface InfoRequest {
  readonly name: string;
  readonly infos: readonly number[];
}

/** Payload of NBD_OPT_INFO / NBD_OPT_GO: name length, name, count, count x u16. */
export function parseInfoRequest(data: Buffer): Parsed<InfoRequest> {
  if (data.length < 6) return { ok: false, reason: 'option data shorter than 6 bytes' };
  const nameLen = data.readUInt32BE(0);
  if (nameLen > STRING_BYTES_MAX) return { ok: false, reason: 'export name longer than 4096 bytes' };
  if (nameLen > data.length - 6) return { ok: false, reason: 'export name length exceeds option data' };
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return { ok: false, reason: 'information request count does not match option length' };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { ok: true, value: { name, infos } };
}

export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: readonly string[];
}

/** Payload of NBD_OPT_LIST/SET_META_CONTEXT: name, query count, queries. */
export function parseMetaContextRequest(data: Buffer, queriesMax: number): Parsed<MetaContextRequest> {
  if (data.length < 8) return { ok: false, reason: 'option data shorter than 8 bytes' };
  const nameLen = data.readUInt32BE(0);
  if (nameLen > STRING_BYTES_MAX) return { ok: false, reason: 'export name longer than 4096 bytes' };
  if (nameLen > data.length - 8) return { ok: false, reason: 'export name length exceeds option data' };
  const exportName = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt32BE(4 + nameLen);
  if (count > queriesMax) return { ok: false, reason: `more than ${queriesMax} queries` };
  const queries: string[] = [];
  let at = 8 + nameLen;
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return { ok: false, reason: 'query length runs past option data' };
    const qLen = data.readUInt32BE(at);
    at += 4;
    if (qLen > STRING_BYTES_MAX) return { ok: false, reason: 'query longer than 4096 bytes' };
    if (at + qLen > data.length) return { ok: false, reason: 'query runs past option data' };
    queries.push(data.toString('utf8', at, at + qLen));
    at += qLen;
  }
  if (at !== data.length) return { ok: false, reason: 'trailing bytes after queries' };
  return { ok: true, value: { exportName, queries } };
}

export function encodeMetaContextRequest(exportName: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(exportName, 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(n.length, 0);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(head, n, count);
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8');
    const l = Buffer.allocUnsafe(4);
    l.writeUInt32BE(qb.length, 0);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

export interface TransmissionFlagInputs {
  readonly readOnly: boolean;
  readonly multiConn: boolean;
  readonly structuredReplies: boolean;
}

/**
 * Read-only exports advertise no write-side features: clients then never
 * try them (and get EPERM if they do anyway).
 */
export function transmissionFlags(x: TransmissionFlagInputs): number {
  let f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_CACHE;
  if (x.readOnly) f |= TFLAG_READ_ONLY;
  else f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
  if (x.structuredReplies) f |= TFLAG_SEND_DF;
  if (x.multiConn) f |= TFLAG_CAN_MULTI_CONN;
  return f;
}

// ------------------------------------------------------------- transmission

export interface RequestHeader {
  readonly magic: number;
  readonly flags: number;
  readonly type: number;
  readonly cookie: bigint;
  /** See readUint64 for values above 2^53. */
  readonly offset: number;
  readonly length: number;
}

export function decodeRequestHeader(buf: Buffer, at = 0): RequestHeader {
  return {
    magic: buf.readUInt32BE(at),
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: buf.readBigUInt64BE(at + 8),
    offset: readUint64(buf, at + 16),
    length: buf.readUInt32BE(at + 24),
  };
}

export function encodeRequestHeader(r: { flags: number; type: number; cookie: bigint; offset: number; length: number; magic?: number }): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  b.writeUInt32BE(r.magic ?? REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  writeUint64(b, r.offset, 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

function structuredHeader(b: Buffer, flags: number, type: number, cookie: bigint, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length, 16);
}

export function encodeStructuredNone(cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES);
  structuredHeader(b, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
  return b;
}

/**
 * Header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk, offset included; the
 * caller writes `dataLength` bytes of data right after it.
 */
export function encodeReadChunkHeader(cookie: bigint, offset: number, dataLength: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + 8);
  structuredHeader(b, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataLength);
  writeUint64(b, offset, STRUCTURED_HEADER_BYTES);
  return b;
}

/** A final error chunk; with `offset`, NBD_REPLY_TYPE_ERROR_OFFSET. */
export function encodeStructuredError(cookie: bigint, error: number, message: string, offset?: number): Buffer {
  const m = stringBytes(message);
  const payload = 6 + m.length + (offset === undefined ? 0 : 8);
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + payload);
  structuredHeader(b, REPLY_FLAG_DONE, offset === undefined ? REPLY_TYPE_ERROR : REPLY_TYPE_ERROR_OFFSET, cookie, payload);
  b.writeUInt32BE(error, STRUCTURED_HEADER_BYTES);
  b.writeUInt16BE(m.length, STRUCTURED_HEADER_BYTES + 4);
  m.copy(b, STRUCTURED_HEADER_BYTES + 6);
  if (offset !== undefined) writeUint64(b, offset, STRUCTURED_HEADER_BYTES + 6 + m.length);
  return b;
}

export function encodeBlockStatusReply(cookie: bigint, contextId: number, extents: readonly Extent[]): Buffer {
  const payload = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + payload);
  structuredHeader(b, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, payload);
  b.writeUInt32BE(contextId, STRUCTURED_HEADER_BYTES);
  let at = STRUCTURED_HEADER_BYTES + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, at);
    b.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return b;
}

/**
 * Makes an export's extent list fit a reply: drops empty extents, merges
 * neighbours with equal flags, stops at `length` bytes (so the sum never
 * exceeds the request) and keeps one extent with REQ_ONE.
 */
export function clipExtents(extents: readonly Extent[], length: number, reqOne: boolean): Extent[] {
  const out: Extent[] = [];
  let covered = 0;
  for (const e of extents) {
    if (covered >= length) break;
    if (!(e.length > 0)) continue;
    const len = Math.min(e.length, length - covered);
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === e.flags) out[out.length - 1] = { length: last.length + len, flags: e.flags };
    else out.push({ length: len, flags: e.flags });
    covered += len;
  }
  if (reqOne && out.length > 1) out.length = 1;
  return out;
}

export interface SimpleReply {
  readonly magicOk: boolean;
  readonly error: number;
  readonly cookie: bigint;
}

export function decodeSimpleReply(buf: Buffer, at = 0): SimpleReply {
  return { magicOk: buf.readUInt32BE(at) === SIMPLE_REPLY_MAGIC, error: buf.readUInt32BE(at + 4), cookie: buf.readBigUInt64BE(at + 8) };
}

export interface StructuredHeader {
  readonly magicOk: boolean;
  readonly flags: number;
  readonly type: number;
  readonly cookie: bigint;
  readonly length: number;
}

export function decodeStructuredHeader(buf: Buffer, at = 0): StructuredHeader {
  return {
    magicOk: buf.readUInt32BE(at) === STRUCTURED_REPLY_MAGIC,
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: buf.readBigUInt64BE(at + 8),
    length: buf.readUInt32BE(at + 16),
  };
}

