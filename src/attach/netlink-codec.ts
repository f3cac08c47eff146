/**
 * Generic netlink messages for the kernel's `nbd` family, encoded and decoded
 * in plain TypeScript so they are unit-tested without a kernel. The native
 * addon only moves these bytes (native/src/kernel-nbd.cc).
 *
 * Numbers are those of <linux/netlink.h>, <linux/genetlink.h> and
 * <linux/nbd-netlink.h>, with the headers' own names. Netlink is host byte
 * order (little-endian on every machine torus targets); attributes are
 * padded to 4 bytes.
 */

// <linux/netlink.h>
export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
export const NLMSG_ERROR = 0x2;
export const NLMSG_DONE = 0x3;
export const NLMSG_HDRLEN = 16;
export const NLA_HDRLEN = 4;
export const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;

// <linux/genetlink.h>
export const GENL_ID_CTRL = 0x10;
export const GENL_HDRLEN = 4;
export const CTRL_CMD_GETFAMILY = 3;
export const CTRL_ATTR_FAMILY_ID = 1;
export const CTRL_ATTR_FAMILY_NAME = 2;

// <linux/nbd-netlink.h>
export const NBD_GENL_FAMILY_NAME = 'nbd';
export const NBD_GENL_VERSION = 1;
export const NBD_CMD_CONNECT = 1;
export const NBD_CMD_DISCONNECT = 2;
export const NBD_CMD_RECONFIGURE = 3;
export const NBD_CMD_STATUS = 5;
export const NBD_ATTR_INDEX = 1;
export const NBD_ATTR_SIZE_BYTES = 2;
export const NBD_ATTR_BLOCK_SIZE_BYTES = 3;
export const NBD_ATTR_TIMEOUT = 4;
export const NBD_ATTR_SERVER_FLAGS = 5;
export const NBD_ATTR_CLIENT_FLAGS = 6;
export const NBD_ATTR_SOCKETS = 7;
export const NBD_ATTR_DEAD_CONN_TIMEOUT = 8;
export const NBD_ATTR_DEVICE_LIST = 9;
export const NBD_ATTR_BACKEND_IDENTIFIER = 10;
export const NBD_DEVICE_ITEM = 1;
export const NBD_DEVICE_INDEX = 1;
export const NBD_DEVICE_CONNECTED = 2;
export const NBD_SOCK_ITEM = 1;
export const NBD_SOCK_FD = 1;

// <linux/nbd.h>: transmission flags the kernel understands (SERVER_FLAGS).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
/** The flags torus passes on to the kernel; others it may not know. */
export const KERNEL_SERVER_FLAGS_MASK = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_CAN_MULTI_CONN;

/**
 * The kernel's block size for the device. Always 4096: the volume's block
 * size (1 MiB by default) is the unit of placement, not of I/O, and the
 * kernel refuses anything above the page size (what broke Torus).
 */
export const KERNEL_BLOCK_SIZE_BYTES = 4096;

export type Attr =
  | { type: number; u8: number }
  | { type: number; u16: number }
  | { type: number; u32: number }
  | { type: number; u64: bigint | number }
  | { type: number; str: string }
  | { type: number; nested: Attr[] };

function attrPayload(a: Attr): Buffer {
  if ('u8' in a) return Buffer.from([a.u8 & 0xff]);
  if ('u16' in a) {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(a.u16);
    return b;
  }
  if ('u32' in a) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(a.u32 >>> 0);
    return b;
  }
  if ('u64' in a) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(a.u64));
    return b;
  }
  if ('str' in a) return Buffer.concat([Buffer.from(a.str, 'utf8'), Buffer.alloc(1)]);
  return encodeAttrs(a.nested);
}

const align4 = (n: number) => (n + 3) & ~3;

export function encodeAttrs(attrs: Attr[]): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    const payload = attrPayload(a);
    const len = NLA_HDRLEN + payload.length;
    const b = Buffer.alloc(align4(len));
    b.writeUInt16LE(len, 0);
    b.writeUInt16LE('nested' in a ? a.type | NLA_F_NESTED : a.type, 2);
    payload.copy(b, NLA_HDRLEN);
    parts.push(b);
  }
  return Buffer.concat(parts);
}

export interface GenlRequest {
  readonly family: number;
  readonly cmd: number;
  readonly version: number;
  readonly seq: number;
  readonly attrs: Attr[];
}

/** One request message, asking for an ack so every request ends with NLMSG_ERROR. */
export function encodeGenlRequest(r: GenlRequest): Buffer {
  const attrs = encodeAttrs(r.attrs);
  const len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.length;
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(r.family, 4);
  b.writeUInt16LE(NLM_F_REQUEST | NLM_F_ACK, 6);
  b.writeUInt32LE(r.seq >>> 0, 8);
  b.writeUInt32LE(0, 12); // port id: 0 lets the kernel fill in ours
  b.writeUInt8(r.cmd, 16);
  b.writeUInt8(r.version, 17);
  attrs.copy(b, NLMSG_HDRLEN + GENL_HDRLEN);
  return b;
}

export interface NetlinkMessage {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  readonly payload: Buffer;
}

/** Splits a reply into messages; throws on a truncated or malformed one. */
export function decodeMessages(buf: Buffer): NetlinkMessage[] {
  const out: NetlinkMessage[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) throw new Error(`netlink message of ${len} bytes at offset ${off} runs past the ${buf.length}-byte reply`);
    out.push({ type: buf.readUInt16LE(off + 4), flags: buf.readUInt16LE(off + 6), seq: buf.readUInt32LE(off + 8), payload: buf.subarray(off + NLMSG_HDRLEN, off + len) });
    off += align4(len);
  }
  return out;
}

/** Attributes by type (the last one wins, like the kernel's nla_parse). */
export function decodeAttrs(buf: Buffer): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (const [type, value] of decodeAttrList(buf)) out.set(type, value);
  return out;
}

/** Attributes in order, for nested lists whose items share one type. */
export function decodeAttrList(buf: Buffer): Array<[number, Buffer]> {
  const out: Array<[number, Buffer]> = [];
  let off = 0;
  while (off + NLA_HDRLEN <= buf.length) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2) & NLA_TYPE_MASK;
    if (len < NLA_HDRLEN || off + len > buf.length) throw new Error(`netlink attribute of ${len} bytes at offset ${off} runs past its ${buf.length}-byte container`);
    out.push([type, buf.subarray(off + NLA_HDRLEN, off + len)]);
    off += align4(len);
  }
  return out;
}

export interface GenlReply {
  /** 0, or the positive errno the kernel acked the request with. */
  readonly errno: number;
  /** Attributes of each generic netlink message that came before the ack. */
  readonly messages: Array<Map<number, Buffer>>;
}

/** Reads the replies to the request with sequence number `seq`. */
export function decodeGenlReply(buf: Buffer, seq: number): GenlReply {
  const messages: Array<Map<number, Buffer>> = [];
  for (const m of decodeMessages(buf)) {
    if (m.seq !== seq >>> 0) continue;
    if (m.type === NLMSG_ERROR) {
      if (m.payload.length < 4) throw new Error('netlink error message too short');
      const code = m.payload.readInt32LE(0);
      return { errno: code === 0 ? 0 : -code, messages };
    }
    if (m.type === NLMSG_DONE) return { errno: 0, messages };
    if (m.payload.length < GENL_HDRLEN) throw new Error('generic netlink message too short');
    messages.push(decodeAttrs(m.payload.subarray(GENL_HDRLEN)));
  }
  throw new Error(`no ack for netlink request ${seq} in the reply`);
}

function readU32(b: Buffer | undefined): number | null {
  return b !== undefined && b.length >= 4 ? b.readUInt32LE(0) : null;
}

// ------------------------------------------------------------ requests

export function encodeGetFamily(seq: number, name = NBD_GENL_FAMILY_NAME): Buffer {
  return encodeGenlRequest({ family: GENL_ID_CTRL, cmd: CTRL_CMD_GETFAMILY, version: 1, seq, attrs: [{ type: CTRL_ATTR_FAMILY_NAME, str: name }] });
}

/** The family id from a GETFAMILY reply; null when the reply has none. */
export function decodeFamilyId(reply: GenlReply): number | null {
  for (const m of reply.messages) {
    const id = m.get(CTRL_ATTR_FAMILY_ID);
    if (id !== undefined && id.length >= 2) return id.readUInt16LE(0);
  }
  return null;
}

export interface ConnectParams {
  /** A device index, or null to let the kernel pick a free one. */
  readonly index: number | null;
  readonly sizeBytes: number;
  readonly serverFlags: number;
  /** Seconds before a request is considered lost and re-sent on a new socket. */
  readonly timeoutSeconds: number;
  /** Seconds a request waits for a new socket (RECONFIGURE) before failing with EIO. */
  readonly deadConnTimeoutSeconds: number;
  readonly socketFds: number[];
  /** Shown in /sys/block/nbdN/backend; RECONFIGURE must then name the same. */
  readonly backend: string;
}

function socketsAttr(fds: number[]): Attr {
  return { type: NBD_ATTR_SOCKETS, nested: fds.map((fd) => ({ type: NBD_SOCK_ITEM, nested: [{ type: NBD_SOCK_FD, u32: fd }] })) };
}

export function encodeConnect(family: number, seq: number, p: ConnectParams): Buffer {
  const attrs: Attr[] = [];
  if (p.index !== null) attrs.push({ type: NBD_ATTR_INDEX, u32: p.index });
  attrs.push(
    { type: NBD_ATTR_SIZE_BYTES, u64: p.sizeBytes },
    { type: NBD_ATTR_BLOCK_SIZE_BYTES, u64: KERNEL_BLOCK_SIZE_BYTES },
    { type: NBD_ATTR_SERVER_FLAGS, u64: p.serverFlags & KERNEL_SERVER_FLAGS_MASK },
    { type: NBD_ATTR_TIMEOUT, u64: p.timeoutSeconds },
    { type: NBD_ATTR_DEAD_CONN_TIMEOUT, u64: p.deadConnTimeoutSeconds },
    // No client flags: neither DESTROY_ON_DISCONNECT nor DISCONNECT_ON_CLOSE,
    // so the device outlives both the process that serves it and its openers.
    { type: NBD_ATTR_CLIENT_FLAGS, u64: 0 },
    { type: NBD_ATTR_BACKEND_IDENTIFIER, str: p.backend },
    socketsAttr(p.socketFds),
  );
  return encodeGenlRequest({ family, cmd: NBD_CMD_CONNECT, version: NBD_GENL_VERSION, seq, attrs });
}

/** The device index the kernel picked, from a CONNECT reply. */
export function decodeConnectIndex(reply: GenlReply): number | null {
  for (const m of reply.messages) {
    const i = readU32(m.get(NBD_ATTR_INDEX));
    if (i !== null) return i;
  }
  return null;
}

export interface ReconfigureParams {
  readonly index: number;
  readonly socketFds: number[];
  readonly timeoutSeconds: number;
  readonly deadConnTimeoutSeconds: number;
  readonly backend: string;
}

/** Hands the kernel new sockets for a device whose old ones are dead. */
export function encodeReconfigure(family: number, seq: number, p: ReconfigureParams): Buffer {
  return encodeGenlRequest({
    family,
    cmd: NBD_CMD_RECONFIGURE,
    version: NBD_GENL_VERSION,
    seq,
    attrs: [
      { type: NBD_ATTR_INDEX, u32: p.index },
      { type: NBD_ATTR_TIMEOUT, u64: p.timeoutSeconds },
      { type: NBD_ATTR_DEAD_CONN_TIMEOUT, u64: p.deadConnTimeoutSeconds },
      { type: NBD_ATTR_BACKEND_IDENTIFIER, str: p.backend },
      socketsAttr(p.socketFds),
    ],
  });
}

export function encodeDisconnect(family: number, seq: number, index: number): Buffer {
  return encodeGenlRequest({ family, cmd: NBD_CMD_DISCONNECT, version: NBD_GENL_VERSION, seq, attrs: [{ type: NBD_ATTR_INDEX, u32: index }] });
}

export function encodeStatus(family: number, seq: number, index: number | null): Buffer {
  const attrs: Attr[] = index === null ? [] : [{ type: NBD_ATTR_INDEX, u32: index }];
  return encodeGenlRequest({ family, cmd: NBD_CMD_STATUS, version: NBD_GENL_VERSION, seq, attrs });
}

export interface DeviceStatus {
  readonly index: number;
  readonly connected: boolean;
}

export function decodeStatus(reply: GenlReply): DeviceStatus[] {
  const out: DeviceStatus[] = [];
  for (const m of reply.messages) {
    const list = m.get(NBD_ATTR_DEVICE_LIST);
    if (list === undefined) continue;
    for (const [type, item] of decodeAttrList(list)) {
      if (type !== NBD_DEVICE_ITEM) continue;
      const a = decodeAttrs(item);
      const index = readU32(a.get(NBD_DEVICE_INDEX));
      const connected = a.get(NBD_DEVICE_CONNECTED);
      if (index === null) continue;
      out.push({ index, connected: connected !== undefined && connected.length >= 1 && connected[0] !== 0 });
    }
  }
  return out;
}
