/**
 * The torus peer protocol: how one torusd reads and writes blocks held by
 * another. Every number is big-endian. The whole wire format is declared
 * here; codec.ts and handshake-codec.ts encode and decode it.
 *
 * A connection starts with a handshake (client speaks first):
 *
 *   client -> server  HELLO     versions, flags, block size, nonce, cluster id, peer uuid
 *   server -> client  HELLO     chosen version, ..., its nonce, + server proof
 *                     or REJECT (status code + message), then close
 *   client -> server  PROOF     client proof
 *   server -> client  READY     or REJECT, then close
 *
 * A proof is HMAC-SHA256(secret, role label || client HELLO body || server
 * HELLO body without the proof): it covers both nonces, both uuids and the
 * cluster id, and the secret never crosses the wire. Each handshake message
 * is `magic(8) kind(u8) 0(u8) bodyLength(u16) body crc32c(u32)`; the CRC
 * covers everything before it.
 *
 * Then the client sends requests and the server answers each one, in any
 * order, matched by request id (many requests in flight per connection).
 *
 * Request header (REQUEST_HEADER_BYTES):
 *    0 u32 REQUEST_MAGIC      4 u8 opcode    5 u8 flags    6 u16 0
 *    8 u32 request id        12 BlockRef (16 bytes, encodeBlockRef; zero when unused)
 *   28 u32 offset            32 u32 length
 *   36 u64 fence token (valid when FLAG_FENCE is set, else 0)
 *   44 u32 payload length    48 u32 crc32c(payload)   52 u32 crc32c(header bytes 0..52)
 *
 * Response header (RESPONSE_HEADER_BYTES):
 *    0 u32 RESPONSE_MAGIC     4 u8 opcode (echoed)    5 u8 status    6 u16 0
 *    8 u32 request id        12 u32 payload length   16 u32 crc32c(payload)
 *   20 u32 crc32c(header bytes 0..20)
 *
 * A STATUS_ERROR response carries the error as payload: `u16 code length,
 * code (ASCII TORUS_ERR_...), message (UTF-8)`. Codes travel as strings so
 * that a peer of another release decodes them without a shared table.
 */

export const HANDSHAKE_MAGIC = Buffer.from('TORUSPR1', 'ascii');
export const HANDSHAKE_PREFIX_BYTES = 12; // magic(8) kind(1) reserved(1) body length(2)
export const HANDSHAKE_CRC_BYTES = 4;
export const HANDSHAKE_BODY_BYTES_MAX = 1024;

export const HandshakeKind = {
  HELLO: 1,
  PROOF: 2,
  READY: 3,
  REJECT: 4,
} as const;
export type HandshakeKind = (typeof HandshakeKind)[keyof typeof HandshakeKind];

/** Versions this build speaks; the server picks the highest both speak. */
export const PROTOCOL_VERSION_MIN = 1;
export const PROTOCOL_VERSION_MAX = 1;

/** HELLO flag: this side has a non-empty cluster secret (both sides must agree). */
export const HELLO_FLAG_AUTH = 0x0001;
export const HELLO_FLAGS_KNOWN = HELLO_FLAG_AUTH;

export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;
export const CLUSTER_ID_BYTES_MAX = 255;
export const PEER_UUID_BYTES_MAX = 255;
export const PROOF_LABEL_CLIENT = 'torus-peer-proof client';
export const PROOF_LABEL_SERVER = 'torus-peer-proof server';

/** ASCII 'TPRQ' and 'TPRS': a desynchronised stream fails fast instead of misparsing. */
export const REQUEST_MAGIC = 0x54505251;
export const RESPONSE_MAGIC = 0x54505253;
export const REQUEST_HEADER_BYTES = 56;
export const RESPONSE_HEADER_BYTES = 24;

export const Opcode = {
  READ: 1,
  WRITE: 2,
  ZERO: 3,
  FLUSH: 4,
  ALLOCATED: 5,
  DELETE_VOLUME: 6,
  USAGE: 7,
  PING: 8,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

export const OPCODE_NAMES: Readonly<Record<number, string>> = {
  [Opcode.READ]: 'READ',
  [Opcode.WRITE]: 'WRITE',
  [Opcode.ZERO]: 'ZERO',
  [Opcode.FLUSH]: 'FLUSH',
  [Opcode.ALLOCATED]: 'ALLOCATED',
  [Opcode.DELETE_VOLUME]: 'DELETE_VOLUME',
  [Opcode.USAGE]: 'USAGE',
  [Opcode.PING]: 'PING',
};

export const FLAG_FUA = 0x01;
export const FLAG_PUNCH = 0x02;
export const FLAG_FENCE = 0x04;

/** Which request flags each opcode accepts; anything else is a protocol error. */
export const OPCODE_FLAGS: Readonly<Record<number, number>> = {
  [Opcode.READ]: 0,
  [Opcode.WRITE]: FLAG_FUA | FLAG_FENCE,
  [Opcode.ZERO]: FLAG_FUA | FLAG_PUNCH | FLAG_FENCE,
  [Opcode.FLUSH]: 0,
  [Opcode.ALLOCATED]: 0,
  [Opcode.DELETE_VOLUME]: 0,
  [Opcode.USAGE]: 0,
  [Opcode.PING]: 0,
};

/** Opcodes whose BlockRef field names a block; for the others it is all zeroes. */
export const OPCODES_WITH_REF: ReadonlySet<number> = new Set([Opcode.READ, Opcode.WRITE, Opcode.ZERO]);

export const STATUS_OK = 0;
export const STATUS_ERROR = 1;

/**
 * The largest payload of any frame: a whole block of the largest block size a
 * cluster may have (64 MiB, see ClusterConfig) plus slack. Connections use
 * tighter limits derived from their block size.
 */
export const PAYLOAD_BYTES_MAX = 64 * 1024 * 1024 + 64 * 1024;
/** BlockRefs per ALLOCATED request (a 1 MiB payload); clients split longer lists. */
export const ALLOCATED_REFS_MAX = 65536;
export const USAGE_PAYLOAD_BYTES = 24; // capacity, used, blocks: three u64
export const DELETE_VOLUME_PAYLOAD_BYTES = 4; // volumeId u32
export const ERROR_PAYLOAD_BYTES_MAX = 4096;
export const ERROR_CODE_BYTES_MAX = 64;

/** Request ids are u32 and wrap; ids still in flight are skipped. */
export const REQUEST_ID_MAX = 0xffffffff;

/** The payload bytes a connection with this block size ever needs to accept. */
export function payloadBytesMaxFor(blockSize: number): number {
  return Math.min(PAYLOAD_BYTES_MAX, Math.max(blockSize, ALLOCATED_REFS_MAX * 16, ERROR_PAYLOAD_BYTES_MAX));
}
