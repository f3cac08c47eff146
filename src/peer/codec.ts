import { ERROR_CODES, type ErrorCode } from '../errors/codes.js';
import { TorusError } from '../errors/torus-error.js';
import { blockRef, encodeBlockRef, BLOCK_REF_BYTES, type BlockRef } from '../model/block-ref.js';
import { assert } from '../util/assert.js';
import { crc32c } from '../util/crc32c.js';
import { ByteQueue } from '../util/byte-queue.js';
import {
  ALLOCATED_REFS_MAX,
  DELETE_VOLUME_PAYLOAD_BYTES,
  ERROR_CODE_BYTES_MAX,
  ERROR_PAYLOAD_BYTES_MAX,
  FLAG_FENCE,
  FLAG_FUA,
  FLAG_PUNCH,
  OPCODE_FLAGS,
  OPCODE_NAMES,
  OPCODES_WITH_REF,
  Opcode,
  PAYLOAD_BYTES_MAX,
  REQUEST_HEADER_BYTES,
  REQUEST_ID_MAX,
  REQUEST_MAGIC,
  RESPONSE_HEADER_BYTES,
  RESPONSE_MAGIC,
  STATUS_ERROR,
  STATUS_OK,
  USAGE_PAYLOAD_BYTES,
} from './protocol.js';
import type { StoreUsage } from '../store/block-store.js';

const TWO_32 = 2 ** 32;
/** Fence tokens are safe integers: the high word stays below 2^21. */
const FENCE_HIGH_MAX = 2 ** 21 - 1;

/** What a client asks; `ref` is null for opcodes that name no block. */
export interface RequestHead {
  readonly opcode: Opcode;
  readonly flags: number;
  readonly requestId: number;
  readonly ref: BlockRef | null;
  readonly offset: number;
  readonly length: number;
  /** Sent (with FLAG_FENCE) when defined. */
  readonly fence: number | undefined;
}

/** A request as read off the wire: framing checked, meaning not yet (see validateRequest). */
export interface RequestFrame {
  readonly opcode: number;
  readonly flags: number;
  readonly requestId: number;
  /** Null when the ref field is not a valid BlockRef (all zeroes included). */
  readonly ref: BlockRef | null;
  readonly refZero: boolean;
  readonly offset: number;
  readonly length: number;
  /** The raw u64 as a number; may be unsafe if the peer is broken (validateRequest checks). */
  readonly fenceHigh: number;
  readonly fenceLow: number;
  readonly payload: Buffer;
}

export interface ResponseFrame {
  readonly opcode: number;
  readonly status: number;
  readonly requestId: number;
  readonly payload: Buffer;
}

function protocolError(message: string, details?: Record<string, unknown>): TorusError {
  return new TorusError('TORUS_ERR_PEER_PROTOCOL', message, details === undefined ? undefined : { details });
}

// ---------------------------------------------------------------- encoding

/**
 * The header of a request carrying `payload` (empty buffer for none). The
 * caller writes header and payload back to back: the payload is not copied.
 * `payloadCrc` may be passed when already known (a block sent to R replicas).
 */
export function encodeRequestHeader(head: RequestHead, payload: Buffer, payloadCrc?: number): Buffer {
  assert(head.requestId >= 0 && head.requestId <= REQUEST_ID_MAX, 'request id is a u32');
  assert(payload.length <= PAYLOAD_BYTES_MAX, 'payload within PAYLOAD_BYTES_MAX');
  const h = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h[4] = head.opcode;
  h[5] = head.fence === undefined ? head.flags & ~FLAG_FENCE : head.flags | FLAG_FENCE;
  h.writeUInt16BE(0, 6);
  h.writeUInt32BE(head.requestId, 8);
  if (head.ref === null) h.fill(0, 12, 12 + BLOCK_REF_BYTES);
  else encodeBlockRef(head.ref, h, 12);
  h.writeUInt32BE(head.offset, 28);
  h.writeUInt32BE(head.length, 32);
  const fence = head.fence ?? 0;
  assert(Number.isSafeInteger(fence) && fence >= 0, 'fence is a non-negative safe integer');
  h.writeUInt32BE(Math.floor(fence / TWO_32), 36);
  h.writeUInt32BE(fence >>> 0, 40);
  h.writeUInt32BE(payload.length, 44);
  h.writeUInt32BE(payloadCrc ?? (payload.length === 0 ? 0 : crc32c(payload)), 48);
  h.writeUInt32BE(crc32c(h.subarray(0, 52)), 52);
  return h;
}

/** The header of a response carrying `payload` (empty for none). */
export function encodeResponseHeader(opcode: number, requestId: number, status: number, payload: Buffer): Buffer {
  assert(payload.length <= PAYLOAD_BYTES_MAX, 'payload within PAYLOAD_BYTES_MAX');
  const h = Buffer.allocUnsafe(RESPONSE_HEADER_BYTES);
  h.writeUInt32BE(RESPONSE_MAGIC, 0);
  h[4] = opcode & 0xff;
  h[5] = status;
  h.writeUInt16BE(0, 6);
  h.writeUInt32BE(requestId >>> 0, 8);
  h.writeUInt32BE(payload.length, 12);
  h.writeUInt32BE(payload.length === 0 ? 0 : crc32c(payload), 16);
  h.writeUInt32BE(crc32c(h.subarray(0, 20)), 20);
  return h;
}

export function encodeRefList(refs: readonly BlockRef[]): Buffer {
  assert(refs.length <= ALLOCATED_REFS_MAX, 'at most ALLOCATED_REFS_MAX refs per request');
  const buf = Buffer.allocUnsafe(refs.length * BLOCK_REF_BYTES);
  for (let i = 0; i < refs.length; i++) encodeBlockRef(refs[i]!, buf, i * BLOCK_REF_BYTES);
  return buf;
}

/** Decodes an ALLOCATED payload; null when a ref in it is not valid. */
export function decodeRefList(buf: Buffer): BlockRef[] | null {
  if (buf.length % BLOCK_REF_BYTES !== 0) return null;
  const refs: BlockRef[] = [];
  for (let at = 0; at < buf.length; at += BLOCK_REF_BYTES) {
    const ref = readRef(buf, at);
    if (ref === null) return null;
    refs.push(ref);
  }
  return refs;
}

/** Bit i (MSB first within each byte) is refs[i]. */
export function encodeBitmap(bits: readonly boolean[]): Buffer {
  const buf = Buffer.alloc(Math.ceil(bits.length / 8));
  for (let i = 0; i < bits.length; i++) if (bits[i]) buf[i >> 3]! |= 0x80 >> (i & 7);
  return buf;
}

export function decodeBitmap(buf: Buffer, count: number): boolean[] | null {
  if (buf.length !== Math.ceil(count / 8)) return null;
  const out = new Array<boolean>(count);
  for (let i = 0; i < count; i++) out[i] = (buf[i >> 3]! & (0x80 >> (i & 7))) !== 0;
  return out;
}

export function encodeUsage(u: StoreUsage): Buffer {
  const buf = Buffer.allocUnsafe(USAGE_PAYLOAD_BYTES);
  writeU64(buf, 0, u.capacity);
  writeU64(buf, 8, u.used);
  writeU64(buf, 16, u.blocks);
  return buf;
}

export function decodeUsage(buf: Buffer): StoreUsage | null {
  if (buf.length !== USAGE_PAYLOAD_BYTES) return null;
  const capacity = readU64(buf, 0);
  const used = readU64(buf, 8);
  const blocks = readU64(buf, 16);
  if (capacity === null || used === null || blocks === null) return null;
  return { capacity, used, blocks };
}

export function encodeVolumeId(volumeId: number): Buffer {
  const buf = Buffer.allocUnsafe(DELETE_VOLUME_PAYLOAD_BYTES);
  buf.writeUInt32BE(volumeId, 0);
  return buf;
}

/** An error as the payload of a STATUS_ERROR response (or a handshake REJECT). */
export function encodeErrorPayload(code: string, message: string): Buffer {
  assert(code.length > 0 && code.length <= ERROR_CODE_BYTES_MAX && /^[A-Z0-9_]+$/.test(code), 'error code is short upper-case ASCII');
  const msg = Buffer.from(message, 'utf8');
  const msgBytes = Math.min(msg.length, ERROR_PAYLOAD_BYTES_MAX - 2 - code.length);
  const buf = Buffer.allocUnsafe(2 + code.length + msgBytes);
  buf.writeUInt16BE(code.length, 0);
  buf.write(code, 2, 'ascii');
  msg.copy(buf, 2 + code.length, 0, msgBytes);
  return buf;
}

/** The one place internal errors become wire errors: anything not a TorusError is an I/O error. */
export function errorToPayload(err: unknown): Buffer {
  if (err instanceof TorusError) return encodeErrorPayload(err.code, err.message);
  const message = err instanceof Error ? err.message : String(err);
  return encodeErrorPayload('TORUS_ERR_STORE_IO', message);
}

/**
 * The error a peer reported, as a TorusError with the same code, so callers
 * handle a remote TORUS_ERR_STORE_NO_SPACE exactly like a local one.
 */
export function decodeErrorPayload(buf: Buffer, context: Record<string, unknown> = {}): TorusError {
  if (buf.length < 2 || buf.length > ERROR_PAYLOAD_BYTES_MAX) return protocolError('malformed error payload from peer', context);
  const codeLength = buf.readUInt16BE(0);
  if (codeLength === 0 || codeLength > ERROR_CODE_BYTES_MAX || 2 + codeLength > buf.length) {
    return protocolError('malformed error payload from peer', context);
  }
  const code = buf.toString('latin1', 2, 2 + codeLength);
  const message = buf.toString('utf8', 2 + codeLength);
  if (!Object.hasOwn(ERROR_CODES, code)) {
    return protocolError(`peer reported an unknown error code ${code}: ${message}`, { ...context, remoteCode: code });
  }
  return new TorusError(code as ErrorCode, message, { details: { ...context, remote: true } });
}

// ---------------------------------------------------------------- decoding

function writeU64(buf: Buffer, at: number, value: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, 'u64 field is a non-negative safe integer');
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

function readU64(buf: Buffer, at: number): number | null {
  const high = buf.readUInt32BE(at);
  if (high > FENCE_HIGH_MAX) return null;
  return high * TWO_32 + buf.readUInt32BE(at + 4);
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

/**
 * Cuts frames out of the byte stream of one connection. Framing errors
 * (bad magic, bad CRC, oversized payload) are fatal to the connection: the
 * decoder throws a TorusError and stays broken. A request that is well
 * framed but means nothing valid is returned; validateRequest judges it.
 */
abstract class FrameDecoder<F> {
  readonly queue = new ByteQueue();
  private broken: TorusError | null = null;
  /** Parsed header waiting for its payload. */
  private pending: { header: Buffer; payloadLength: number; payloadCrc: number } | null = null;

  constructor(
    private readonly headerBytes: number,
    private readonly magic: number,
    protected readonly payloadBytesMax: number,
  ) {
    assert(payloadBytesMax >= 0 && payloadBytesMax <= PAYLOAD_BYTES_MAX, 'payloadBytesMax within PAYLOAD_BYTES_MAX');
  }

  push(chunk: Buffer): void {
    this.queue.push(chunk);
  }

  get bufferedBytes(): number {
    return this.queue.length;
  }

  /** The next whole frame, or null until more bytes arrive. */
  next(): F | null {
    if (this.broken !== null) throw this.broken;
    try {
      return this.step();
    } catch (err) {
      this.broken = err as TorusError;
      this.queue.clear();
      throw err;
    }
  }

  private step(): F | null {
    if (this.pending === null) {
      if (this.queue.length < this.headerBytes) return null;
      const header = this.queue.peek(this.headerBytes);
      const crcAt = this.headerBytes - 4;
      if (header.readUInt32BE(0) !== this.magic) {
        throw protocolError('frame does not start with the peer protocol magic', { magic: header.readUInt32BE(0) });
      }
      if (crc32c(header.subarray(0, crcAt)) !== header.readUInt32BE(crcAt)) {
        throw new TorusError('TORUS_ERR_PEER_CHECKSUM', 'frame header failed its checksum');
      }
      const payloadLength = header.readUInt32BE(crcAt - 8);
      if (payloadLength > this.payloadBytesMax) {
        throw protocolError(`frame payload of ${payloadLength} bytes exceeds the limit of ${this.payloadBytesMax}`, { payloadLength });
      }
      // Copy the header out: a view would pin the chunk it lies in.
      this.pending = { header: Buffer.from(header), payloadLength, payloadCrc: header.readUInt32BE(crcAt - 4) };
      this.queue.skip(this.headerBytes);
    }
    const { header, payloadLength, payloadCrc } = this.pending;
    if (this.queue.length < payloadLength) return null;
    const payload = this.queue.take(payloadLength);
    this.pending = null;
    const crc = payloadLength === 0 ? 0 : crc32c(payload);
    if (crc !== payloadCrc) {
      throw new TorusError('TORUS_ERR_PEER_CHECKSUM', 'frame payload failed its checksum', {
        details: { requestId: header.readUInt32BE(8), opcode: header[4] },
      });
    }
    return this.parse(header, payload);
  }

  /** Bytes still needed before the next frame can complete (0 if unknown). */
  get wantedBytes(): number {
    if (this.pending === null) return Math.max(0, this.headerBytes - this.queue.length);
    return Math.max(0, this.pending.payloadLength - this.queue.length);
  }

  protected abstract parse(header: Buffer, payload: Buffer): F;
}

export class RequestDecoder extends FrameDecoder<RequestFrame> {
  constructor(payloadBytesMax = PAYLOAD_BYTES_MAX) {
    super(REQUEST_HEADER_BYTES, REQUEST_MAGIC, payloadBytesMax);
  }

  protected parse(h: Buffer, payload: Buffer): RequestFrame {
    return {
      opcode: h[4]!,
      flags: h[5]!,
      requestId: h.readUInt32BE(8),
      ref: readRef(h, 12),
      refZero: isZero(h, 12, 12 + BLOCK_REF_BYTES),
      offset: h.readUInt32BE(28),
      length: h.readUInt32BE(32),
      fenceHigh: h.readUInt32BE(36),
      fenceLow: h.readUInt32BE(40),
      payload,
    };
  }
}

export class ResponseDecoder extends FrameDecoder<ResponseFrame> {
  constructor(payloadBytesMax = PAYLOAD_BYTES_MAX) {
    super(RESPONSE_HEADER_BYTES, RESPONSE_MAGIC, payloadBytesMax);
  }

  protected parse(h: Buffer, payload: Buffer): ResponseFrame {
    const status = h[5]!;
    if (status !== STATUS_OK && status !== STATUS_ERROR) throw protocolError(`unknown response status ${status}`, { status });
    if (h.readUInt16BE(6) !== 0) throw protocolError('reserved response header bits are set');
    return { opcode: h[4]!, status, requestId: h.readUInt32BE(8), payload };
  }
}

// ---------------------------------------------------------------- validation

/** A request whose fields make sense together, ready to hand to a BlockStore. */
export type ValidRequest =
  | { readonly opcode: typeof Opcode.READ; readonly ref: BlockRef; readonly offset: number; readonly length: number }
  | {
      readonly opcode: typeof Opcode.WRITE;
      readonly ref: BlockRef;
      readonly offset: number;
      readonly data: Buffer;
      readonly fua: boolean;
      readonly fence: number | undefined;
    }
  | {
      readonly opcode: typeof Opcode.ZERO;
      readonly ref: BlockRef;
      readonly offset: number;
      readonly length: number;
      readonly fua: boolean;
      readonly punch: boolean;
      readonly fence: number | undefined;
    }
  | { readonly opcode: typeof Opcode.FLUSH }
  | { readonly opcode: typeof Opcode.ALLOCATED; readonly refs: BlockRef[] }
  | { readonly opcode: typeof Opcode.DELETE_VOLUME; readonly volumeId: number }
  | { readonly opcode: typeof Opcode.USAGE }
  | { readonly opcode: typeof Opcode.PING };

/**
 * Judges a well-framed request against the protocol and the block size. An
 * invalid request gets an error reply; the connection lives on (its framing
 * is intact). Returns the request or the TorusError to reply with.
 */
export function validateRequest(f: RequestFrame, blockSize: number): ValidRequest | TorusError {
  const name = OPCODE_NAMES[f.opcode];
  const allowedFlags = OPCODE_FLAGS[f.opcode];
  if (name === undefined || allowedFlags === undefined) return protocolError(`unknown opcode ${f.opcode}`, { opcode: f.opcode });
  if ((f.flags & ~allowedFlags) !== 0) return protocolError(`${name}: flags 0x${f.flags.toString(16)} not allowed`, { flags: f.flags });
  if (OPCODES_WITH_REF.has(f.opcode)) {
    if (f.ref === null) return protocolError(`${name}: the block ref is not valid`);
  } else if (!f.refZero) {
    return protocolError(`${name}: the block ref field must be zero`);
  }
  if (f.fenceHigh > FENCE_HIGH_MAX) return protocolError(`${name}: fence token is not a safe integer`);
  const fence = (f.flags & FLAG_FENCE) !== 0 ? f.fenceHigh * TWO_32 + f.fenceLow : undefined;
  if (fence === undefined && (f.fenceHigh !== 0 || f.fenceLow !== 0)) return protocolError(`${name}: fence token without FLAG_FENCE`);
  const fua = (f.flags & FLAG_FUA) !== 0;
  const punch = (f.flags & FLAG_PUNCH) !== 0;
  const payloadMust = (bytes: number): TorusError | null =>
    f.payload.length === bytes ? null : protocolError(`${name}: payload of ${f.payload.length} bytes, expected ${bytes}`);
  const range = (): TorusError | null =>
    f.offset + f.length <= blockSize
      ? null
      : new TorusError('TORUS_ERR_IO_OUT_OF_RANGE', `${name}: offset ${f.offset} + length ${f.length} exceeds the block size ${blockSize}`);
  const noRange = (): TorusError | null =>
    f.offset === 0 && f.length === 0 ? null : protocolError(`${name}: offset and length must be zero`);

  switch (f.opcode) {
    case Opcode.READ:
      return payloadMust(0) ?? range() ?? { opcode: Opcode.READ, ref: f.ref!, offset: f.offset, length: f.length };
    case Opcode.WRITE:
      return (
        payloadMust(f.length) ??
        range() ?? { opcode: Opcode.WRITE, ref: f.ref!, offset: f.offset, data: f.payload, fua, fence }
      );
    case Opcode.ZERO:
      return (
        payloadMust(0) ??
        range() ?? { opcode: Opcode.ZERO, ref: f.ref!, offset: f.offset, length: f.length, fua, punch, fence }
      );
    case Opcode.FLUSH:
      return payloadMust(0) ?? noRange() ?? { opcode: Opcode.FLUSH };
    case Opcode.ALLOCATED: {
      if (f.offset !== 0) return protocolError('ALLOCATED: offset must be zero');
      if (f.length > ALLOCATED_REFS_MAX) return protocolError(`ALLOCATED: ${f.length} refs exceed the limit of ${ALLOCATED_REFS_MAX}`);
      const bad = payloadMust(f.length * BLOCK_REF_BYTES);
      if (bad !== null) return bad;
      const refs = decodeRefList(f.payload);
      if (refs === null) return protocolError('ALLOCATED: a block ref is not valid');
      return { opcode: Opcode.ALLOCATED, refs };
    }
    case Opcode.DELETE_VOLUME: {
      const bad = payloadMust(DELETE_VOLUME_PAYLOAD_BYTES) ?? noRange();
      if (bad !== null) return bad;
      const volumeId = f.payload.readUInt32BE(0);
      if (volumeId === 0) return protocolError('DELETE_VOLUME: volume id 0');
      return { opcode: Opcode.DELETE_VOLUME, volumeId };
    }
    case Opcode.USAGE:
      return payloadMust(0) ?? noRange() ?? { opcode: Opcode.USAGE };
    case Opcode.PING:
      return payloadMust(0) ?? noRange() ?? { opcode: Opcode.PING };
    default:
      return protocolError(`unknown opcode ${f.opcode}`);
  }
}
