import { describe, expect, it } from 'vitest';
import { TorusError, isTorusError } from '../../src/errors/torus-error.js';
import type { BlockMeta } from '../../src/model/block-meta.js';
import { blockRef } from '../../src/model/block-ref.js';
import { LIST_BLOCKS_MAX, META_REFS_MAX } from '../../src/model/replica-api.js';
import { TOKEN_MAX, VERSION_ABSENT, makeVersion } from '../../src/model/version.js';
import {
  RequestDecoder,
  ResponseDecoder,
  checkRequest,
  decodeBlockMeta,
  decodeErrorPayload,
  decodeRejectPayload,
  decodeReply,
  encodeBlockMeta,
  encodeErrorPayload,
  encodeRejectPayload,
  encodeReply,
  encodeRequest,
  encodeResponseHeader,
  knownReplyCrc,
  errorToPayload,
  validateRequest,
  type PeerRequest,
  type ReplyValues,
  type RequestFrame,
} from '../../src/peer/codec.js';
import {
  BLOCK_META_BYTES,
  ERROR_DETAILS_BYTES_MAX,
  ERROR_PAYLOAD_BYTES_MAX,
  FLAG_FUA,
  FLAG_PUNCH,
  OPCODE_NAMES,
  Opcode,
  PAYLOAD_BYTES_MAX,
  REQ,
  REQUEST_HEADER_BYTES,
  RESPONSE_HEADER_BYTES,
  STATUS_ERROR,
  STATUS_OK,
  replyPayloadBytesMaxFor,
  requestPayloadBytesMaxFor,
} from '../../src/peer/protocol.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import { crc32c, crc32cPages } from '../../src/util/crc32c.js';

const BS = 4096;
const REF = blockRef(7, 3, 2 ** 40 + 5);
const MAX_REF = blockRef(0xffffffff, 0xffffffff, 2 ** 48 - 1);
const CTX = { ringVersion: 12 };
const BIG_CTX = { ringVersion: Number.MAX_SAFE_INTEGER };
const V1 = makeVersion(3, 1);
const V2 = makeVersion(3, 2);
const VMAX = makeVersion(TOKEN_MAX, 2 ** 32 - 1);

function requestBytes(req: PeerRequest, requestId = 1): Buffer {
  const { header, payload } = encodeRequest(req, requestId);
  return Buffer.concat([header, payload]);
}

function decodeOne(bytes: Buffer, max = PAYLOAD_BYTES_MAX): RequestFrame {
  const d = new RequestDecoder(max);
  d.push(bytes);
  const f = d.next();
  expect(f).not.toBeNull();
  expect(d.bufferedBytes).toBe(0);
  return f!;
}

/** Recomputes the header CRC after a test edits a header field. */
function reseal(frame: Buffer, headerBytes = REQUEST_HEADER_BYTES): Buffer {
  const out = Buffer.from(frame);
  out.writeUInt32BE(crc32c(out.subarray(0, headerBytes - 4)), headerBytes - 4);
  return out;
}

function edited(req: PeerRequest, edit: (b: Buffer) => void): Buffer {
  const bytes = Buffer.from(requestBytes(req));
  edit(bytes);
  return reseal(bytes);
}

function errCode(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return isTorusError(err) ? err.code : String(err);
  }
}

function valid(bytes: Buffer): PeerRequest {
  const v = validateRequest(decodeOne(bytes), BS);
  if (v instanceof TorusError) throw v;
  return asSent(v);
}

/**
 * A decoded request as it was sent: a WRITE of whole pages comes with the
 * page CRCs summed when its checksum was checked (checked here, then left
 * out for the comparison).
 */
function asSent(req: PeerRequest): PeerRequest {
  if (req.opcode !== Opcode.WRITE || req.pageCrcs === undefined) return req;
  const want = new Uint32Array(req.data.length / 4096);
  crc32cPages(req.data, 4096, want);
  expect(req.pageCrcs).toEqual(want);
  const { pageCrcs: _, ...rest } = req;
  return rest;
}

function invalid(bytes: Buffer): TorusError {
  const v = validateRequest(decodeOne(bytes), BS);
  expect(v, 'the request is refused').toBeInstanceOf(TorusError);
  return v as TorusError;
}

const block = (byte: number) => Buffer.alloc(BS, byte);

/** At least one request of every opcode, with edge values. */
const SAMPLES: PeerRequest[] = [
  { opcode: Opcode.READ, ctx: CTX, ref: REF, offset: 100, length: 200 },
  { opcode: Opcode.READ, ctx: BIG_CTX, ref: MAX_REF, offset: BS, length: 0 },
  { opcode: Opcode.WRITE, ctx: CTX, ref: REF, offset: 5, data: Buffer.from('some data'), stamp: { token: 3, version: V2, prev: V1 }, fua: true },
  { opcode: Opcode.WRITE, ctx: CTX, ref: REF, offset: 0, data: block(1), stamp: { token: TOKEN_MAX, version: VMAX, prev: VERSION_ABSENT }, fua: false },
  { opcode: Opcode.WRITE, ctx: { ringVersion: 0 }, ref: REF, offset: 0, data: Buffer.from('legacy'), stamp: { token: 0, version: 0, prev: VERSION_ABSENT }, fua: false },
  { opcode: Opcode.ZERO, ctx: CTX, ref: REF, offset: 0, length: BS, stamp: { token: 3, version: V2, prev: V1 }, punch: true, fua: true },
  { opcode: Opcode.ZERO, ctx: CTX, ref: REF, offset: 512, length: 1024, stamp: { token: 3, version: V1, prev: VERSION_ABSENT }, punch: false, fua: false },
  { opcode: Opcode.INSTALL, ctx: CTX, ref: REF, copy: { state: 'data', version: V2, data: block(9) }, token: 4, fua: true },
  { opcode: Opcode.INSTALL, ctx: CTX, ref: REF, copy: { state: 'zero', version: 0, data: null }, token: 0, fua: false },
  { opcode: Opcode.CONFIRM, ctx: CTX, ref: REF, version: V2, digest: 0xdeadbeef, token: 3 },
  { opcode: Opcode.META, ctx: CTX, refs: [REF, blockRef(1, 1, 0), MAX_REF] },
  { opcode: Opcode.META, ctx: CTX, refs: [] },
  { opcode: Opcode.LIST, ctx: CTX, volumeId: 7, after: null, limit: 1 },
  { opcode: Opcode.LIST, ctx: CTX, volumeId: 7, after: REF, limit: LIST_BLOCKS_MAX },
  { opcode: Opcode.VERIFY, ctx: CTX, ref: REF },
  { opcode: Opcode.DROP, ctx: CTX, ref: REF, version: V1, token: 3 },
  { opcode: Opcode.DROP, ctx: CTX, ref: REF, version: VERSION_ABSENT, token: 3 },
  { opcode: Opcode.FENCE, ctx: CTX, volumeId: 0xffffffff, token: TOKEN_MAX },
  { opcode: Opcode.FLUSH, ctx: CTX },
  { opcode: Opcode.DELETE_VOLUME, ctx: CTX, volumeId: 0xfffffff0 },
  { opcode: Opcode.USAGE, ctx: CTX },
  { opcode: Opcode.HELLO, ctx: BIG_CTX },
  { opcode: Opcode.EXPECT, ctx: CTX, refs: [REF, blockRef(1, 1, 0), MAX_REF] },
  { opcode: Opcode.EXPECT, ctx: CTX, refs: [] },
];

const META_DATA: BlockMeta = { state: 'data', version: V2, suspect: false, digest: 0xfedcba98 };
const META_ZERO: BlockMeta = { state: 'zero', version: V1, suspect: true, digest: 0 };
const META_ABSENT: BlockMeta = { state: 'absent', version: VERSION_ABSENT, suspect: false, digest: 0 };

/** A possible answer to each sample request. */
function sampleReply(req: PeerRequest): ReplyValues[keyof ReplyValues] {
  switch (req.opcode) {
    case Opcode.READ:
      return { meta: req.length === 0 ? META_ABSENT : META_DATA, data: Buffer.alloc(req.length, 0x3c) };
    case Opcode.INSTALL:
      return req.copy.state === 'data' ? 'installed' : 'newer';
    case Opcode.CONFIRM:
      return true;
    case Opcode.DROP:
      return req.version === VERSION_ABSENT;
    case Opcode.META:
      return req.refs.map((_, i) => [META_DATA, META_ZERO, META_ABSENT][i % 3]!);
    case Opcode.LIST:
      return req.after === null
        ? { blocks: [{ ref: blockRef(7, 1, 1), ...META_ZERO }], more: true }
        : { blocks: [{ ref: blockRef(7, 3, 2 ** 40 + 6), ...META_DATA }, { ref: blockRef(7, 4, 0), ...META_ABSENT }], more: false };
    case Opcode.VERIFY:
      return META_DATA;
    case Opcode.USAGE:
      return { capacity: 2 ** 45, used: 2 ** 33 + 1, blocks: 12345 };
    case Opcode.HELLO:
      return { uuid: 'peer-ü', incarnation: 'i'.repeat(255), ringVersion: Number.MAX_SAFE_INTEGER };
    default:
      return undefined;
  }
}

describe('requests: every opcode round-trips', () => {
  it('has a sample for every opcode', () => {
    const covered = new Set(SAMPLES.map((r) => r.opcode));
    expect([...covered].sort((a, b) => a - b)).toEqual(Object.values(Opcode).sort((a, b) => a - b));
    expect(Object.keys(OPCODE_NAMES).length).toBe(Object.values(Opcode).length);
  });

  for (const req of SAMPLES) {
    it(`${OPCODE_NAMES[req.opcode]} ${JSON.stringify(req, (_k, v: unknown) => (Buffer.isBuffer(v) ? `<${v.length} bytes>` : v)).slice(0, 90)}`, () => {
      expect(checkRequest(req, BS)).toBeNull();
      const f = decodeOne(requestBytes(req, 0xfffffffe));
      expect(f.requestId).toBe(0xfffffffe);
      expect(valid(requestBytes(req))).toEqual(req);
    });
  }

  it('puts VERSION_ABSENT on the wire as all ones, and versions above 2^32 as u64', () => {
    const w = SAMPLES[3] as Extract<PeerRequest, { opcode: typeof Opcode.WRITE }>;
    const { header } = encodeRequest(w, 1);
    expect(header.subarray(REQ.PREV, REQ.PREV + 8)).toEqual(Buffer.alloc(8, 0xff));
    expect(header.readUInt32BE(REQ.VERSION)).toBe(Math.floor(VMAX / 2 ** 32));
    expect(header.readUInt32BE(REQ.VERSION + 4)).toBe(VMAX >>> 0);
    expect(header.readUInt32BE(REQ.TOKEN + 4)).toBe(TOKEN_MAX);
  });

  it('decodes frames split at every byte and many frames in one chunk', () => {
    const frames = [SAMPLES[2]!, SAMPLES[19]!, SAMPLES[3]!, SAMPLES[10]!].map((r, i) => requestBytes(r, i + 1));
    const all = Buffer.concat(frames);
    for (const step of [1, 2, 7, 79, 80, 81, 500, all.length]) {
      const d = new RequestDecoder();
      const got: RequestFrame[] = [];
      for (let at = 0; at < all.length; at += step) {
        d.push(all.subarray(at, at + step));
        for (let f = d.next(); f !== null; f = d.next()) got.push(f);
      }
      expect(got.map((f) => f.requestId)).toEqual([1, 2, 3, 4]);
      expect(asSent(validateRequest(got[2]!, BS) as PeerRequest)).toEqual(SAMPLES[3]);
      expect(d.bufferedBytes).toBe(0);
    }
  });

  it('hands out a payload inside one chunk without copying it', () => {
    const bytes = requestBytes(SAMPLES[3]!);
    const f = decodeOne(bytes);
    expect(f.payload.buffer).toBe(bytes.buffer);
  });

  it('returns null until a frame is complete', () => {
    const bytes = requestBytes(SAMPLES[2]!);
    const d = new RequestDecoder();
    d.push(bytes.subarray(0, bytes.length - 1));
    expect(d.next()).toBeNull();
    expect(d.wantedBytes).toBe(1);
    d.push(bytes.subarray(bytes.length - 1));
    expect(d.next()!.payload.toString()).toBe('some data');
  });

  it('takes a precomputed payload CRC', () => {
    const w = SAMPLES[3]!;
    const { header } = encodeRequest(w, 1, crc32c(block(1)));
    expect(header).toEqual(encodeRequest(w, 1).header);
  });
});

describe('replies: every opcode round-trips', () => {
  for (const req of SAMPLES) {
    it(`${OPCODE_NAMES[req.opcode]} reply`, () => {
      const value = sampleReply(req);
      const parts = encodeReply(req, value as never);
      const bytes = Buffer.concat([encodeResponseHeader(req.opcode, 42, STATUS_OK, parts), ...parts]);
      const d = new ResponseDecoder(replyPayloadBytesMaxFor(BS));
      d.push(bytes);
      const frame = d.next()!;
      expect(frame).toMatchObject({ opcode: req.opcode, status: STATUS_OK, requestId: 42 });
      expect(decodeReply(req, frame.payload)).toEqual(value);
    });
  }

  it('sums a reply in parts as one payload', () => {
    const a = Buffer.from('metadata');
    const b = Buffer.alloc(5000, 7);
    expect(encodeResponseHeader(Opcode.READ, 1, STATUS_OK, [a, Buffer.alloc(0), b])).toEqual(
      encodeResponseHeader(Opcode.READ, 1, STATUS_OK, Buffer.concat([a, b])),
    );
  });

  it('a READ reply whose data CRC the store gave is summed over its metadata only, to the same header', () => {
    const data = Buffer.alloc(3 * 4096);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    const req = { ...(SAMPLES[0] as Extract<PeerRequest, { opcode: typeof Opcode.READ }>), offset: 0, length: data.length };
    const value = { meta: META_DATA, data, dataCrc: crc32c(data) };
    const parts = encodeReply(req, value);
    const known = knownReplyCrc(req, value, parts);
    expect(known).toBe(crc32c(Buffer.concat(parts)));
    expect(encodeResponseHeader(Opcode.READ, 9, STATUS_OK, parts, known)).toEqual(encodeResponseHeader(Opcode.READ, 9, STATUS_OK, parts));
    // Unknown without the store's CRC, or for bytes that are not whole pages.
    expect(knownReplyCrc(req, { meta: META_DATA, data }, parts)).toBeUndefined();
    const odd = { ...req, length: 100 };
    const oddValue = { meta: META_DATA, data: data.subarray(0, 100), dataCrc: crc32c(data.subarray(0, 100)) };
    expect(knownReplyCrc(odd, oddValue, encodeReply(odd, oddValue))).toBeUndefined();
    expect(knownReplyCrc(SAMPLES[7]!, sampleReply(SAMPLES[7]!) as never, [])).toBeUndefined();
  });

  it('a READ reply hands out the bytes as a view of the payload', () => {
    const req = SAMPLES[0] as Extract<PeerRequest, { opcode: typeof Opcode.READ }>;
    const payload = Buffer.concat(encodeReply(req, { meta: META_DATA, data: Buffer.alloc(200, 1) }));
    expect(decodeReply(req, payload).data.buffer).toBe(payload.buffer);
  });

  it('refuses replies that do not fit their request', () => {
    const [read, , write, , , , , install, , confirm, meta, , list, list2, , , , , , , usage, hello] = SAMPLES as PeerRequest[];
    const code = (req: PeerRequest, payload: Buffer) => errCode(() => decodeReply(req, payload));
    const metaBytes = (m: BlockMeta) => {
      const b = Buffer.alloc(BLOCK_META_BYTES);
      encodeBlockMeta(m, b, 0);
      return b;
    };
    // Length.
    expect(code(read!, Buffer.concat([metaBytes(META_DATA), Buffer.alloc(199)]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(write!, Buffer.alloc(1))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(meta!, Buffer.concat([metaBytes(META_DATA), metaBytes(META_DATA)]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(usage!, Buffer.alloc(23))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(usage!, Buffer.alloc(24, 0xff))).toBe('TORUS_ERR_PEER_PROTOCOL');
    // Values.
    expect(code(install!, Buffer.from([0]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(install!, Buffer.from([4]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(confirm!, Buffer.from([2]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const badState = metaBytes(META_DATA);
    badState[0] = 3;
    expect(code(meta!, Buffer.concat([badState, metaBytes(META_DATA), metaBytes(META_DATA)]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const badSuspect = metaBytes(META_DATA);
    badSuspect[1] = 2;
    expect(decodeBlockMeta(badSuspect, 0)).toBeNull();
    const absentWithVersion = metaBytes(META_DATA);
    absentWithVersion[0] = 0;
    expect(decodeBlockMeta(absentWithVersion, 0)).toBeNull();
    const dataWithoutVersion = metaBytes(META_ABSENT);
    dataWithoutVersion[0] = 1;
    expect(decodeBlockMeta(dataWithoutVersion, 0)).toBeNull();
    // LIST: count over the limit, other volume, out of order, not after `after`.
    const listReply = (more: number, entries: [ReturnType<typeof blockRef>, BlockMeta][], count = entries.length) => {
      const head = Buffer.alloc(5);
      head[0] = more;
      head.writeUInt32BE(count, 1);
      return Buffer.concat([
        head,
        ...entries.map(([r, m]) => {
          const b = Buffer.alloc(30);
          b.writeUInt32BE(r.volumeId, 0);
          b.writeUInt32BE(r.generation, 4);
          b.writeUIntBE(r.index, 10, 6);
          encodeBlockMeta(m, b, 16);
          return b;
        }),
      ]);
    };
    expect(decodeReply(list!, listReply(0, [[blockRef(7, 1, 1), META_DATA]]))).toMatchObject({ more: false });
    expect(code(list!, listReply(0, [[blockRef(7, 1, 1), META_DATA], [blockRef(7, 1, 2), META_DATA]]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(list!, listReply(2, [[blockRef(7, 1, 1), META_DATA]]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(list!, listReply(0, [[blockRef(8, 1, 1), META_DATA]]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(list!, listReply(0, [[blockRef(7, 1, 1), META_DATA]], 0))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(list2!, listReply(0, [[blockRef(7, 3, 2 ** 40 + 7), META_DATA], [blockRef(7, 3, 2 ** 40 + 6), META_DATA]]))).toBe(
      'TORUS_ERR_PEER_PROTOCOL',
    );
    expect(code(list2!, listReply(0, [[REF, META_DATA]]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    // HELLO: strings that overrun or leave bytes over.
    const helloBytes = Buffer.concat(encodeReply(hello as Extract<PeerRequest, { opcode: typeof Opcode.HELLO }>, { uuid: 'u', incarnation: 'i', ringVersion: 1 }));
    expect(code(hello!, Buffer.concat([helloBytes, Buffer.from([0])]))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(hello!, helloBytes.subarray(0, helloBytes.length - 1))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('asserts on answers the protocol cannot carry (a replica bug)', () => {
    const meta = SAMPLES[10]!;
    expect(errCode(() => encodeReply(meta, [META_DATA] as never))).toBe('TORUS_ERR_ASSERTION');
    expect(errCode(() => encodeReply(SAMPLES[14]!, { ...META_DATA, version: VERSION_ABSENT } as never))).toBe('TORUS_ERR_ASSERTION');
    expect(errCode(() => encodeReply(SAMPLES[0]!, { meta: META_DATA, data: Buffer.alloc(3) } as never))).toBe('TORUS_ERR_ASSERTION');
    expect(errCode(() => encodeReply(SAMPLES[7]!, 'maybe' as never))).toBe('TORUS_ERR_ASSERTION');
    expect(errCode(() => encodeReply(SAMPLES[12]!, { blocks: [{ ref: REF, ...META_DATA }, { ref: REF, ...META_DATA }], more: false } as never))).toBe(
      'TORUS_ERR_ASSERTION',
    );
  });
});

describe('invalid requests get an error reply (framing intact)', () => {
  const read = SAMPLES[0]!;
  const write = SAMPLES[2]!;
  const install = SAMPLES[7]!;
  const flush = SAMPLES[18]!;
  const meta = SAMPLES[10]!;

  it('unknown opcode, flags not allowed for the opcode, reserved bytes', () => {
    expect(invalid(edited(flush, (b) => (b[REQ.OPCODE] = 99))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(flush, (b) => (b[REQ.OPCODE] = 0))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(read, (b) => (b[REQ.FLAGS] = FLAG_FUA))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(write, (b) => (b[REQ.FLAGS] = FLAG_PUNCH))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(install, (b) => (b[REQ.FLAGS] = FLAG_PUNCH))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(SAMPLES[5]!, (b) => (b[REQ.FLAGS] = 0x80))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(flush, (b) => (b[REQ.RESERVED] = 1))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('a copy state only on INSTALL, and a known one', () => {
    expect(invalid(edited(write, (b) => (b[REQ.COPY_STATE] = 1))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(install, (b) => (b[REQ.COPY_STATE] = 0))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(install, (b) => (b[REQ.COPY_STATE] = 3))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    // A tombstone with bytes, a data copy without the whole block.
    expect(invalid(edited(install, (b) => (b[REQ.COPY_STATE] = 2))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    const short = { ...install, copy: { state: 'data' as const, version: V1, data: Buffer.alloc(BS - 1) } };
    expect(invalid(requestBytes(short as PeerRequest)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('block refs that are missing, invalid, or present where none belongs', () => {
    expect(invalid(edited(read, (b) => b.fill(0, REQ.REF, REQ.REF + 16))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(read, (b) => b.writeUInt32BE(0, REQ.REF))).code).toBe('TORUS_ERR_PEER_PROTOCOL'); // volume 0
    expect(invalid(edited(read, (b) => b.writeUInt32BE(0, REQ.REF + 4))).code).toBe('TORUS_ERR_PEER_PROTOCOL'); // generation 0
    expect(invalid(edited(read, (b) => (b[REQ.REF + 8] = 1))).code).toBe('TORUS_ERR_PEER_PROTOCOL'); // reserved ref bytes
    expect(invalid(edited(flush, (b) => b.writeUInt32BE(1, REQ.REF + 12))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    // LIST: an after ref in another volume.
    expect(invalid(edited(SAMPLES[13]!, (b) => b.writeUInt32BE(8, REQ.REF))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('fields the opcode does not use must be zero', () => {
    expect(invalid(edited(read, (b) => b.writeUInt32BE(1, REQ.TOKEN + 4))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(read, (b) => b.writeUInt32BE(1, REQ.VERSION + 4))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(install, (b) => b.writeUInt32BE(1, REQ.PREV + 4))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(install, (b) => b.writeUInt32BE(1, REQ.OFFSET))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(flush, (b) => b.writeUInt32BE(1, REQ.LENGTH))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(meta, (b) => b.writeUInt32BE(1, REQ.OFFSET))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(SAMPLES[17]!, (b) => b.fill(0xff, REQ.VERSION, REQ.VERSION + 8))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('u64 fields above 2^53, tokens above TOKEN_MAX, versions that do not follow prev', () => {
    expect(invalid(edited(read, (b) => b.writeUInt32BE(2 ** 21, REQ.RING_VERSION))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(write, (b) => b.writeUInt32BE(1, REQ.TOKEN))).code).toBe('TORUS_ERR_PEER_PROTOCOL'); // token 2^32+3
    expect(invalid(edited(write, (b) => b.writeUInt32BE(0xfffffffe, REQ.VERSION))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(write, (b) => b.fill(0xff, REQ.VERSION, REQ.VERSION + 8))).code).toBe('TORUS_ERR_PEER_PROTOCOL'); // creates "absent"
    expect(invalid(requestBytes({ ...write, stamp: { token: 3, version: V1, prev: V1 } } as PeerRequest)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(requestBytes({ ...write, stamp: { token: 3, version: V1, prev: V2 } } as PeerRequest)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(install, (b) => b.fill(0xff, REQ.VERSION, REQ.VERSION + 8))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(SAMPLES[9]!, (b) => b.fill(0xff, REQ.VERSION, REQ.VERSION + 8))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('ranges outside the block are TORUS_ERR_IO_OUT_OF_RANGE', () => {
    expect(invalid(edited(read, (b) => b.writeUInt32BE(BS - 1, REQ.OFFSET))).code).toBe('TORUS_ERR_IO_OUT_OF_RANGE');
    expect(invalid(edited(SAMPLES[5]!, (b) => (b.writeUInt32BE(0xffffffff, REQ.OFFSET), b.writeUInt32BE(0xffffffff, REQ.LENGTH)))).code).toBe(
      'TORUS_ERR_IO_OUT_OF_RANGE',
    );
    expect(invalid(edited(write, (b) => b.writeUInt32BE(BS, REQ.OFFSET))).code).toBe('TORUS_ERR_IO_OUT_OF_RANGE');
  });

  it('payloads that do not fit the opcode, counts and limits', () => {
    expect(invalid(edited(write, (b) => b.writeUInt32BE(10, REQ.LENGTH))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(meta, (b) => b.writeUInt32BE(2, REQ.LENGTH))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalid(edited(meta, (b) => b.writeUInt32BE(META_REFS_MAX + 1, REQ.LENGTH))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    const zeroRef = edited({ ...meta, refs: [REF] } as PeerRequest, () => undefined);
    zeroRef.fill(0, REQUEST_HEADER_BYTES);
    zeroRef.writeUInt32BE(crc32c(zeroRef.subarray(REQUEST_HEADER_BYTES)), REQ.PAYLOAD_CRC);
    expect(invalid(reseal(zeroRef)).code).toBe('TORUS_ERR_PEER_PROTOCOL'); // a ref with volume 0
    expect(invalid(edited(SAMPLES[12]!, (b) => b.writeUInt32BE(0, REQ.LENGTH))).code).toBe('TORUS_ERR_PEER_PROTOCOL'); // LIST limit 0
    expect(invalid(edited(SAMPLES[12]!, (b) => b.writeUInt32BE(LIST_BLOCKS_MAX + 1, REQ.LENGTH))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('volume id 0 and payloads on opcodes that carry none', () => {
    const zeroVolume = (req: PeerRequest) => {
      const b = Buffer.from(requestBytes(req));
      b.fill(0, REQUEST_HEADER_BYTES);
      b.writeUInt32BE(crc32c(b.subarray(REQUEST_HEADER_BYTES)), REQ.PAYLOAD_CRC);
      return reseal(b);
    };
    for (const req of [SAMPLES[12]!, SAMPLES[17]!, SAMPLES[19]!]) expect(invalid(zeroVolume(req)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    const withPayload = (req: PeerRequest) => {
      const { header } = encodeRequest(req, 1);
      const extra = Buffer.from('x');
      const h = Buffer.from(header);
      h.writeUInt32BE(1, REQ.PAYLOAD_LENGTH);
      h.writeUInt32BE(crc32c(extra), REQ.PAYLOAD_CRC);
      return Buffer.concat([reseal(h), extra]);
    };
    for (const req of [read, flush, SAMPLES[14]!, SAMPLES[15]!, SAMPLES[20]!, SAMPLES[21]!, SAMPLES[5]!]) {
      expect(invalid(withPayload(req)).code, OPCODE_NAMES[req.opcode]).toBe('TORUS_ERR_PEER_PROTOCOL');
    }
  });

  it('the client side checks the same rules before sending', () => {
    expect(checkRequest({ ...read, length: BS } as PeerRequest, BS)?.code).toBe('TORUS_ERR_IO_OUT_OF_RANGE');
    expect(checkRequest({ ...write, stamp: { token: TOKEN_MAX + 1, version: V2, prev: V1 } } as PeerRequest, BS)?.code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(checkRequest({ ...meta, refs: Array.from({ length: META_REFS_MAX + 1 }, () => REF) } as PeerRequest, BS)?.code).toBe(
      'TORUS_ERR_PEER_PROTOCOL',
    );
    expect(checkRequest({ opcode: Opcode.HELLO, ctx: { ringVersion: -1 } }, BS)?.code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(checkRequest({ opcode: Opcode.FENCE, ctx: CTX, volumeId: 0, token: 1 }, BS)?.code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('EXPECT: refs within META_REFS_MAX, all valid, and no other field set', () => {
    const expect_ = { opcode: Opcode.EXPECT, ctx: CTX, refs: [REF] } as const;
    expect(checkRequest({ ...expect_, refs: Array.from({ length: META_REFS_MAX + 1 }, () => REF) }, BS)?.code).toBe('TORUS_ERR_PEER_PROTOCOL');
    const tooMany = edited(expect_, (b) => b.writeUInt32BE(META_REFS_MAX + 1, REQ.LENGTH));
    expect(invalid(tooMany).message).toContain('EXPECT');
    const badRef = Buffer.from(requestBytes(expect_));
    badRef.fill(0, REQUEST_HEADER_BYTES, REQUEST_HEADER_BYTES + 16);
    badRef.writeUInt32BE(crc32c(badRef.subarray(REQUEST_HEADER_BYTES)), REQ.PAYLOAD_CRC);
    expect(invalid(reseal(badRef)).message).toContain('not valid');
    expect(invalid(edited(expect_, (b) => b.writeUInt32BE(1, REQ.OFFSET))).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('accepts the largest META request within the connection limit', () => {
    const refs = Array.from({ length: META_REFS_MAX }, (_, i) => blockRef(1, 1, i));
    const f = decodeOne(requestBytes({ opcode: Opcode.META, ctx: CTX, refs }), requestPayloadBytesMaxFor(BS));
    expect(validateRequest(f, BS)).toMatchObject({ opcode: Opcode.META });
  });
});

describe('request framing errors close the connection', () => {
  const good = requestBytes(SAMPLES[2]!, 77);

  it('bad magic is a protocol error, and so is a protocol 1 frame', () => {
    const bad = Buffer.from(good);
    bad[0] = 0x47; // 'G', say an HTTP client
    const d = new RequestDecoder();
    d.push(reseal(bad));
    expect(errCode(() => d.next())).toBe('TORUS_ERR_PEER_PROTOCOL');
    const v1 = Buffer.from(good);
    v1.writeUInt32BE(0x54505251, 0); // 'TPRQ'
    const d1 = new RequestDecoder();
    d1.push(reseal(v1));
    expect(errCode(() => d1.next())).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('a flipped bit anywhere in the header fails its checksum', () => {
    for (let i = 4; i < REQUEST_HEADER_BYTES; i++) {
      const bad = Buffer.from(good);
      bad[i]! ^= 0x10;
      const d = new RequestDecoder();
      d.push(bad);
      expect(errCode(() => d.next()), `byte ${i}`).toBe('TORUS_ERR_PEER_CHECKSUM');
    }
  });

  it('a flipped payload byte fails the payload checksum and names the request', () => {
    const bad = Buffer.from(good);
    bad[REQUEST_HEADER_BYTES + 2]! ^= 1;
    const d = new RequestDecoder();
    d.push(bad);
    try {
      d.next();
      expect.unreachable();
    } catch (err) {
      expect(isTorusError(err, 'TORUS_ERR_PEER_CHECKSUM')).toBe(true);
      expect((err as TorusError).details).toMatchObject({ requestId: 77, opcode: Opcode.WRITE });
    }
  });

  it('a payload over the limit is refused from the header alone', () => {
    const big = requestBytes(SAMPLES[3]!);
    const d = new RequestDecoder(BS - 1);
    d.push(big.subarray(0, REQUEST_HEADER_BYTES));
    expect(errCode(() => d.next())).toBe('TORUS_ERR_PEER_PROTOCOL');
    const huge = Buffer.from(big.subarray(0, REQUEST_HEADER_BYTES));
    huge.writeUInt32BE(PAYLOAD_BYTES_MAX + 1, REQ.PAYLOAD_LENGTH);
    const d2 = new RequestDecoder();
    d2.push(reseal(huge));
    expect(errCode(() => d2.next())).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('stays broken after an error', () => {
    const bad = Buffer.from(good);
    bad[10]! ^= 1;
    const d = new RequestDecoder();
    d.push(bad);
    expect(errCode(() => d.next())).toBe('TORUS_ERR_PEER_CHECKSUM');
    d.push(good);
    expect(errCode(() => d.next())).toBe('TORUS_ERR_PEER_CHECKSUM');
  });

  it('limits a connection to what its block size needs', () => {
    expect(requestPayloadBytesMaxFor(4096)).toBe(META_REFS_MAX * 16);
    expect(requestPayloadBytesMaxFor(1 << 20)).toBe(1 << 20);
    expect(requestPayloadBytesMaxFor(2 ** 40)).toBe(PAYLOAD_BYTES_MAX);
    expect(replyPayloadBytesMaxFor(4096)).toBe(5 + LIST_BLOCKS_MAX * 30);
    expect(replyPayloadBytesMaxFor(1 << 20)).toBe(BLOCK_META_BYTES + (1 << 20));
    expect(replyPayloadBytesMaxFor(2 ** 40)).toBe(PAYLOAD_BYTES_MAX);
  });
});

describe('response frames', () => {
  function decodeResponses(bytes: Buffer) {
    const d = new ResponseDecoder();
    d.push(bytes);
    const out = [];
    for (let f = d.next(); f !== null; f = d.next()) out.push(f);
    return out;
  }

  it('round-trips ok and error responses', () => {
    const data = Buffer.from('block bytes');
    const ok = Buffer.concat([encodeResponseHeader(Opcode.READ, 42, STATUS_OK, data), data]);
    const errPayload = errorToPayload(new TorusError('TORUS_ERR_STORE_NO_SPACE', 'full'));
    const bad = Buffer.concat([encodeResponseHeader(Opcode.WRITE, 43, STATUS_ERROR, errPayload), errPayload]);
    const [a, b] = decodeResponses(Buffer.concat([ok, bad]));
    expect(a).toEqual({ opcode: Opcode.READ, status: STATUS_OK, requestId: 42, payload: data });
    expect(b!.status).toBe(STATUS_ERROR);
    const err = decodeErrorPayload(b!.payload);
    expect(err.code).toBe('TORUS_ERR_STORE_NO_SPACE');
    expect(err.message).toBe('full');
    expect(err.details).toMatchObject({ remote: true });
  });

  it('refuses unknown status, reserved bits, bad magic, bad CRCs', () => {
    const ok = encodeResponseHeader(Opcode.HELLO, 1, STATUS_OK, Buffer.alloc(0));
    const status = Buffer.from(ok);
    status[5] = 7;
    expect(errCode(() => decodeResponses(reseal(status, RESPONSE_HEADER_BYTES)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const reserved = Buffer.from(ok);
    reserved[7] = 1;
    expect(errCode(() => decodeResponses(reseal(reserved, RESPONSE_HEADER_BYTES)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const magic = Buffer.from(ok);
    magic[2] = 0x51; // a request magic where a response belongs
    expect(errCode(() => decodeResponses(reseal(magic, RESPONSE_HEADER_BYTES)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    for (let i = 4; i < RESPONSE_HEADER_BYTES; i++) {
      const flipped = Buffer.from(ok);
      flipped[i]! ^= 0x80;
      expect(errCode(() => decodeResponses(flipped)), `byte ${i}`).toBe('TORUS_ERR_PEER_CHECKSUM');
    }
    const data = Buffer.alloc(100, 3);
    const withPayload = Buffer.concat([encodeResponseHeader(Opcode.READ, 9, STATUS_OK, data), data]);
    withPayload[RESPONSE_HEADER_BYTES + 99]! ^= 1;
    expect(errCode(() => decodeResponses(withPayload))).toBe('TORUS_ERR_PEER_CHECKSUM');
    const big = Buffer.from(encodeResponseHeader(Opcode.READ, 9, STATUS_OK, data));
    const d = new ResponseDecoder(99);
    d.push(big);
    expect(errCode(() => d.next())).toBe('TORUS_ERR_PEER_PROTOCOL');
  });
});

describe('errors on the wire', () => {
  it('keep their code, message and details: RING_OUTDATED carries the ring version', () => {
    const err = decodeErrorPayload(
      errorToPayload(new TorusError('TORUS_ERR_RING_OUTDATED', 'ring 5 is older than 8', { details: { ringVersion: 8 } })),
      { peer: 'p:1' },
    );
    expect(err).toBeInstanceOf(TorusError);
    expect(err.code).toBe('TORUS_ERR_RING_OUTDATED');
    expect(err.message).toBe('ring 5 is older than 8');
    expect(err.details).toEqual({ ringVersion: 8, peer: 'p:1', remote: true });
  });

  it('only plain values cross, and at most ERROR_DETAILS_BYTES_MAX of them', () => {
    const err = new TorusError('TORUS_ERR_STORE_IO', 'x', {
      details: { ringVersion: 3, ok: true, none: null, s: 'str', buf: Buffer.from('secret'), obj: { a: 1 }, nan: NaN, fn: () => 1 },
    });
    expect(decodeErrorPayload(errorToPayload(err)).details).toEqual({ ringVersion: 3, ok: true, none: null, s: 'str', remote: true });
    const big = new TorusError('TORUS_ERR_STORE_IO', 'x', { details: { ringVersion: 9, long: 'y'.repeat(ERROR_DETAILS_BYTES_MAX) } });
    expect(decodeErrorPayload(errorToPayload(big)).details).toEqual({ ringVersion: 9, remote: true });
  });

  it('unknown codes and junk become protocol errors', () => {
    expect(decodeErrorPayload(errorToPayload(new TorusError('TORUS_ERR_VOLUME_FENCED', 'older'))).code).toBe('TORUS_ERR_VOLUME_FENCED');
    expect(decodeErrorPayload(errorToPayload(new Error('EIO boom'))).code).toBe('TORUS_ERR_STORE_IO');
    const unknown = decodeErrorPayload(encodeErrorPayload('TORUS_ERR_FROM_THE_FUTURE', 'x'));
    expect(unknown.code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(unknown.details).toMatchObject({ remoteCode: 'TORUS_ERR_FROM_THE_FUTURE' });
    expect(decodeErrorPayload(Buffer.alloc(3)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(decodeErrorPayload(Buffer.from([0, 200, 65, 0, 0])).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(decodeErrorPayload(Buffer.from([0, 0, 0, 0])).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(decodeErrorPayload(Buffer.alloc(ERROR_PAYLOAD_BYTES_MAX + 1)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    const withDetails = (json: string) => {
      const code = 'TORUS_ERR_STORE_IO';
      const d = Buffer.from(json);
      const b = Buffer.alloc(4 + code.length + d.length);
      b.writeUInt16BE(code.length, 0);
      b.write(code, 2);
      b.writeUInt16BE(d.length, 2 + code.length);
      d.copy(b, 4 + code.length);
      return b;
    };
    expect(decodeErrorPayload(withDetails('{"ringVersion":1}')).code).toBe('TORUS_ERR_STORE_IO');
    for (const junk of ['{', '[1]', '3', 'null', '"s"']) expect(decodeErrorPayload(withDetails(junk)).code, junk).toBe('TORUS_ERR_PEER_PROTOCOL');
    const overlong = withDetails('{}');
    overlong.writeUInt16BE(ERROR_DETAILS_BYTES_MAX + 1, 2 + 'TORUS_ERR_STORE_IO'.length);
    expect(decodeErrorPayload(overlong).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    // Long messages are cut to the limit.
    const long = encodeErrorPayload('TORUS_ERR_STORE_IO', 'é'.repeat(10_000), { ringVersion: 1 });
    expect(long.length).toBeLessThanOrEqual(ERROR_PAYLOAD_BYTES_MAX);
    expect(decodeErrorPayload(long).code).toBe('TORUS_ERR_STORE_IO');
  });

  it('handshake refusals keep the protocol 1 layout: u16 code length, code, message', () => {
    const p = encodeRejectPayload('TORUS_ERR_PEER_AUTH', 'no');
    expect(p).toEqual(Buffer.concat([Buffer.from([0, 19]), Buffer.from('TORUS_ERR_PEER_AUTH'), Buffer.from('no')]));
    expect(decodeRejectPayload(p)).toMatchObject({ code: 'TORUS_ERR_PEER_AUTH', message: 'no' });
    expect(decodeRejectPayload(Buffer.from([0, 9])).code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });
});

describe('ByteQueue', () => {
  it('peeks, takes and skips across chunks', () => {
    const q = new ByteQueue();
    q.push(Buffer.from('abc'));
    q.push(Buffer.alloc(0));
    q.push(Buffer.from('defg'));
    q.push(Buffer.from('h'));
    expect(q.length).toBe(8);
    expect(q.peek(2).toString()).toBe('ab');
    expect(q.take(5).toString()).toBe('abcde');
    q.skip(1);
    expect(q.take(2).toString()).toBe('gh');
    expect(q.length).toBe(0);
    expect(errCode(() => q.take(1))).toBe('TORUS_ERR_ASSERTION');
  });
});

describe('digests', () => {
  it('a CONFIRM digest may be an int32 (a JS bit operation): the same bits cross, as a u32', () => {
    const req: PeerRequest = { opcode: Opcode.CONFIRM, ctx: CTX, ref: REF, version: V2, digest: 0x80000001 ^ 1, token: 3 };
    expect(req.digest).toBeLessThan(0);
    expect(checkRequest(req, BS)).toBeNull();
    expect(valid(requestBytes(req))).toEqual({ ...req, digest: 0x80000000 });
    expect(checkRequest({ ...req, digest: 2 ** 32 } as PeerRequest, BS)?.code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(checkRequest({ ...req, digest: 1.5 } as PeerRequest, BS)?.code).toBe('TORUS_ERR_PEER_PROTOCOL');
  });
});

describe('peer codec: a WRITE of whole pages', () => {
  const write = (data: Buffer): PeerRequest => ({ opcode: Opcode.WRITE, ctx: CTX, ref: REF, offset: 0, data, stamp: { token: 3, version: V2, prev: V1 }, fua: false });

  it('is summed per page when its checksum is checked, and the page CRCs reach the decoded request', () => {
    const data = Buffer.alloc(3 * 4096);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    const f = decodeOne(requestBytes(write(data)));
    const req = validateRequest(f, 4 * 4096);
    if (req instanceof TorusError || req.opcode !== Opcode.WRITE) throw new Error('expected a WRITE');
    const want = new Uint32Array(3);
    crc32cPages(data, 4096, want);
    expect(req.pageCrcs).toEqual(want);
    // Other lengths and opcodes: no page CRCs.
    const odd = validateRequest(decodeOne(requestBytes(write(data.subarray(0, 5000)))), 4 * 4096);
    expect(odd instanceof TorusError ? null : odd.opcode === Opcode.WRITE && odd.pageCrcs).toBeUndefined();
  });

  it('still fails its checksum when one byte of it changed on the way', () => {
    const bytes = requestBytes(write(Buffer.alloc(2 * 4096, 9)));
    bytes[REQUEST_HEADER_BYTES + 4096 + 17] = bytes[REQUEST_HEADER_BYTES + 4096 + 17]! ^ 0x40;
    const d = new RequestDecoder();
    d.push(bytes);
    let err: unknown = null;
    try {
      d.next();
    } catch (e) {
      err = e;
    }
    expect(isTorusError(err, 'TORUS_ERR_PEER_CHECKSUM')).toBe(true);
  });
});
