import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../../src/util/byte-queue.js';
import {
  clipExtents,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequestHeader,
  decodeSimpleReply,
  decodeStructuredHeader,
  encodeBlockStatusReply,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeMetaContextReplyData,
  encodeMetaContextRequest,
  encodeOptionHeader,
  encodeOptionReply,
  encodeReadChunkHeader,
  encodeRequestHeader,
  encodeServerReplyData,
  encodeSimpleReply,
  encodeStructuredError,
  encodeStructuredNone,
  parseInfoRequest,
  parseMetaContextRequest,
  readUint64,
  stringBytes,
  transmissionFlags,
  writeUint64,
} from '../../src/nbd/codec.js';
import * as P from '../../src/nbd/protocol.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('nbd codec: handshake', () => {
  it('encodes the greeting as NBDMAGIC, IHAVEOPT and the handshake flags', () => {
    const g = encodeGreeting(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES);
    expect(g).toEqual(Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('IHAVEOPT'), hex('0003')]));
  });

  it('round-trips option headers and flags a bad magic', () => {
    const h = encodeOptionHeader(P.OPT_GO, 1234);
    expect(h.subarray(0, 8).toString()).toBe('IHAVEOPT');
    expect(decodeOptionHeader(h)).toEqual({ magicOk: true, option: P.OPT_GO, length: 1234 });
    const bad = Buffer.from(h);
    bad[7] = 0;
    expect(decodeOptionHeader(bad).magicOk).toBe(false);
  });

  it('encodes option replies with the 0x3e889045565a9 magic', () => {
    const r = encodeOptionReply(P.OPT_LIST, P.REP_SERVER, Buffer.from('abc'));
    expect(r.subarray(0, 8)).toEqual(hex('0003e889045565a9'));
    expect(r.length).toBe(23);
    expect(decodeOptionReplyHeader(r)).toEqual({ magicOk: true, option: P.OPT_LIST, type: P.REP_SERVER, length: 3 });
    expect(r.subarray(20).toString()).toBe('abc');
    expect(encodeOptionReply(P.OPT_ABORT, P.REP_ACK).length).toBe(20);
    expect(encodeOptionReply(1, P.REP_ERR_UNKNOWN).readUInt32BE(12)).toBe(0x80000006);
  });

  it('encodes NBD_REP_SERVER, INFO and META_CONTEXT payloads', () => {
    expect(encodeServerReplyData('vol', 'a disk')).toEqual(Buffer.concat([hex('00000003'), Buffer.from('vol'), Buffer.from('a disk')]));
    expect(encodeInfoExport(0x1_0000_0200, 0x0d6f)).toEqual(hex('0000 0000000100000200 0d6f'));
    expect(encodeInfoString(P.INFO_NAME, 'x')).toEqual(hex('0001 78'));
    expect(encodeInfoString(P.INFO_DESCRIPTION, 'y')).toEqual(hex('0002 79'));
    expect(encodeInfoBlockSize(1, 4096, 32 * 1024 * 1024)).toEqual(hex('0003 00000001 00001000 02000000'));
    expect(encodeMetaContextReplyData(1, 'base:allocation')).toEqual(Buffer.concat([hex('00000001'), Buffer.from('base:allocation')]));
  });

  it('encodes the EXPORT_NAME reply with or without the 124 zero bytes', () => {
    expect(encodeExportNameReply(1024, 3, true)).toEqual(hex('0000000000000400 0003'));
    const padded = encodeExportNameReply(1024, 3, false);
    expect(padded.length).toBe(134);
    expect(padded.subarray(10).equals(Buffer.alloc(124))).toBe(true);
  });

  it('cuts strings to 4096 bytes', () => {
    expect(stringBytes('a'.repeat(5000)).length).toBe(4096);
    expect(stringBytes('abc').toString()).toBe('abc');
  });

  it('parses INFO/GO requests and rejects malformed ones', () => {
    expect(parseInfoRequest(encodeInfoRequest('disk', [P.INFO_NAME, P.INFO_BLOCK_SIZE]))).toEqual({
      ok: true,
      value: { name: 'disk', infos: [P.INFO_NAME, P.INFO_BLOCK_SIZE] },
    });
    expect(parseInfoRequest(encodeInfoRequest('', []))).toEqual({ ok: true, value: { name: '', infos: [] } });
    expect(parseInfoRequest(Buffer.alloc(5)).ok).toBe(false);
    // name length beyond the data
    expect(parseInfoRequest(hex('00000010 0000')).ok).toBe(false);
    // count says 2 infos, only one present
    expect(parseInfoRequest(hex('00000000 0002 0001')).ok).toBe(false);
    // trailing garbage
    expect(parseInfoRequest(Buffer.concat([encodeInfoRequest('a', []), hex('00')])).ok).toBe(false);
    // name longer than the spec's 4096 bytes
    const long = encodeInfoRequest('x'.repeat(5000), []);
    expect(parseInfoRequest(long)).toMatchObject({ ok: false });
  });

  it('parses meta context requests and rejects malformed ones', () => {
    expect(parseMetaContextRequest(encodeMetaContextRequest('disk', ['base:allocation', 'qemu:x']), 16)).toEqual({
      ok: true,
      value: { exportName: 'disk', queries: ['base:allocation', 'qemu:x'] },
    });
    expect(parseMetaContextRequest(encodeMetaContextRequest('', []), 16)).toEqual({ ok: true, value: { exportName: '', queries: [] } });
    expect(parseMetaContextRequest(hex('00000000 000000'), 16).ok).toBe(false);
    // one query announced, none present
    expect(parseMetaContextRequest(hex('00000000 00000001'), 16).ok).toBe(false);
    // query length past the end
    expect(parseMetaContextRequest(hex('00000000 00000001 00000009 41'), 16).ok).toBe(false);
    // trailing bytes
    expect(parseMetaContextRequest(Buffer.concat([encodeMetaContextRequest('a', ['b:c']), hex('00')]), 16).ok).toBe(false);
    // too many queries
    expect(parseMetaContextRequest(encodeMetaContextRequest('a', ['b:1', 'b:2', 'b:3']), 2).ok).toBe(false);
  });

  it('computes transmission flags from the export and the negotiation', () => {
    const rw = transmissionFlags({ readOnly: false, multiConn: true, structuredReplies: true });
    const expected =
      P.TFLAG_HAS_FLAGS | P.TFLAG_SEND_FLUSH | P.TFLAG_SEND_FUA | P.TFLAG_SEND_TRIM | P.TFLAG_SEND_WRITE_ZEROES |
      P.TFLAG_SEND_FAST_ZERO | P.TFLAG_SEND_CACHE | P.TFLAG_SEND_DF | P.TFLAG_CAN_MULTI_CONN;
    expect(rw).toBe(expected);
    const simple = transmissionFlags({ readOnly: false, multiConn: false, structuredReplies: false });
    expect(simple & P.TFLAG_SEND_DF).toBe(0);
    expect(simple & P.TFLAG_CAN_MULTI_CONN).toBe(0);
    const ro = transmissionFlags({ readOnly: true, multiConn: false, structuredReplies: false });
    expect(ro & P.TFLAG_READ_ONLY).toBe(P.TFLAG_READ_ONLY);
    expect(ro & (P.TFLAG_SEND_FUA | P.TFLAG_SEND_TRIM | P.TFLAG_SEND_WRITE_ZEROES | P.TFLAG_SEND_FAST_ZERO)).toBe(0);
    expect(ro & P.TFLAG_HAS_FLAGS).toBe(1);
  });
});

describe('nbd codec: transmission', () => {
  it('decodes request headers, including 64-bit offsets', () => {
    const b = hex('25609513 0001 0001 0102030405060708 0000000100000000 00001000');
    expect(decodeRequestHeader(b)).toEqual({
      magic: P.REQUEST_MAGIC,
      flags: P.CMD_FLAG_FUA,
      type: P.CMD_WRITE,
      cookie: 0x0102030405060708n,
      offset: 0x1_0000_0000,
      length: 4096,
    });
    const huge = decodeRequestHeader(hex('25609513 0000 0000 0000000000000000 ffffffffffffffff 00000001'));
    expect(huge.offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });

  it('round-trips request headers', () => {
    const r = { flags: 3, type: 6, cookie: 0xdeadbeefcafef00dn, offset: 123456789012, length: 77 };
    expect(decodeRequestHeader(encodeRequestHeader(r))).toEqual({ ...r, magic: P.REQUEST_MAGIC });
    expect(decodeRequestHeader(encodeRequestHeader({ ...r, magic: 1 })).magic).toBe(1);
  });

  it('reads and writes 64-bit numbers', () => {
    const b = Buffer.alloc(8);
    writeUint64(b, 2 ** 40 + 5, 0);
    expect(b).toEqual(hex('0000010000000005'));
    expect(readUint64(b, 0)).toBe(2 ** 40 + 5);
  });

  it('encodes simple replies', () => {
    const r = encodeSimpleReply(7n, 22);
    expect(r).toEqual(hex('67446698 00000016 0000000000000007'));
    expect(decodeSimpleReply(r)).toEqual({ magicOk: true, error: 22, cookie: 7n });
  });

  it('encodes structured read chunks, NONE, errors and block status', () => {
    const h = encodeReadChunkHeader(9n, 4096, 512);
    expect(h.length).toBe(28);
    expect(decodeStructuredHeader(h)).toEqual({ magicOk: true, flags: P.REPLY_FLAG_DONE, type: P.REPLY_TYPE_OFFSET_DATA, cookie: 9n, length: 520 });
    expect(readUint64(h, 20)).toBe(4096);

    expect(decodeStructuredHeader(encodeStructuredNone(4n))).toEqual({ magicOk: true, flags: 1, type: 0, cookie: 4n, length: 0 });

    const e = encodeStructuredError(5n, 28, 'full');
    expect(decodeStructuredHeader(e)).toMatchObject({ type: P.REPLY_TYPE_ERROR, length: 10, flags: 1 });
    expect(e.subarray(20)).toEqual(Buffer.concat([hex('0000001c 0004'), Buffer.from('full')]));

    const eo = encodeStructuredError(5n, 5, 'x', 1024);
    expect(decodeStructuredHeader(eo)).toMatchObject({ type: P.REPLY_TYPE_ERROR_OFFSET, length: 15 });
    expect(readUint64(eo, 27)).toBe(1024);

    const bs = encodeBlockStatusReply(6n, 1, [
      { length: 4096, flags: 0 },
      { length: 8192, flags: 3 },
    ]);
    expect(decodeStructuredHeader(bs)).toMatchObject({ type: P.REPLY_TYPE_BLOCK_STATUS, length: 20 });
    expect(bs.subarray(20)).toEqual(hex('00000001 00001000 00000000 00002000 00000003'));
  });

  it('clips, merges and limits extents', () => {
    const ex = [
      { length: 100, flags: 0 },
      { length: 0, flags: 3 },
      { length: 50, flags: 0 },
      { length: 200, flags: 3 },
    ];
    expect(clipExtents(ex, 1000, false)).toEqual([
      { length: 150, flags: 0 },
      { length: 200, flags: 3 },
    ]);
    expect(clipExtents(ex, 170, false)).toEqual([
      { length: 150, flags: 0 },
      { length: 20, flags: 3 },
    ]);
    expect(clipExtents(ex, 1000, true)).toEqual([{ length: 150, flags: 0 }]);
    expect(clipExtents([], 10, false)).toEqual([]);
  });
});

describe('ByteQueue', () => {
  it('takes inside one chunk without copying', () => {
    const q = new ByteQueue();
    const chunk = Buffer.from('abcdefgh');
    q.push(chunk);
    const t = q.take(3);
    expect(t.toString()).toBe('abc');
    expect(t.buffer).toBe(chunk.buffer);
    expect(q.length).toBe(5);
  });

  it('takes across chunks, skips and clears', () => {
    const q = new ByteQueue();
    for (const s of ['ab', 'cde', '', 'f', 'ghij']) q.push(Buffer.from(s));
    expect(q.length).toBe(10);
    expect(q.take(4).toString()).toBe('abcd');
    expect(q.skip(3)).toBe(3);
    expect(q.take(2).toString()).toBe('hi');
    expect(q.skip(10)).toBe(1);
    expect(q.length).toBe(0);
    expect(() => q.take(1)).toThrow(/assertion failed: take within the queued bytes/);
    q.push(Buffer.from('xyz'));
    q.clear();
    expect(q.length).toBe(0);
  });

  it('keeps working over many small chunks', () => {
    const q = new ByteQueue();
    const all = Buffer.from(Array.from({ length: 1000 }, (_, i) => i & 0xff));
    for (let i = 0; i < all.length; i++) q.push(all.subarray(i, i + 1));
    const parts: Buffer[] = [];
    while (q.length > 0) parts.push(q.take(Math.min(7, q.length)));
    expect(Buffer.concat(parts)).toEqual(all);
  });
});
