import { describe, expect, it } from 'vitest';
import {
  decodeAttrList,
  decodeAttrs,
  decodeConnectIndex,
  decodeFamilyId,
  decodeGenlReply,
  decodeMessages,
  decodeStatus,
  encodeAttrs,
  encodeConnect,
  encodeDisconnect,
  encodeGetFamily,
  encodeReconfigure,
  encodeStatus,
  CTRL_ATTR_FAMILY_ID,
  CTRL_ATTR_FAMILY_NAME,
  GENL_ID_CTRL,
  NBD_ATTR_BACKEND_IDENTIFIER,
  NBD_ATTR_BLOCK_SIZE_BYTES,
  NBD_ATTR_CLIENT_FLAGS,
  NBD_ATTR_DEAD_CONN_TIMEOUT,
  NBD_ATTR_DEVICE_LIST,
  NBD_ATTR_INDEX,
  NBD_ATTR_SERVER_FLAGS,
  NBD_ATTR_SIZE_BYTES,
  NBD_ATTR_SOCKETS,
  NBD_ATTR_TIMEOUT,
  NBD_CMD_CONNECT,
  NBD_CMD_DISCONNECT,
  NBD_CMD_RECONFIGURE,
  NBD_CMD_STATUS,
  NBD_DEVICE_CONNECTED,
  NBD_DEVICE_INDEX,
  NBD_DEVICE_ITEM,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_SOCK_FD,
  NBD_SOCK_ITEM,
  NLA_F_NESTED,
  NLM_F_ACK,
  NLM_F_REQUEST,
  NLMSG_ERROR,
} from '../../src/attach/netlink-codec.js';

/** A reply message as the kernel would send it: nlmsghdr + genlmsghdr + attrs. */
function reply(type: number, seq: number, body: Buffer): Buffer {
  const len = 16 + body.length;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt32LE(seq, 8);
  body.copy(b, 16);
  return b;
}
const genl = (cmd: number, attrs: Buffer) => Buffer.concat([Buffer.from([cmd, 1, 0, 0]), attrs]);
function ack(seq: number, errno: number): Buffer {
  const body = Buffer.alloc(4 + 16);
  body.writeInt32LE(-errno, 0);
  return reply(NLMSG_ERROR, seq, body);
}

describe('netlink codec', () => {
  it('pads attributes to 4 bytes and marks nested ones', () => {
    const b = encodeAttrs([{ type: 3, u8: 7 }, { type: 4, nested: [{ type: 1, u32: 0xdeadbeef }] }]);
    expect(b.length).toBe(8 + 12);
    expect(b.readUInt16LE(0)).toBe(5); // length excludes padding
    expect(b.readUInt16LE(2)).toBe(3);
    expect(b.readUInt16LE(10)).toBe(4 | NLA_F_NESTED);
    const parsed = decodeAttrs(b);
    expect(parsed.get(3)![0]).toBe(7);
    expect(decodeAttrs(parsed.get(4)!).get(1)!.readUInt32LE(0)).toBe(0xdeadbeef);
  });

  it('encodes a family look-up for "nbd" to the generic netlink controller', () => {
    const b = encodeGetFamily(42);
    const [m] = decodeMessages(b);
    expect(m!.type).toBe(GENL_ID_CTRL);
    expect(m!.flags).toBe(NLM_F_REQUEST | NLM_F_ACK);
    expect(m!.seq).toBe(42);
    expect(m!.payload[0]).toBe(3); // CTRL_CMD_GETFAMILY
    expect(decodeAttrs(m!.payload.subarray(4)).get(CTRL_ATTR_FAMILY_NAME)!.toString()).toBe('nbd\0');
  });

  it('encodes CONNECT with a 4096-byte block size whatever the volume block size, and the sockets nested', () => {
    const b = encodeConnect(0x1a, 9, {
      index: null,
      sizeBytes: 64 * 1024 * 1024,
      serverFlags: NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_CAN_MULTI_CONN | (1 << 6) | (1 << 11),
      timeoutSeconds: 10,
      deadConnTimeoutSeconds: 30,
      socketFds: [17],
      backend: 'torus:x',
    });
    const [m] = decodeMessages(b);
    expect(m!.type).toBe(0x1a);
    expect(m!.payload[0]).toBe(NBD_CMD_CONNECT);
    const a = decodeAttrs(m!.payload.subarray(4));
    expect(a.has(NBD_ATTR_INDEX)).toBe(false); // the kernel picks a free device
    expect(a.get(NBD_ATTR_SIZE_BYTES)!.readBigUInt64LE(0)).toBe(64n * 1024n * 1024n);
    expect(a.get(NBD_ATTR_BLOCK_SIZE_BYTES)!.readBigUInt64LE(0)).toBe(4096n);
    // Flags the kernel does not know (WRITE_ZEROES, FAST_ZERO) are not passed on.
    expect(Number(a.get(NBD_ATTR_SERVER_FLAGS)!.readBigUInt64LE(0))).toBe(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_CAN_MULTI_CONN);
    expect(a.get(NBD_ATTR_TIMEOUT)!.readBigUInt64LE(0)).toBe(10n);
    expect(a.get(NBD_ATTR_DEAD_CONN_TIMEOUT)!.readBigUInt64LE(0)).toBe(30n);
    // No DISCONNECT_ON_CLOSE / DESTROY_ON_DISCONNECT: the device must outlive its server.
    expect(a.get(NBD_ATTR_CLIENT_FLAGS)!.readBigUInt64LE(0)).toBe(0n);
    expect(a.get(NBD_ATTR_BACKEND_IDENTIFIER)!.toString()).toBe('torus:x\0');
    const socks = decodeAttrList(a.get(NBD_ATTR_SOCKETS)!);
    expect(socks.map(([t]) => t)).toEqual([NBD_SOCK_ITEM]);
    expect(decodeAttrs(socks[0]![1]).get(NBD_SOCK_FD)!.readUInt32LE(0)).toBe(17);
  });

  it('encodes CONNECT on a named device, RECONFIGURE, DISCONNECT and STATUS with the index', () => {
    const idx = (b: Buffer) => decodeAttrs(decodeMessages(b)[0]!.payload.subarray(4)).get(NBD_ATTR_INDEX)?.readUInt32LE(0);
    expect(idx(encodeConnect(1, 1, { index: 3, sizeBytes: 4096, serverFlags: 1, timeoutSeconds: 1, deadConnTimeoutSeconds: 1, socketFds: [5], backend: 'b' }))).toBe(3);
    const r = encodeReconfigure(1, 2, { index: 4, socketFds: [8], timeoutSeconds: 10, deadConnTimeoutSeconds: 30, backend: 'b' });
    expect(decodeMessages(r)[0]!.payload[0]).toBe(NBD_CMD_RECONFIGURE);
    expect(idx(r)).toBe(4);
    const d = encodeDisconnect(1, 3, 5);
    expect(decodeMessages(d)[0]!.payload[0]).toBe(NBD_CMD_DISCONNECT);
    expect(idx(d)).toBe(5);
    expect(decodeMessages(encodeStatus(1, 4, null))[0]!.payload[0]).toBe(NBD_CMD_STATUS);
    expect(idx(encodeStatus(1, 4, null))).toBeUndefined();
    expect(idx(encodeStatus(1, 4, 6))).toBe(6);
  });

  it('decodes the family id, the connected index and an ack', () => {
    const fam = Buffer.concat([reply(GENL_ID_CTRL, 7, genl(1, encodeAttrs([{ type: CTRL_ATTR_FAMILY_ID, u16: 0x22 }]))), ack(7, 0)]);
    expect(decodeFamilyId(decodeGenlReply(fam, 7))).toBe(0x22);
    const con = Buffer.concat([reply(0x22, 8, genl(NBD_CMD_CONNECT, encodeAttrs([{ type: NBD_ATTR_INDEX, u32: 2 }]))), ack(8, 0)]);
    const rep = decodeGenlReply(con, 8);
    expect(rep.errno).toBe(0);
    expect(decodeConnectIndex(rep)).toBe(2);
  });

  it('reports the errno of a refused request and ignores messages of other requests', () => {
    const buf = Buffer.concat([ack(1, 16), ack(2, 1)]);
    expect(decodeGenlReply(buf, 2).errno).toBe(1);
    expect(decodeGenlReply(buf, 1).errno).toBe(16);
    expect(() => decodeGenlReply(buf, 3)).toThrow(/no ack/);
  });

  it('decodes a STATUS device list', () => {
    const item = (i: number, c: number) => ({ type: NBD_DEVICE_ITEM, nested: [{ type: NBD_DEVICE_INDEX, u32: i }, { type: NBD_DEVICE_CONNECTED, u8: c }] });
    const body = genl(NBD_CMD_STATUS, encodeAttrs([{ type: NBD_ATTR_DEVICE_LIST, nested: [item(0, 1), item(1, 0), item(7, 1)] }]));
    const st = decodeStatus(decodeGenlReply(Buffer.concat([reply(0x22, 5, body), ack(5, 0)]), 5));
    expect(st).toEqual([
      { index: 0, connected: true },
      { index: 1, connected: false },
      { index: 7, connected: true },
    ]);
  });

  it('refuses truncated messages and attributes', () => {
    const good = reply(0x22, 1, genl(1, encodeAttrs([{ type: 1, u32: 1 }])));
    expect(() => decodeMessages(good.subarray(0, good.length - 4))).toThrow(/runs past/);
    const attr = encodeAttrs([{ type: 1, u64: 1 }]);
    expect(() => decodeAttrs(attr.subarray(0, 8))).toThrow(/runs past/);
  });
});
