import { ERROR_CODES, type ErrorCode } from '../errors/codes.js';
import { TorusError } from '../errors/torus-error.js';
import type { BlockMeta, BlockState, ListedBlock } from '../model/block-meta.js';
import { blockRef, encodeBlockRef, type BlockRef } from '../model/block-ref.js';
import {
  CRC_PAGE_BYTES,
  LIST_BLOCKS_MAX,
  META_REFS_MAX,
  type BlockCopy,
  type ChangeStamp,
  type InstallOutcome,
  type PeerInfo,
  type ReadReply,
  type RequestContext,
  type StoreUsageInfo,
} from '../model/replica-api.js';
import { TOKEN_MAX, VERSION_ABSENT, type Version } from '../model/version.js';
import { assert } from '../util/assert.js';
import { ByteQueue } from '../util/byte-queue.js';
import { crc32c, crc32cCombinePages, crc32cConcat, crc32cPages } from '../util/crc32c.js';
import {
  BLOCK_META_BYTES,
  BLOCK_REF_WIRE_BYTES,
  BLOCK_STATE_CODES,
  BYTE_REPLY_BYTES,
  CONFIRM_PAYLOAD_BYTES,
  COPY_STATE_DATA,
  COPY_STATE_ZERO,
  ERROR_CODE_BYTES_MAX,
  ERROR_DETAILS_BYTES_MAX,
  ERROR_PAYLOAD_BYTES_MAX,
  FLAG_FUA,
  FLAG_PUNCH,
  INCARNATION_BYTES_MAX,
  INSTALL_OUTCOME_CODES,
  LIST_ENTRY_BYTES,
  LIST_REPLY_HEAD_BYTES,
  OPCODE_FLAGS,
  OPCODE_NAMES,
  Opcode,
  PAYLOAD_BYTES_MAX,
  PEER_UUID_BYTES_MAX,
  REQ,
  REQUEST_HEADER_BYTES,
  REQUEST_ID_MAX,
  REQUEST_MAGIC,
  RES,
  RESPONSE_HEADER_BYTES,
  RESPONSE_MAGIC,
  STATUS_ERROR,
  STATUS_OK,
  U64_HIGH_SAFE_MAX,
  USAGE_PAYLOAD_BYTES,
  VOLUME_ID_PAYLOAD_BYTES,
} from './protocol.js';

/**
 * Pure encoders, decoders and validation for the frames of protocol.ts: no
 * sockets, no clock, no logger. The server validates every request here
 * before it reaches the replica; the client checks its own requests with
 * the same rules (a failure there is a caller bug) and every reply against
 * the request it answers.
 */

const TWO_32 = 2 ** 32;
const EMPTY = Buffer.alloc(0);

function protocolError(message: string, details?: Record<string, unknown>): TorusError {
  return new TorusError('TORUS_ERR_PEER_PROTOCOL', message, details === undefined ? undefined : { details });
}

// ---------------------------------------------------------------- requests as values

/** One ReplicaApi call, as it crosses the wire. */
export type PeerRequest =
  | { readonly opcode: typeof Opcode.READ; readonly ctx: RequestContext; readonly ref: BlockRef; readonly offset: number; readonly length: number }
  | {
      readonly opcode: typeof Opcode.WRITE;
      readonly ctx: RequestContext;
      readonly ref: BlockRef;
      readonly offset: number;
      readonly data: Buffer;
      readonly stamp: ChangeStamp;
      readonly fua: boolean;
      /** Decoded only: the CRC-32C of each page of data, summed when its checksum was checked (ReplicaWriteOptions.pageCrcs). */
      readonly pageCrcs?: Uint32Array;
    }
  | {
      readonly opcode: typeof Opcode.ZERO;
      readonly ctx: RequestContext;
      readonly ref: BlockRef;
      readonly offset: number;
      readonly length: number;
      readonly stamp: ChangeStamp;
      readonly punch: boolean;
      readonly fua: boolean;
    }
  | {
      readonly opcode: typeof Opcode.INSTALL;
      readonly ctx: RequestContext;
      readonly ref: BlockRef;
      readonly copy: BlockCopy;
      readonly token: number;
      readonly fua: boolean;
    }
  | {
      readonly opcode: typeof Opcode.CONFIRM;
      readonly ctx: RequestContext;
      readonly ref: BlockRef;
      readonly version: Version;
      readonly digest: number;
      readonly token: number;
    }
  | { readonly opcode: typeof Opcode.META; readonly ctx: RequestContext; readonly refs: readonly BlockRef[] }
  | { readonly opcode: typeof Opcode.LIST; readonly ctx: RequestContext; readonly volumeId: number; readonly after: BlockRef | null; readonly limit: number }
  | { readonly opcode: typeof Opcode.VERIFY; readonly ctx: RequestContext; readonly ref: BlockRef }
  | { readonly opcode: typeof Opcode.DROP; readonly ctx: RequestContext; readonly ref: BlockRef; readonly version: Version; readonly token: number }
  | { readonly opcode: typeof Opcode.FENCE; readonly ctx: RequestContext; readonly volumeId: number; readonly token: number }
  | { readonly opcode: typeof Opcode.FLUSH; readonly ctx: RequestContext }
  | { readonly opcode: typeof Opcode.DELETE_VOLUME; readonly ctx: RequestContext; readonly volumeId: number }
  | { readonly opcode: typeof Opcode.USAGE; readonly ctx: RequestContext }
  | { readonly opcode: typeof Opcode.HELLO; readonly ctx: RequestContext }
  | { readonly opcode: typeof Opcode.EXPECT; readonly ctx: RequestContext; readonly refs: readonly BlockRef[] };

/** What each opcode answers (the ReplicaApi method's result). */
export interface ReplyValues {
  [Opcode.READ]: ReadReply;
  [Opcode.WRITE]: void;
  [Opcode.ZERO]: void;
  [Opcode.INSTALL]: InstallOutcome;
  [Opcode.CONFIRM]: boolean;
  [Opcode.META]: BlockMeta[];
  [Opcode.LIST]: { blocks: ListedBlock[]; more: boolean };
  [Opcode.VERIFY]: BlockMeta;
  [Opcode.DROP]: boolean;
  [Opcode.FENCE]: void;
  [Opcode.FLUSH]: void;
  [Opcode.DELETE_VOLUME]: void;
  [Opcode.USAGE]: StoreUsageInfo;
  [Opcode.HELLO]: PeerInfo;
  [Opcode.EXPECT]: void;
}
export type ReplyOf<R extends PeerRequest> = ReplyValues[R['opcode']];

// ---------------------------------------------------------------- numbers

/** A non-negative safe integer as a u64. */
function writeU64(buf: Buffer, at: number, value: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, 'u64 field is a non-negative safe integer');
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/** A u64 from untrusted bytes; null when it is not a safe integer. */
function readU64(buf: Buffer, at: number): number | null {
  const high = buf.readUInt32BE(at);
  if (high > U64_HIGH_SAFE_MAX) return null;
  return high * TWO_32 + buf.readUInt32BE(at + 4);
}

/** A version: VERSION_ABSENT as all ones, anything else as a u64. */
function writeVersion(buf: Buffer, at: number, v: Version): void {
  if (v === VERSION_ABSENT) {
    buf.writeUInt32BE(0xffffffff, at);
    buf.writeUInt32BE(0xffffffff, at + 4);
  } else {
    writeU64(buf, at, v);
  }
}

function readVersion(buf: Buffer, at: number): Version | null {
  if (buf.readUInt32BE(at) === 0xffffffff && buf.readUInt32BE(at + 4) === 0xffffffff) return VERSION_ABSENT;
  return readU64(buf, at);
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

/**
 * A CRC-32C digest: 32 bits, as a u32 or as the int32 a JS bit operation
 * yields (`digest ^ 1`); both cross as the same bits and arrive as a u32.
 */
function isDigest(n: number): boolean {
  return Number.isInteger(n) && n >= -(2 ** 31) && n <= 0xffffffff;
}

function isToken(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= TOKEN_MAX;
}

function isWireVersion(v: number): boolean {
  return Number.isSafeInteger(v) && v >= VERSION_ABSENT;
}

/** A BlockRef from untrusted bytes, or null when it is not a valid one. */
function readRef(buf: Buffer, at: number): BlockRef | null {
  const volumeId = buf.readUInt32BE(at);
  const generation = buf.readUInt32BE(at + 4);
  if (volumeId === 0 || generation === 0 || buf.readUInt16BE(at + 8) !== 0) return null;
  return blockRef(volumeId, generation, buf.readUIntBE(at + 10, 6));
}

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Orders refs as stores list them: (volumeId, generation, index). */
export function compareRefs(a: BlockRef, b: BlockRef): number {
  return a.volumeId - b.volumeId || a.generation - b.generation || a.index - b.index;
}

// ---------------------------------------------------------------- small payloads

const STATE_BY_CODE: readonly (BlockState | undefined)[] = ['absent', 'data', 'zero'];
const OUTCOME_BY_CODE: readonly (InstallOutcome | undefined)[] = [undefined, 'installed', 'same', 'newer'];

export function encodeBlockMeta(m: BlockMeta, buf: Buffer, at: number): void {
  const code = BLOCK_STATE_CODES[m.state];
  assert(code !== undefined, 'block state is absent, data or zero');
  assert(isWireVersion(m.version), 'block version is a version');
  assert((m.state === 'absent') === (m.version === VERSION_ABSENT), 'a block is absent exactly when it has no version');
  assert(isU32(m.digest), 'digest is a u32');
  buf[at] = code;
  buf[at + 1] = m.suspect ? 1 : 0;
  writeVersion(buf, at + 2, m.version);
  buf.writeUInt32BE(m.digest, at + 10);
}

/** BlockMeta from untrusted bytes; null when it breaks the rules of block-meta.ts. */
export function decodeBlockMeta(buf: Buffer, at: number): BlockMeta | null {
  const state = STATE_BY_CODE[buf[at]!];
  const suspect = buf[at + 1]!;
  const version = readVersion(buf, at + 2);
  if (state === undefined || suspect > 1 || version === null) return null;
  if ((state === 'absent') !== (version === VERSION_ABSENT)) return null;
  return { state, version, suspect: suspect === 1, digest: buf.readUInt32BE(at + 10) };
}

function encodeVolumeId(volumeId: number): Buffer {
  const buf = Buffer.allocUnsafe(VOLUME_ID_PAYLOAD_BYTES);
  buf.writeUInt32BE(volumeId, 0);
  return buf;
}

function encodeRefList(refs: readonly BlockRef[]): Buffer {
  const buf = Buffer.allocUnsafe(refs.length * BLOCK_REF_WIRE_BYTES);
  for (let i = 0; i < refs.length; i++) encodeBlockRef(refs[i]!, buf, i * BLOCK_REF_WIRE_BYTES);
  return buf;
}

/** Decodes a META payload; null when a ref in it is not valid. */
function decodeRefList(buf: Buffer): BlockRef[] | null {
  if (buf.length % BLOCK_REF_WIRE_BYTES !== 0) return null;
  const refs: BlockRef[] = [];
  for (let at = 0; at < buf.length; at += BLOCK_REF_WIRE_BYTES) {
    const ref = readRef(buf, at);
    if (ref === null) return null;
    refs.push(ref);
  }
  return refs;
}

function encodeShortString(s: string, max: number, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  assert(b.length <= max, `${what} fits in ${max} bytes`);
  return Buffer.concat([Buffer.from([b.length]), b]);
}

// ---------------------------------------------------------------- request encoding

interface HeaderFields {
  ref: BlockRef | null;
  offset: number;
  length: number;
  token: number;
  version: Version;
  prev: Version;
  copyState: number;
  flags: number;
  payload: Buffer;
}

function fieldsOf(req: PeerRequest): HeaderFields {
  const f: HeaderFields = { ref: null, offset: 0, length: 0, token: 0, version: 0, prev: 0, copyState: 0, flags: 0, payload: EMPTY };
  switch (req.opcode) {
    // The data path's requests fill in the one object (no spread copy per request).
    case Opcode.READ:
      f.ref = req.ref;
      f.offset = req.offset;
      f.length = req.length;
      return f;
    case Opcode.WRITE:
      f.ref = req.ref;
      f.offset = req.offset;
      f.length = req.data.length;
      f.token = req.stamp.token;
      f.version = req.stamp.version;
      f.prev = req.stamp.prev;
      f.flags = req.fua ? FLAG_FUA : 0;
      f.payload = req.data;
      return f;
    case Opcode.ZERO:
      return {
        ...f,
        ref: req.ref,
        offset: req.offset,
        length: req.length,
        token: req.stamp.token,
        version: req.stamp.version,
        prev: req.stamp.prev,
        flags: (req.fua ? FLAG_FUA : 0) | (req.punch ? FLAG_PUNCH : 0),
      };
    case Opcode.INSTALL: {
      const data = req.copy.state === 'data' ? req.copy.data : null;
      assert(req.copy.state === 'zero' || data !== null, 'a data copy carries its bytes');
      assert(req.copy.state === 'data' || req.copy.data === null, 'a tombstone carries no bytes');
      return {
        ...f,
        ref: req.ref,
        length: data?.length ?? 0,
        token: req.token,
        version: req.copy.version,
        copyState: req.copy.state === 'data' ? COPY_STATE_DATA : COPY_STATE_ZERO,
        flags: req.fua ? FLAG_FUA : 0,
        payload: data ?? EMPTY,
      };
    }
    case Opcode.CONFIRM: {
      assert(isDigest(req.digest), 'digest is 32 bits');
      const payload = Buffer.allocUnsafe(CONFIRM_PAYLOAD_BYTES);
      payload.writeUInt32BE(req.digest >>> 0, 0);
      return { ...f, ref: req.ref, token: req.token, version: req.version, payload };
    }
    case Opcode.META:
    case Opcode.EXPECT:
      return { ...f, length: req.refs.length, payload: encodeRefList(req.refs) };
    case Opcode.LIST:
      return { ...f, ref: req.after, length: req.limit, payload: encodeVolumeId(req.volumeId) };
    case Opcode.VERIFY:
      return { ...f, ref: req.ref };
    case Opcode.DROP:
      return { ...f, ref: req.ref, token: req.token, version: req.version };
    case Opcode.FENCE:
      return { ...f, token: req.token, payload: encodeVolumeId(req.volumeId) };
    case Opcode.DELETE_VOLUME:
      return { ...f, payload: encodeVolumeId(req.volumeId) };
    case Opcode.FLUSH:
    case Opcode.USAGE:
    case Opcode.HELLO:
      return f;
  }
}

/**
 * A request as header and payload, written back to back by the caller (the
 * payload, e.g. a block, is not copied). `payloadCrc` may be passed when
 * already known: a coordinator sending one block to R replicas computes it once.
 */
export function encodeRequest(req: PeerRequest, requestId: number, payloadCrc?: number): { header: Buffer; payload: Buffer } {
  assert(isU32(requestId) && requestId <= REQUEST_ID_MAX, 'request id is a u32');
  const f = fieldsOf(req);
  assert(f.payload.length <= PAYLOAD_BYTES_MAX, 'payload within PAYLOAD_BYTES_MAX');
  assert(isU32(f.offset) && isU32(f.length), 'offset and length are u32');
  assert(isToken(f.token), 'token is within 0..TOKEN_MAX');
  assert(isWireVersion(f.version) && isWireVersion(f.prev), 'versions are versions');
  const h = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  h.writeUInt32BE(REQUEST_MAGIC, REQ.MAGIC);
  h[REQ.OPCODE] = req.opcode;
  h[REQ.FLAGS] = f.flags;
  h[REQ.COPY_STATE] = f.copyState;
  h[REQ.RESERVED] = 0;
  h.writeUInt32BE(requestId, REQ.REQUEST_ID);
  writeU64(h, REQ.RING_VERSION, req.ctx.ringVersion);
  if (f.ref === null) h.fill(0, REQ.REF, REQ.REF + BLOCK_REF_WIRE_BYTES);
  else encodeBlockRef(f.ref, h, REQ.REF);
  h.writeUInt32BE(f.offset, REQ.OFFSET);
  h.writeUInt32BE(f.length, REQ.LENGTH);
  writeU64(h, REQ.TOKEN, f.token);
  writeVersion(h, REQ.VERSION, f.version);
  writeVersion(h, REQ.PREV, f.prev);
  h.writeUInt32BE(f.payload.length, REQ.PAYLOAD_LENGTH);
  h.writeUInt32BE(payloadCrc ?? (f.payload.length === 0 ? 0 : crc32c(f.payload)), REQ.PAYLOAD_CRC);
  h.writeUInt32BE(crc32c(h.subarray(0, REQ.HEADER_CRC)), REQ.HEADER_CRC);
  return { header: h, payload: f.payload };
}

// ---------------------------------------------------------------- request validation

/** A request as read off the wire: framing checked, meaning not yet (see validateRequest). */
export interface RequestFrame {
  readonly opcode: number;
  readonly flags: number;
  readonly copyState: number;
  readonly reserved: number;
  readonly requestId: number;
  /** Null where the u64 is not a safe integer (a broken or hostile peer). */
  readonly ringVersion: number | null;
  /** Null when the ref field is not a valid BlockRef (all zeroes included). */
  readonly ref: BlockRef | null;
  readonly refZero: boolean;
  readonly offset: number;
  readonly length: number;
  readonly token: number | null;
  /** VERSION_ABSENT for all ones. */
  readonly version: Version | null;
  readonly prev: Version | null;
  readonly payload: Buffer;
  /** The CRC-32C of each page of a WRITE's payload of whole pages, as checked (null otherwise). */
  readonly pageCrcs?: Uint32Array | null;
}

const OPCODES_WITH_REF: ReadonlySet<number> = new Set([
  Opcode.READ,
  Opcode.WRITE,
  Opcode.ZERO,
  Opcode.INSTALL,
  Opcode.CONFIRM,
  Opcode.VERIFY,
  Opcode.DROP,
]);
const OPCODES_WITH_TOKEN: ReadonlySet<number> = new Set([Opcode.WRITE, Opcode.ZERO, Opcode.INSTALL, Opcode.CONFIRM, Opcode.DROP, Opcode.FENCE]);
const OPCODES_WITH_VERSION: ReadonlySet<number> = new Set([Opcode.WRITE, Opcode.ZERO, Opcode.INSTALL, Opcode.CONFIRM, Opcode.DROP]);
const OPCODES_WITH_PREV: ReadonlySet<number> = new Set([Opcode.WRITE, Opcode.ZERO]);
const OPCODES_WITH_OFFSET: ReadonlySet<number> = new Set([Opcode.READ, Opcode.WRITE, Opcode.ZERO]);
const OPCODES_WITH_LENGTH: ReadonlySet<number> = new Set([Opcode.READ, Opcode.WRITE, Opcode.ZERO, Opcode.INSTALL, Opcode.META, Opcode.EXPECT, Opcode.LIST]);

/**
 * Judges a well-framed request: the fields its opcode uses make sense on
 * their own and together, the others are zero, and it fits the block size.
 * An invalid request gets an error reply and the connection lives on (its
 * framing is intact). Returns the request or the error to reply with.
 */
export function validateRequest(f: RequestFrame, blockSize: number): PeerRequest | TorusError {
  const req = decodeRequest(f);
  if (req instanceof TorusError) return req;
  return checkRequest(req, blockSize) ?? req;
}

/** Field by field: which fields the opcode uses, and that each is representable. */
function decodeRequest(f: RequestFrame): PeerRequest | TorusError {
  const name = OPCODE_NAMES[f.opcode];
  const allowedFlags = OPCODE_FLAGS[f.opcode];
  if (name === undefined || allowedFlags === undefined) return protocolError(`unknown opcode ${f.opcode}`, { opcode: f.opcode });
  if ((f.flags & ~allowedFlags) !== 0) return protocolError(`${name}: flags 0x${f.flags.toString(16)} not allowed`, { flags: f.flags });
  if (f.reserved !== 0) return protocolError(`${name}: reserved header byte is not zero`);
  if (f.opcode === Opcode.INSTALL) {
    if (f.copyState !== COPY_STATE_DATA && f.copyState !== COPY_STATE_ZERO) return protocolError(`INSTALL: unknown copy state ${f.copyState}`);
  } else if (f.copyState !== 0) {
    return protocolError(`${name}: copy state must be zero`);
  }
  if (f.ringVersion === null) return protocolError(`${name}: ring version is not a safe integer`);
  if (OPCODES_WITH_REF.has(f.opcode)) {
    if (f.ref === null) return protocolError(`${name}: the block ref is not valid`);
  } else if (f.opcode === Opcode.LIST) {
    if (f.ref === null && !f.refZero) return protocolError('LIST: the after ref is not valid');
  } else if (!f.refZero) {
    return protocolError(`${name}: the block ref field must be zero`);
  }
  if (!OPCODES_WITH_OFFSET.has(f.opcode) && f.offset !== 0) return protocolError(`${name}: offset must be zero`);
  if (!OPCODES_WITH_LENGTH.has(f.opcode) && f.length !== 0) return protocolError(`${name}: length must be zero`);
  if (f.token === null || f.version === null || f.prev === null) return protocolError(`${name}: a u64 field is not a safe integer`);
  if (OPCODES_WITH_TOKEN.has(f.opcode)) {
    if (!isToken(f.token)) return protocolError(`${name}: token ${f.token} is above TOKEN_MAX`);
  } else if (f.token !== 0) {
    return protocolError(`${name}: token must be zero`);
  }
  if (!OPCODES_WITH_VERSION.has(f.opcode) && f.version !== 0) return protocolError(`${name}: version must be zero`);
  if (!OPCODES_WITH_PREV.has(f.opcode) && f.prev !== 0) return protocolError(`${name}: prev must be zero`);

  const ctx: RequestContext = { ringVersion: f.ringVersion };
  const fua = (f.flags & FLAG_FUA) !== 0;
  const payloadMust = (bytes: number): TorusError | null =>
    f.payload.length === bytes ? null : protocolError(`${name}: payload of ${f.payload.length} bytes, expected ${bytes}`);
  const volumeId = (): number | TorusError => {
    const bad = payloadMust(VOLUME_ID_PAYLOAD_BYTES);
    if (bad !== null) return bad;
    const id = f.payload.readUInt32BE(0);
    return id === 0 ? protocolError(`${name}: volume id 0`) : id;
  };
  const ref = f.ref!;
  const stamp = (): ChangeStamp => ({ token: f.token!, version: f.version!, prev: f.prev! });

  switch (f.opcode) {
    case Opcode.READ:
      return payloadMust(0) ?? { opcode: Opcode.READ, ctx, ref, offset: f.offset, length: f.length };
    case Opcode.WRITE:
      return payloadMust(f.length) ?? { opcode: Opcode.WRITE, ctx, ref, offset: f.offset, data: f.payload, stamp: stamp(), fua, pageCrcs: f.pageCrcs ?? undefined };
    case Opcode.ZERO:
      return (
        payloadMust(0) ?? {
          opcode: Opcode.ZERO,
          ctx,
          ref,
          offset: f.offset,
          length: f.length,
          stamp: stamp(),
          punch: (f.flags & FLAG_PUNCH) !== 0,
          fua,
        }
      );
    case Opcode.INSTALL: {
      const bad = payloadMust(f.length);
      if (bad !== null) return bad;
      if (f.copyState === COPY_STATE_ZERO) {
        if (f.length !== 0) return protocolError('INSTALL: a tombstone carries no bytes');
        return { opcode: Opcode.INSTALL, ctx, ref, copy: { state: 'zero', version: f.version, data: null }, token: f.token, fua };
      }
      return { opcode: Opcode.INSTALL, ctx, ref, copy: { state: 'data', version: f.version, data: f.payload }, token: f.token, fua };
    }
    case Opcode.CONFIRM:
      return (
        payloadMust(CONFIRM_PAYLOAD_BYTES) ?? {
          opcode: Opcode.CONFIRM,
          ctx,
          ref,
          version: f.version,
          digest: f.payload.readUInt32BE(0),
          token: f.token,
        }
      );
    case Opcode.META:
    case Opcode.EXPECT: {
      if (f.length > META_REFS_MAX) return protocolError(`${name}: ${f.length} refs exceed the limit of ${META_REFS_MAX}`);
      const bad = payloadMust(f.length * BLOCK_REF_WIRE_BYTES);
      if (bad !== null) return bad;
      const refs = decodeRefList(f.payload);
      if (refs === null) return protocolError(`${name}: a block ref is not valid`);
      return f.opcode === Opcode.META ? { opcode: Opcode.META, ctx, refs } : { opcode: Opcode.EXPECT, ctx, refs };
    }
    case Opcode.LIST: {
      const id = volumeId();
      if (id instanceof TorusError) return id;
      return { opcode: Opcode.LIST, ctx, volumeId: id, after: f.ref, limit: f.length };
    }
    case Opcode.VERIFY:
      return payloadMust(0) ?? { opcode: Opcode.VERIFY, ctx, ref };
    case Opcode.DROP:
      return payloadMust(0) ?? { opcode: Opcode.DROP, ctx, ref, version: f.version, token: f.token };
    case Opcode.FENCE: {
      const id = volumeId();
      if (id instanceof TorusError) return id;
      return { opcode: Opcode.FENCE, ctx, volumeId: id, token: f.token };
    }
    case Opcode.DELETE_VOLUME: {
      const id = volumeId();
      if (id instanceof TorusError) return id;
      return { opcode: Opcode.DELETE_VOLUME, ctx, volumeId: id };
    }
    case Opcode.FLUSH:
      return payloadMust(0) ?? { opcode: Opcode.FLUSH, ctx };
    case Opcode.USAGE:
      return payloadMust(0) ?? { opcode: Opcode.USAGE, ctx };
    case Opcode.HELLO:
      return payloadMust(0) ?? { opcode: Opcode.HELLO, ctx };
    default:
      return protocolError(`unknown opcode ${f.opcode}`);
  }
}

/**
 * The rules a request must follow beyond its encoding: ranges within the
 * block, versions that make sense, counts within their limits. The server
 * applies them to every request it reads; the client asserts them on every
 * request it sends (breaking one is a bug in the caller).
 */
export function checkRequest(req: PeerRequest, blockSize: number): TorusError | null {
  const name = OPCODE_NAMES[req.opcode]!;
  if (!Number.isSafeInteger(req.ctx.ringVersion) || req.ctx.ringVersion < 0) return protocolError(`${name}: ring version is not a u64`);
  const range = (offset: number, length: number): TorusError | null =>
    isU32(offset) && isU32(length) && offset + length <= blockSize
      ? null
      : new TorusError('TORUS_ERR_IO_OUT_OF_RANGE', `${name}: offset ${offset} + length ${length} exceeds the block size ${blockSize}`);
  const change = (s: ChangeStamp): TorusError | null => {
    if (!isToken(s.token)) return protocolError(`${name}: token ${s.token} is not within 0..TOKEN_MAX`);
    if (!isWireVersion(s.version) || s.version < 0) return protocolError(`${name}: a change must create a version, not ${s.version}`);
    if (!isWireVersion(s.prev)) return protocolError(`${name}: prev ${s.prev} is not a version`);
    // Versions of a block only grow: a change builds on an older version.
    if (s.version <= s.prev) return protocolError(`${name}: version ${s.version} does not follow prev ${s.prev}`);
    return null;
  };
  const token = (t: number): TorusError | null => (isToken(t) ? null : protocolError(`${name}: token ${t} is not within 0..TOKEN_MAX`));
  const volume = (id: number): TorusError | null => (isU32(id) && id > 0 ? null : protocolError(`${name}: volume id ${id} is not a positive u32`));

  switch (req.opcode) {
    case Opcode.READ:
      return range(req.offset, req.length);
    case Opcode.WRITE:
      return range(req.offset, req.data.length) ?? change(req.stamp);
    case Opcode.ZERO:
      return range(req.offset, req.length) ?? change(req.stamp);
    case Opcode.INSTALL: {
      const c = req.copy;
      if (c.state !== 'data' && c.state !== 'zero') return protocolError(`INSTALL: a copy is data or zero, not ${String(c.state)}`);
      if (!isWireVersion(c.version) || c.version < 0) return protocolError(`INSTALL: a copy has a version, not ${c.version}`);
      if (c.state === 'data' && c.data?.length !== blockSize) {
        return protocolError(`INSTALL: a data copy is a whole block of ${blockSize} bytes, not ${c.data?.length ?? 'none'}`);
      }
      if (c.state === 'zero' && c.data !== null) return protocolError('INSTALL: a tombstone carries no bytes');
      return token(req.token);
    }
    case Opcode.CONFIRM:
      if (!isWireVersion(req.version) || req.version < 0) return protocolError(`CONFIRM: a confirmed copy has a version, not ${req.version}`);
      if (!isDigest(req.digest)) return protocolError('CONFIRM: digest is not 32 bits');
      return token(req.token);
    case Opcode.META:
    case Opcode.EXPECT:
      return req.refs.length <= META_REFS_MAX ? null : protocolError(`${OPCODE_NAMES[req.opcode]}: ${req.refs.length} refs exceed the limit of ${META_REFS_MAX}`);
    case Opcode.LIST:
      if (!Number.isInteger(req.limit) || req.limit < 1 || req.limit > LIST_BLOCKS_MAX) {
        return protocolError(`LIST: limit ${req.limit} is not within 1..${LIST_BLOCKS_MAX}`);
      }
      if (req.after !== null && req.after.volumeId !== req.volumeId) return protocolError('LIST: the after ref is in another volume');
      return volume(req.volumeId);
    case Opcode.DROP:
      return isWireVersion(req.version) ? token(req.token) : protocolError(`DROP: ${req.version} is not a version`);
    case Opcode.FENCE:
      return volume(req.volumeId) ?? token(req.token);
    case Opcode.DELETE_VOLUME:
      return volume(req.volumeId);
    case Opcode.VERIFY:
    case Opcode.FLUSH:
    case Opcode.USAGE:
    case Opcode.HELLO:
      return null;
  }
}

// ---------------------------------------------------------------- replies

/**
 * The payload of a successful reply to `req`, in parts written back to back
 * (a READ's bytes follow its metadata without being copied). Asserts the
 * value is one the protocol can carry: a replica bug otherwise.
 */
export function encodeReply<R extends PeerRequest>(req: R, value: ReplyOf<R>): Buffer[] {
  const v = value as ReplyValues[keyof ReplyValues];
  if (req.opcode === Opcode.READ) {
    const r = v as ReadReply;
    assert(Buffer.isBuffer(r.data) && r.data.length === req.length, 'a read answers the length asked');
    const head = Buffer.allocUnsafe(BLOCK_META_BYTES);
    encodeBlockMeta(r.meta, head, 0);
    return [head, r.data];
  }
  return [encodeSmallReply(req, v)];
}

/**
 * The checksum of a reply's payload (encodeReply's parts) when it is known
 * without summing the bytes: a READ whose store gave the data's CRC-32C
 * (ReadReply.dataCrc) is summed over its metadata only. Undefined otherwise.
 */
export function knownReplyCrc<R extends PeerRequest>(req: R, value: ReplyOf<R>, parts: readonly Buffer[]): number | undefined {
  if (req.opcode !== Opcode.READ) return undefined;
  const r = value as ReadReply;
  if (r.dataCrc === undefined || r.data.length % CRC_PAGE_BYTES !== 0) return undefined;
  assert(parts.length === 2 && parts[1] === r.data, 'a READ reply is its metadata, then its data');
  return crc32cConcat(crc32c(parts[0]!), r.dataCrc, r.data.length, CRC_PAGE_BYTES);
}

function encodeSmallReply(req: PeerRequest, v: ReplyValues[keyof ReplyValues]): Buffer {
  switch (req.opcode) {
    case Opcode.READ:
      throw new TorusError('TORUS_ERR_ASSERTION', 'assertion failed: READ replies are encoded by encodeReply');
    case Opcode.WRITE:
    case Opcode.ZERO:
    case Opcode.FENCE:
    case Opcode.FLUSH:
    case Opcode.DELETE_VOLUME:
    case Opcode.EXPECT:
      return EMPTY;
    case Opcode.INSTALL: {
      const code = INSTALL_OUTCOME_CODES[v as InstallOutcome];
      assert(code !== undefined, 'install outcome is installed, same or newer');
      return Buffer.from([code]);
    }
    case Opcode.CONFIRM:
    case Opcode.DROP:
      assert(typeof v === 'boolean', 'the answer is a boolean');
      return Buffer.from([v ? 1 : 0]);
    case Opcode.META: {
      const metas = v as BlockMeta[];
      assert(metas.length === req.refs.length, 'meta answers one entry per ref');
      const buf = Buffer.allocUnsafe(metas.length * BLOCK_META_BYTES);
      metas.forEach((m, i) => encodeBlockMeta(m, buf, i * BLOCK_META_BYTES));
      return buf;
    }
    case Opcode.VERIFY: {
      const buf = Buffer.allocUnsafe(BLOCK_META_BYTES);
      encodeBlockMeta(v as BlockMeta, buf, 0);
      return buf;
    }
    case Opcode.LIST: {
      const { blocks, more } = v as ReplyValues[typeof Opcode.LIST];
      assert(blocks.length <= req.limit, 'list answers at most limit blocks');
      const buf = Buffer.allocUnsafe(LIST_REPLY_HEAD_BYTES + blocks.length * LIST_ENTRY_BYTES);
      buf[0] = more ? 1 : 0;
      buf.writeUInt32BE(blocks.length, 1);
      blocks.forEach((b, i) => {
        const at = LIST_REPLY_HEAD_BYTES + i * LIST_ENTRY_BYTES;
        encodeBlockRef(b.ref, buf, at);
        encodeBlockMeta(b, buf, at + BLOCK_REF_WIRE_BYTES);
      });
      return buf;
    }
    case Opcode.USAGE: {
      const u = v as StoreUsageInfo;
      const buf = Buffer.allocUnsafe(USAGE_PAYLOAD_BYTES);
      writeU64(buf, 0, u.capacity);
      writeU64(buf, 8, u.used);
      writeU64(buf, 16, u.blocks);
      return buf;
    }
    case Opcode.HELLO: {
      const p = v as PeerInfo;
      const ring = Buffer.allocUnsafe(8);
      writeU64(ring, 0, p.ringVersion);
      return Buffer.concat([
        ring,
        encodeShortString(p.uuid, PEER_UUID_BYTES_MAX, 'peer uuid'),
        encodeShortString(p.incarnation, INCARNATION_BYTES_MAX, 'incarnation'),
      ]);
    }
  }
}

/**
 * The value of a successful reply to `req`, checked against the request:
 * a reply that does not fit its request throws TORUS_ERR_PEER_PROTOCOL (the
 * peer cannot be trusted; the caller drops the connection). A READ's bytes
 * are a view into `payload` (no copy).
 */
export function decodeReply<R extends PeerRequest>(req: R, payload: Buffer): ReplyOf<R> {
  return decodeReplyValue(req, payload) as ReplyOf<R>;
}

function decodeReplyValue(req: PeerRequest, p: Buffer): ReplyValues[keyof ReplyValues] {
  const name = OPCODE_NAMES[req.opcode]!;
  const bad = (why: string): TorusError => protocolError(`${name} reply: ${why}`);
  const size = (bytes: number): void => {
    if (p.length !== bytes) throw bad(`${p.length} bytes, expected ${bytes}`);
  };
  const meta = (at: number): BlockMeta => {
    const m = decodeBlockMeta(p, at);
    if (m === null) throw bad('block metadata is not valid');
    return m;
  };
  const bool = (): boolean => {
    size(BYTE_REPLY_BYTES);
    if (p[0]! > 1) throw bad(`${p[0]} is not a boolean`);
    return p[0] === 1;
  };
  switch (req.opcode) {
    case Opcode.READ:
      size(BLOCK_META_BYTES + req.length);
      return { meta: meta(0), data: p.subarray(BLOCK_META_BYTES) };
    case Opcode.WRITE:
    case Opcode.ZERO:
    case Opcode.FENCE:
    case Opcode.FLUSH:
    case Opcode.DELETE_VOLUME:
    case Opcode.EXPECT:
      size(0);
      return undefined;
    case Opcode.INSTALL: {
      size(BYTE_REPLY_BYTES);
      const outcome = OUTCOME_BY_CODE[p[0]!];
      if (outcome === undefined) throw bad(`unknown outcome ${p[0]}`);
      return outcome;
    }
    case Opcode.CONFIRM:
    case Opcode.DROP:
      return bool();
    case Opcode.META: {
      size(req.refs.length * BLOCK_META_BYTES);
      const out: BlockMeta[] = [];
      for (let i = 0; i < req.refs.length; i++) out.push(meta(i * BLOCK_META_BYTES));
      return out;
    }
    case Opcode.VERIFY:
      size(BLOCK_META_BYTES);
      return meta(0);
    case Opcode.LIST: {
      if (p.length < LIST_REPLY_HEAD_BYTES) throw bad('too short');
      if (p[0]! > 1) throw bad('more is not a boolean');
      const count = p.readUInt32BE(1);
      if (count > req.limit) throw bad(`${count} blocks, asked at most ${req.limit}`);
      size(LIST_REPLY_HEAD_BYTES + count * LIST_ENTRY_BYTES);
      const blocks: ListedBlock[] = [];
      let last = req.after;
      for (let i = 0; i < count; i++) {
        const at = LIST_REPLY_HEAD_BYTES + i * LIST_ENTRY_BYTES;
        const ref = readRef(p, at);
        if (ref === null || ref.volumeId !== req.volumeId) throw bad('a listed ref is not a block of the volume');
        // In order and after `after`: a caller pages with the last ref, so a disorder would skip blocks.
        if (last !== null && compareRefs(ref, last) <= 0) throw bad('listed refs are not in order after the one asked');
        blocks.push({ ref, ...meta(at + BLOCK_REF_WIRE_BYTES) });
        last = ref;
      }
      return { blocks, more: p[0] === 1 };
    }
    case Opcode.USAGE: {
      size(USAGE_PAYLOAD_BYTES);
      const capacity = readU64(p, 0);
      const used = readU64(p, 8);
      const blocks = readU64(p, 16);
      if (capacity === null || used === null || blocks === null) throw bad('a count is not a safe integer');
      return { capacity, used, blocks };
    }
    case Opcode.HELLO: {
      if (p.length < 10) throw bad('too short');
      const ringVersion = readU64(p, 0);
      if (ringVersion === null) throw bad('ring version is not a safe integer');
      let at = 8;
      const uuidLength = p[at++]!;
      if (at + uuidLength + 1 > p.length) throw bad('uuid overruns the reply');
      const uuid = p.toString('utf8', at, at + uuidLength);
      at += uuidLength;
      const incLength = p[at++]!;
      if (at + incLength !== p.length) throw bad('length does not match its fields');
      return { uuid, incarnation: p.toString('utf8', at, at + incLength), ringVersion };
    }
  }
}

// ---------------------------------------------------------------- response headers

/**
 * The header of a response whose payload is `payload` (its parts back to
 * back; empty for none). `payloadCrc`, when known (knownReplyCrc), stands in
 * for summing the parts.
 */
export function encodeResponseHeader(opcode: number, requestId: number, status: number, payload: Buffer | readonly Buffer[], payloadCrc?: number): Buffer {
  const parts = Buffer.isBuffer(payload) ? [payload] : payload;
  let length = 0;
  let crc = 0;
  for (const part of parts) {
    if (part.length === 0) continue;
    if (payloadCrc === undefined) crc = crc32c(part, crc);
    length += part.length;
  }
  if (payloadCrc !== undefined) crc = payloadCrc;
  assert(length <= PAYLOAD_BYTES_MAX, 'payload within PAYLOAD_BYTES_MAX');
  const h = Buffer.allocUnsafe(RESPONSE_HEADER_BYTES);
  h.writeUInt32BE(RESPONSE_MAGIC, RES.MAGIC);
  h[RES.OPCODE] = opcode & 0xff;
  h[RES.STATUS] = status;
  h.writeUInt16BE(0, RES.RESERVED);
  h.writeUInt32BE(requestId >>> 0, RES.REQUEST_ID);
  h.writeUInt32BE(length, RES.PAYLOAD_LENGTH);
  h.writeUInt32BE(crc, RES.PAYLOAD_CRC);
  h.writeUInt32BE(crc32c(h.subarray(0, RES.HEADER_CRC)), RES.HEADER_CRC);
  return h;
}

export interface ResponseFrame {
  readonly opcode: number;
  readonly status: number;
  readonly requestId: number;
  readonly payload: Buffer;
}

// ---------------------------------------------------------------- errors

/** Details that cross the wire: top-level plain values only, within ERROR_DETAILS_BYTES_MAX as JSON. */
function wireDetails(details: Record<string, unknown> | undefined): Buffer {
  if (details === undefined) return EMPTY;
  const plain: [string, unknown][] = Object.entries(details).filter(
    ([, v]) => v === null || typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v)),
  );
  // Drop keys from the end until it fits: the first keys are the ones errors are built around.
  while (plain.length > 0) {
    const json = Buffer.from(JSON.stringify(Object.fromEntries(plain)), 'utf8');
    if (json.length <= ERROR_DETAILS_BYTES_MAX) return json;
    plain.pop();
  }
  return EMPTY;
}

/**
 * An error as the payload of a STATUS_ERROR reply: code, details, message
 * (cut to fit ERROR_PAYLOAD_BYTES_MAX).
 */
export function encodeErrorPayload(code: string, message: string, details?: Record<string, unknown>): Buffer {
  assert(code.length > 0 && code.length <= ERROR_CODE_BYTES_MAX && /^[A-Z0-9_]+$/.test(code), 'error code is short upper-case ASCII');
  const det = wireDetails(details);
  const msg = Buffer.from(message, 'utf8');
  const head = 2 + code.length + 2 + det.length;
  const msgBytes = Math.min(msg.length, ERROR_PAYLOAD_BYTES_MAX - head);
  const buf = Buffer.allocUnsafe(head + msgBytes);
  buf.writeUInt16BE(code.length, 0);
  buf.write(code, 2, 'ascii');
  buf.writeUInt16BE(det.length, 2 + code.length);
  det.copy(buf, 4 + code.length);
  msg.copy(buf, head, 0, msgBytes);
  return buf;
}

/** The one place internal errors become wire errors: anything not a TorusError is an I/O error. */
export function errorToPayload(err: unknown): Buffer {
  if (err instanceof TorusError) return encodeErrorPayload(err.code, err.message, err.details);
  const message = err instanceof Error ? err.message : String(err);
  return encodeErrorPayload('TORUS_ERR_STORE_IO', message);
}

function knownCode(code: string, message: string, context: Record<string, unknown>): TorusError | null {
  if (Object.hasOwn(ERROR_CODES, code)) return null;
  return protocolError(`peer reported an unknown error code ${code}: ${message}`, { ...context, remoteCode: code });
}

/**
 * The error a peer reported, as a TorusError with the same code and its
 * details, so callers handle a remote TORUS_ERR_STORE_NO_SPACE (or a
 * TORUS_ERR_RING_OUTDATED with its ringVersion) exactly like a local one.
 */
export function decodeErrorPayload(buf: Buffer, context: Record<string, unknown> = {}): TorusError {
  const malformed = (): TorusError => protocolError('malformed error payload from peer', context);
  if (buf.length < 4 || buf.length > ERROR_PAYLOAD_BYTES_MAX) return malformed();
  const codeLength = buf.readUInt16BE(0);
  if (codeLength === 0 || codeLength > ERROR_CODE_BYTES_MAX || 4 + codeLength > buf.length) return malformed();
  const code = buf.toString('latin1', 2, 2 + codeLength);
  const detailsLength = buf.readUInt16BE(2 + codeLength);
  const detailsAt = 4 + codeLength;
  if (detailsLength > ERROR_DETAILS_BYTES_MAX || detailsAt + detailsLength > buf.length) return malformed();
  let remote: Record<string, unknown> = {};
  if (detailsLength > 0) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(buf.toString('utf8', detailsAt, detailsAt + detailsLength));
    } catch {
      return malformed();
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return malformed();
    remote = parsed as Record<string, unknown>;
  }
  const message = buf.toString('utf8', detailsAt + detailsLength);
  return knownCode(code, message, context) ?? new TorusError(code as ErrorCode, message, { details: { ...remote, ...context, remote: true } });
}

/**
 * A handshake REJECT payload: `u16 code length, code, message`, the layout
 * of protocol 1, so that a peer of either version can read why it was refused.
 */
export function encodeRejectPayload(code: string, message: string): Buffer {
  assert(code.length > 0 && code.length <= ERROR_CODE_BYTES_MAX && /^[A-Z0-9_]+$/.test(code), 'error code is short upper-case ASCII');
  const msg = Buffer.from(message, 'utf8');
  const msgBytes = Math.min(msg.length, ERROR_PAYLOAD_BYTES_MAX - 2 - code.length);
  const buf = Buffer.allocUnsafe(2 + code.length + msgBytes);
  buf.writeUInt16BE(code.length, 0);
  buf.write(code, 2, 'ascii');
  msg.copy(buf, 2 + code.length, 0, msgBytes);
  return buf;
}

export function decodeRejectPayload(buf: Buffer, context: Record<string, unknown> = {}): TorusError {
  if (buf.length < 2 || buf.length > ERROR_PAYLOAD_BYTES_MAX) return protocolError('malformed handshake refusal from peer', context);
  const codeLength = buf.readUInt16BE(0);
  if (codeLength === 0 || codeLength > ERROR_CODE_BYTES_MAX || 2 + codeLength > buf.length) {
    return protocolError('malformed handshake refusal from peer', context);
  }
  const code = buf.toString('latin1', 2, 2 + codeLength);
  const message = buf.toString('utf8', 2 + codeLength);
  return knownCode(code, message, context) ?? new TorusError(code as ErrorCode, message, { details: { ...context, remote: true } });
}

// ---------------------------------------------------------------- frame decoding

/**
 * Where a decoder gets the buffer a frame's payload is received into. The
 * payload of a frame handed out by next() belongs to the caller from then
 * on (a pooled one is released by whoever finishes with it). Injected,
 * so that a daemon can hand out pooled buffers (util/buffer-pool.ts) and the
 * codec stays free of I/O and of the pool.
 */
export interface PayloadBuffers {
  acquire(length: number): Buffer;
}

const PLAIN_BUFFERS: PayloadBuffers = { acquire: (n) => Buffer.allocUnsafe(n) };

/**
 * Cuts frames out of the byte stream of one connection. Framing errors
 * (bad magic, bad CRC, oversized payload) are fatal to the connection: the
 * decoder throws a TorusError and stays broken. A request that is well
 * framed but means nothing valid is returned; validateRequest judges it.
 *
 * A payload is received into its final buffer (PayloadBuffers): bytes
 * already queued are copied there once, and a socket that supports it reads
 * the rest straight into it (directBuffer / directFilled), so a block
 * crosses user space without a byte-queue copy or a 64 KiB chunk per read.
 */
abstract class FrameDecoder<F> {
  readonly queue = new ByteQueue();
  private broken: TorusError | null = null;
  /** The header of the frame being received (copied out: the queue's chunks may be reused read buffers). */
  private readonly header: Buffer;
  /** A header was parsed and its payload is being received into `payload`. */
  private pending = false;
  private payload: Buffer = EMPTY;
  private filled = 0;
  private payloadCrc = 0;

  constructor(
    private readonly headerBytes: number,
    private readonly magic: number,
    /** Offset of the u32 payload length; the payload CRC and the header CRC follow it. */
    private readonly payloadLengthAt: number,
    protected readonly payloadBytesMax: number,
    private readonly buffers: PayloadBuffers = PLAIN_BUFFERS,
  ) {
    assert(payloadBytesMax >= 0 && payloadBytesMax <= PAYLOAD_BYTES_MAX, 'payloadBytesMax within PAYLOAD_BYTES_MAX');
    this.header = Buffer.alloc(headerBytes);
  }

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  get bufferedBytes(): number {
    return this.queue.length + this.filled;
  }

  /** The next whole frame, or null until more bytes arrive. */
  next(): F | null {
    if (this.broken !== null) throw this.broken;
    try {
      return this.step();
    } catch (err) {
      this.broken = err as TorusError;
      this.dispose();
      throw err;
    }
  }

  /**
   * Where the next socket read may go straight: the unfilled rest of the
   * payload being received, when no queued byte comes before it. Null
   * otherwise (the read goes to the queue).
   */
  directBuffer(): Buffer | null {
    if (!this.pending || this.broken !== null || this.queue.length > 0 || this.filled >= this.payload.length) return null;
    return this.payload.subarray(this.filled);
  }

  /** `n` bytes were read into the buffer directBuffer() returned. */
  directFilled(n: number): void {
    assert(this.pending && this.queue.length === 0 && this.filled + n <= this.payload.length, 'a direct read lands at the end of the payload being received');
    this.filled += n;
  }

  /**
   * Drops what is queued and the payload being received (the connection is
   * closing or broke). That payload is left to the garbage collector, not
   * given back: a socket reading straight into it may already have been
   * told to put its next read there.
   */
  dispose(): void {
    this.queue.clear();
    this.pending = false;
    this.payload = EMPTY;
    this.filled = 0;
  }

  private step(): F | null {
    if (!this.pending) {
      if (this.queue.length < this.headerBytes) return null;
      const header = this.queue.peek(this.headerBytes);
      const crcAt = this.headerBytes - 4;
      if (header.readUInt32BE(0) !== this.magic) {
        throw protocolError('frame does not start with the peer protocol 2 magic', { magic: header.readUInt32BE(0) });
      }
      if (crc32c(header.subarray(0, crcAt)) !== header.readUInt32BE(crcAt)) {
        throw new TorusError('TORUS_ERR_PEER_CHECKSUM', 'frame header failed its checksum');
      }
      const payloadLength = header.readUInt32BE(this.payloadLengthAt);
      if (payloadLength > this.payloadBytesMax) {
        throw protocolError(`frame payload of ${payloadLength} bytes exceeds the limit of ${this.payloadBytesMax}`, { payloadLength });
      }
      header.copy(this.header, 0, 0, this.headerBytes);
      this.queue.skip(this.headerBytes);
      this.payloadCrc = this.header.readUInt32BE(this.payloadLengthAt + 4);
      this.payload = payloadLength === 0 ? EMPTY : this.buffers.acquire(payloadLength);
      assert(this.payload.length === payloadLength, 'a payload buffer has the length asked for');
      this.filled = 0;
      this.pending = true;
    }
    if (this.filled < this.payload.length) this.filled += this.queue.copyTo(this.payload, this.filled, this.payload.length - this.filled);
    if (this.filled < this.payload.length) return null;
    const payload = this.payload;
    // A payload the receiver stores page by page is summed per page, and its
    // checksum combined from those: one pass over the bytes for both.
    let pageCrcs: Uint32Array | null = null;
    let crc: number;
    if (payload.length === 0) {
      crc = 0;
    } else if (payload.length % CRC_PAGE_BYTES === 0 && this.storedByPage(this.header)) {
      const pages = payload.length / CRC_PAGE_BYTES;
      pageCrcs = new Uint32Array(pages);
      crc32cPages(payload, CRC_PAGE_BYTES, pageCrcs);
      crc = crc32cCombinePages(pageCrcs, CRC_PAGE_BYTES);
    } else {
      crc = crc32c(payload);
    }
    if (crc !== this.payloadCrc) {
      throw new TorusError('TORUS_ERR_PEER_CHECKSUM', 'frame payload failed its checksum', {
        details: { requestId: this.header.readUInt32BE(8), opcode: this.header[4] },
      });
    }
    this.pending = false;
    this.payload = EMPTY;
    this.filled = 0;
    return this.parse(this.header, payload, pageCrcs);
  }

  /** Whether the frame with this header carries data the receiver stores page by page (its page CRCs are kept). */
  protected storedByPage(_header: Buffer): boolean {
    return false;
  }

  /** Bytes still needed before the next frame can complete (0 if unknown). */
  get wantedBytes(): number {
    if (!this.pending) return Math.max(0, this.headerBytes - this.queue.length);
    return Math.max(0, this.payload.length - this.filled - this.queue.length);
  }

  /** Reads the frame's fields out of `header` at once: the header buffer is reused for the next frame. */
  protected abstract parse(header: Buffer, payload: Buffer, pageCrcs: Uint32Array | null): F;
}

export class RequestDecoder extends FrameDecoder<RequestFrame> {
  constructor(payloadBytesMax = PAYLOAD_BYTES_MAX, buffers?: PayloadBuffers) {
    super(REQUEST_HEADER_BYTES, REQUEST_MAGIC, REQ.PAYLOAD_LENGTH, payloadBytesMax, buffers);
  }

  protected override storedByPage(h: Buffer): boolean {
    return h[REQ.OPCODE] === Opcode.WRITE;
  }

  protected parse(h: Buffer, payload: Buffer, pageCrcs: Uint32Array | null): RequestFrame {
    return {
      opcode: h[REQ.OPCODE]!,
      flags: h[REQ.FLAGS]!,
      copyState: h[REQ.COPY_STATE]!,
      reserved: h[REQ.RESERVED]!,
      requestId: h.readUInt32BE(REQ.REQUEST_ID),
      ringVersion: readU64(h, REQ.RING_VERSION),
      ref: readRef(h, REQ.REF),
      refZero: isZero(h, REQ.REF, REQ.REF + BLOCK_REF_WIRE_BYTES),
      offset: h.readUInt32BE(REQ.OFFSET),
      length: h.readUInt32BE(REQ.LENGTH),
      token: readU64(h, REQ.TOKEN),
      version: readVersion(h, REQ.VERSION),
      prev: readVersion(h, REQ.PREV),
      payload,
      pageCrcs,
    };
  }
}

export class ResponseDecoder extends FrameDecoder<ResponseFrame> {
  constructor(payloadBytesMax = PAYLOAD_BYTES_MAX, buffers?: PayloadBuffers) {
    super(RESPONSE_HEADER_BYTES, RESPONSE_MAGIC, RES.PAYLOAD_LENGTH, payloadBytesMax, buffers);
  }

  protected parse(h: Buffer, payload: Buffer): ResponseFrame {
    const status = h[RES.STATUS]!;
    if (status !== STATUS_OK && status !== STATUS_ERROR) throw protocolError(`unknown response status ${status}`, { status });
    if (h.readUInt16BE(RES.RESERVED) !== 0) throw protocolError('reserved response header bits are set');
    return { opcode: h[RES.OPCODE]!, status, requestId: h.readUInt32BE(RES.REQUEST_ID), payload };
  }
}
