import { describe, expect, it } from 'vitest';
import { TorusError, isTorusError } from '../../src/errors/torus-error.js';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import {
  RequestDecoder,
  ResponseDecoder,
  decodeBitmap,
  decodeErrorPayload,
  decodeRefList,
  decodeUsage,
  encodeBitmap,
  encodeErrorPayload,
  encodeRefList,
  encodeRequestHeader,
  encodeResponseHeader,
  encodeUsage,
  encodeVolumeId,
  errorToPayload,
  validateRequest,
  type RequestFrame,
  type RequestHead,
} from '../../src/peer/codec.js';
import {
  ALLOCATED_REFS_MAX,
  ERROR_PAYLOAD_BYTES_MAX,
  FLAG_FENCE,
  FLAG_FUA,
  FLAG_PUNCH,
  Opcode,
  PAYLOAD_BYTES_MAX,
  REQUEST_HEADER_BYTES,
  RESPONSE_HEADER_BYTES,
  STATUS_ERROR,
  STATUS_OK,
  payloadBytesMaxFor,
} from '../../src/peer/protocol.js';
import { crc32c } from '../../src/util/crc32c.js';

const BS = 4096;
const REF = blockRef(7, 3, 2 ** 40 + 5);

function head(h: Partial<RequestHead> & { opcode: Opcode }): RequestHead {
  return { flags: 0, requestId: 1, ref: null, offset: 0, length: 0, fence: undefined, ...h };
}

function requestBytes(h: RequestHead, payload: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeRequestHeader(h, payload), payload]);
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

function errCode(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return isTorusError(err) ? err.code : String(err);
  }
}

function valid(f: RequestFrame): Exclude<ReturnType<typeof validateRequest>, TorusError> {
  const v = validateRequest(f, BS);
  if (v instanceof TorusError) throw v;
  return v;
}

function invalidCode(bytes: Buffer): string {
  const v = validateRequest(decodeOne(bytes), BS);
  expect(v).toBeInstanceOf(TorusError);
  return (v as TorusError).code;
}

describe('request frames', () => {
  it('round-trips READ', () => {
    const v = valid(decodeOne(requestBytes(head({ opcode: Opcode.READ, requestId: 0xfffffffe, ref: REF, offset: 100, length: 200 }))));
    expect(v).toEqual({ opcode: Opcode.READ, ref: REF, offset: 100, length: 200 });
  });

  it('round-trips WRITE with FUA and a fence above 2^32', () => {
    const data = Buffer.from('some data');
    const f = decodeOne(requestBytes(head({ opcode: Opcode.WRITE, flags: FLAG_FUA, ref: REF, offset: 5, length: data.length, fence: 2 ** 40 + 3 }), data));
    expect(f.requestId).toBe(1);
    expect(valid(f)).toEqual({ opcode: Opcode.WRITE, ref: REF, offset: 5, data, fua: true, fence: 2 ** 40 + 3 });
  });

  it('round-trips WRITE without a fence (fence 0 is still a fence)', () => {
    const d = Buffer.from('x');
    expect(valid(decodeOne(requestBytes(head({ opcode: Opcode.WRITE, ref: REF, length: 1 }), d)))).toMatchObject({ fua: false, fence: undefined });
    expect(valid(decodeOne(requestBytes(head({ opcode: Opcode.WRITE, ref: REF, length: 1, fence: 0 }), d)))).toMatchObject({ fence: 0 });
  });

  it('round-trips ZERO with PUNCH and FUA', () => {
    const f = decodeOne(requestBytes(head({ opcode: Opcode.ZERO, flags: FLAG_PUNCH | FLAG_FUA, ref: REF, offset: 0, length: BS, fence: 9 })));
    expect(valid(f)).toEqual({ opcode: Opcode.ZERO, ref: REF, offset: 0, length: BS, fua: true, punch: true, fence: 9 });
  });

  it('round-trips FLUSH, USAGE, PING', () => {
    for (const opcode of [Opcode.FLUSH, Opcode.USAGE, Opcode.PING] as const) {
      expect(valid(decodeOne(requestBytes(head({ opcode }))))).toEqual({ opcode });
    }
  });

  it('round-trips ALLOCATED and DELETE_VOLUME', () => {
    const refs: BlockRef[] = [REF, blockRef(1, 1, 0), blockRef(0xffffffff, 0xffffffff, 2 ** 48 - 1)];
    const f = decodeOne(requestBytes(head({ opcode: Opcode.ALLOCATED, length: refs.length }), encodeRefList(refs)));
    expect(valid(f)).toEqual({ opcode: Opcode.ALLOCATED, refs });
    const empty = decodeOne(requestBytes(head({ opcode: Opcode.ALLOCATED, length: 0 })));
    expect(valid(empty)).toEqual({ opcode: Opcode.ALLOCATED, refs: [] });
    const del = decodeOne(requestBytes(head({ opcode: Opcode.DELETE_VOLUME }), encodeVolumeId(0xfffffff0)));
    expect(valid(del)).toEqual({ opcode: Opcode.DELETE_VOLUME, volumeId: 0xfffffff0 });
  });

  it('decodes frames split at every byte and many frames in one chunk', () => {
    const frames = [
      requestBytes(head({ opcode: Opcode.WRITE, requestId: 1, ref: REF, length: 3 }), Buffer.from('abc')),
      requestBytes(head({ opcode: Opcode.PING, requestId: 2 })),
      requestBytes(head({ opcode: Opcode.WRITE, requestId: 3, ref: REF, length: 1000 }), Buffer.alloc(1000, 7)),
    ];
    const all = Buffer.concat(frames);
    for (const step of [1, 2, 7, 55, 56, 57, 500, all.length]) {
      const d = new RequestDecoder();
      const got: RequestFrame[] = [];
      for (let at = 0; at < all.length; at += step) {
        d.push(all.subarray(at, at + step));
        for (let f = d.next(); f !== null; f = d.next()) got.push(f);
      }
      expect(got.map((f) => f.requestId)).toEqual([1, 2, 3]);
      expect(got[0]!.payload.toString()).toBe('abc');
      expect(got[2]!.payload).toEqual(Buffer.alloc(1000, 7));
      expect(d.bufferedBytes).toBe(0);
    }
  });

  it('hands out a payload inside one chunk without copying it', () => {
    const data = Buffer.alloc(8192, 1);
    const bytes = requestBytes(head({ opcode: Opcode.WRITE, ref: REF, length: data.length }), data);
    const f = decodeOne(bytes);
    expect(f.payload.buffer).toBe(bytes.buffer);
  });

  it('returns null until a frame is complete', () => {
    const bytes = requestBytes(head({ opcode: Opcode.WRITE, ref: REF, length: 10 }), Buffer.alloc(10));
    const d = new RequestDecoder();
    d.push(bytes.subarray(0, REQUEST_HEADER_BYTES + 9));
    expect(d.next()).toBeNull();
    expect(d.wantedBytes).toBe(1);
    d.push(bytes.subarray(REQUEST_HEADER_BYTES + 9));
    expect(d.next()!.payload.length).toBe(10);
  });
});

describe('request framing errors close the connection', () => {
  const good = requestBytes(head({ opcode: Opcode.WRITE, requestId: 77, ref: REF, length: 4 }), Buffer.from('data'));

  it('bad magic is a protocol error', () => {
    const bad = reseal(good);
    bad[0] = 0x47; // 'G', say an HTTP client
    const d = new RequestDecoder();
    d.push(reseal(bad));
    expect(errCode(() => d.next())).toBe('TORUS_ERR_PEER_PROTOCOL');
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
    const bytes = requestBytes(head({ opcode: Opcode.WRITE, ref: REF, length: 5000 }), Buffer.alloc(5000));
    const d = new RequestDecoder(4096 + 1);
    d.push(bytes.subarray(0, REQUEST_HEADER_BYTES));
    expect(errCode(() => d.next())).toBe('TORUS_ERR_PEER_PROTOCOL');
    // A header claiming more than the protocol maximum, resealed so only the size is wrong.
    const huge = Buffer.from(bytes.subarray(0, REQUEST_HEADER_BYTES));
    huge.writeUInt32BE(PAYLOAD_BYTES_MAX + 1, 44);
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
    expect(payloadBytesMaxFor(4096)).toBe(ALLOCATED_REFS_MAX * 16);
    expect(payloadBytesMaxFor(64 * 1024 * 1024)).toBe(64 * 1024 * 1024);
    expect(payloadBytesMaxFor(2 ** 40)).toBe(PAYLOAD_BYTES_MAX);
  });
});

describe('invalid requests get an error reply (framing intact)', () => {
  function edited(h: RequestHead, payload: Buffer, edit: (b: Buffer) => void): Buffer {
    const hdr = Buffer.from(encodeRequestHeader(h, payload));
    edit(hdr);
    return Buffer.concat([reseal(hdr), payload]);
  }

  it('unknown opcode and flags', () => {
    expect(invalidCode(edited(head({ opcode: Opcode.PING }), Buffer.alloc(0), (b) => (b[4] = 99)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(edited(head({ opcode: Opcode.PING }), Buffer.alloc(0), (b) => (b[4] = 0)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.READ, flags: FLAG_FUA, ref: REF, length: 1 })))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.WRITE, flags: FLAG_PUNCH, ref: REF, length: 1 }), Buffer.alloc(1)))).toBe(
      'TORUS_ERR_PEER_PROTOCOL',
    );
    expect(invalidCode(requestBytes(head({ opcode: Opcode.ZERO, flags: 0x80, ref: REF, length: 1 })))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('block refs that are missing, invalid or present where none belongs', () => {
    expect(invalidCode(requestBytes(head({ opcode: Opcode.READ, ref: null, length: 1 })))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const r = head({ opcode: Opcode.READ, ref: REF, length: 1 });
    expect(invalidCode(edited(r, Buffer.alloc(0), (b) => b.writeUInt32BE(0, 12)))).toBe('TORUS_ERR_PEER_PROTOCOL'); // volume 0
    expect(invalidCode(edited(r, Buffer.alloc(0), (b) => b.writeUInt32BE(0, 16)))).toBe('TORUS_ERR_PEER_PROTOCOL'); // generation 0
    expect(invalidCode(edited(r, Buffer.alloc(0), (b) => (b[20] = 1)))).toBe('TORUS_ERR_PEER_PROTOCOL'); // reserved ref bytes
    expect(invalidCode(requestBytes(head({ opcode: Opcode.FLUSH, ref: REF })))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('fence fields that do not make sense', () => {
    const w = head({ opcode: Opcode.WRITE, ref: REF, length: 1 });
    expect(invalidCode(edited(w, Buffer.alloc(1), (b) => b.writeUInt32BE(5, 40)))).toBe('TORUS_ERR_PEER_PROTOCOL'); // no FLAG_FENCE
    const fenced = head({ ...w, fence: 1 });
    expect(invalidCode(edited(fenced, Buffer.alloc(1), (b) => b.writeUInt32BE(2 ** 21, 36)))).toBe('TORUS_ERR_PEER_PROTOCOL'); // > 2^53
    expect(FLAG_FENCE).toBeGreaterThan(0);
  });

  it('payloads and ranges that do not fit the opcode', () => {
    expect(invalidCode(requestBytes(head({ opcode: Opcode.WRITE, ref: REF, length: 2 }), Buffer.alloc(1)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.READ, ref: REF, length: 1 }), Buffer.alloc(1)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.PING }), Buffer.alloc(1)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.FLUSH, offset: 1 })))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.READ, ref: REF, offset: BS - 1, length: 2 })))).toBe('TORUS_ERR_IO_OUT_OF_RANGE');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.ZERO, ref: REF, offset: 0xffffffff, length: 0xffffffff })))).toBe(
      'TORUS_ERR_IO_OUT_OF_RANGE',
    );
    expect(invalidCode(requestBytes(head({ opcode: Opcode.WRITE, ref: REF, offset: BS, length: 1 }), Buffer.alloc(1)))).toBe(
      'TORUS_ERR_IO_OUT_OF_RANGE',
    );
  });

  it('ALLOCATED and DELETE_VOLUME payloads', () => {
    expect(invalidCode(requestBytes(head({ opcode: Opcode.ALLOCATED, length: 2 }), encodeRefList([REF])))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.ALLOCATED, length: 1 }), Buffer.alloc(16)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.ALLOCATED, length: ALLOCATED_REFS_MAX + 1 })))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.DELETE_VOLUME }), Buffer.alloc(4)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(invalidCode(requestBytes(head({ opcode: Opcode.DELETE_VOLUME }), Buffer.alloc(8)))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('accepts the largest ALLOCATED request', () => {
    const refs = Array.from({ length: ALLOCATED_REFS_MAX }, (_, i) => blockRef(1, 1, i));
    const f = decodeOne(requestBytes(head({ opcode: Opcode.ALLOCATED, length: refs.length }), encodeRefList(refs)), payloadBytesMaxFor(BS));
    expect(valid(f)).toMatchObject({ opcode: Opcode.ALLOCATED });
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
    const ok = encodeResponseHeader(Opcode.PING, 1, STATUS_OK, Buffer.alloc(0));
    const status = Buffer.from(ok);
    status[5] = 7;
    expect(errCode(() => decodeResponses(reseal(status, RESPONSE_HEADER_BYTES)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const reserved = Buffer.from(ok);
    reserved[7] = 1;
    expect(errCode(() => decodeResponses(reseal(reserved, RESPONSE_HEADER_BYTES)))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const magic = Buffer.from(ok);
    magic[3] = 0x51; // a request magic where a response belongs
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

describe('payload encodings', () => {
  it('bitmaps', () => {
    for (const n of [0, 1, 7, 8, 9, 100]) {
      const bits = Array.from({ length: n }, (_, i) => i % 3 === 0);
      expect(decodeBitmap(encodeBitmap(bits), n)).toEqual(bits);
    }
    expect(encodeBitmap([true, false, false, false, false, false, false, true, true])).toEqual(Buffer.from([0x81, 0x80]));
    expect(decodeBitmap(Buffer.alloc(2), 8)).toBeNull();
  });

  it('ref lists', () => {
    const refs = [REF, blockRef(1, 2, 3)];
    expect(decodeRefList(encodeRefList(refs))).toEqual(refs);
    expect(decodeRefList(Buffer.alloc(15))).toBeNull();
    expect(decodeRefList(Buffer.alloc(16))).toBeNull();
  });

  it('usage', () => {
    const u = { capacity: 2 ** 45, used: 2 ** 33 + 1, blocks: 12345 };
    expect(decodeUsage(encodeUsage(u))).toEqual(u);
    expect(decodeUsage(Buffer.alloc(23))).toBeNull();
    expect(decodeUsage(Buffer.alloc(24, 0xff))).toBeNull();
  });

  it('errors keep their code; unknown codes and junk become protocol errors', () => {
    expect(decodeErrorPayload(errorToPayload(new TorusError('TORUS_ERR_VOLUME_FENCED', 'older'))).code).toBe('TORUS_ERR_VOLUME_FENCED');
    expect(decodeErrorPayload(errorToPayload(new Error('EIO boom'))).code).toBe('TORUS_ERR_STORE_IO');
    const unknown = decodeErrorPayload(encodeErrorPayload('TORUS_ERR_FROM_THE_FUTURE', 'x'));
    expect(unknown.code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(unknown.details).toMatchObject({ remoteCode: 'TORUS_ERR_FROM_THE_FUTURE' });
    expect(decodeErrorPayload(Buffer.alloc(1)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(decodeErrorPayload(Buffer.from([0, 200, 65])).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(decodeErrorPayload(Buffer.from([0, 0])).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(decodeErrorPayload(Buffer.alloc(ERROR_PAYLOAD_BYTES_MAX + 1)).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    // Long messages are cut to the limit.
    const long = encodeErrorPayload('TORUS_ERR_STORE_IO', 'é'.repeat(10_000));
    expect(long.length).toBeLessThanOrEqual(ERROR_PAYLOAD_BYTES_MAX);
    expect(decodeErrorPayload(long).code).toBe('TORUS_ERR_STORE_IO');
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
