/**
 * The torus peer protocol, version 2: how one peer reaches the replica API
 * (src/model/replica-api.ts) of another. Every number is big-endian. The
 * whole wire format is declared here; codec.ts and handshake-codec.ts
 * encode and decode it, and nothing else touches bytes.
 *
 * ## Handshake (client speaks first)
 *
 *   client -> server  HELLO     versions, flags, block size, nonce, cluster id, peer uuid, incarnation
 *   server -> client  HELLO     chosen version, ..., its nonce, its incarnation, + server proof
 *                     or REJECT (error payload, v1 layout), then close
 *   client -> server  PROOF     client proof
 *   server -> client  READY     or REJECT, then close
 *
 * A proof is HMAC-SHA256(secret, role label || client HELLO body || server
 * HELLO body without the proof): it covers both nonces, both uuids, both
 * incarnations and the cluster id, and the secret never crosses the wire.
 * Each handshake message is `magic(8) kind(u8) 0(u8) bodyLength(u16) body
 * crc32c(u32)`; the CRC covers everything before it.
 *
 * The handshake framing, the first fields of HELLO (the version range) and
 * the REJECT payload are the same as in protocol 1, so that a peer of either
 * version can tell the other which versions it speaks: a server reads the
 * version range before anything else in a HELLO. (A protocol-1 server checks
 * the whole HELLO first, so it refuses a version-2 client for its HELLO's
 * length; the client adds its own version to that refusal.)
 *
 * HELLO body:
 *    0 u16 versionMin   2 u16 versionMax   4 u16 flags   6 u16 0   8 u32 blockSize
 *   12 nonce (NONCE_BYTES)
 *   44 u8 n + cluster id (UTF-8), u8 n + peer uuid, u8 n + incarnation (new in 2)
 *   server HELLO only: + proof (PROOF_BYTES)
 *
 * The incarnation is new at every start of a peer: a client that sees it
 * change knows the server restarted and may have lost unflushed writes.
 *
 * ## Requests and replies
 *
 * Then the client sends requests and the server answers each one, matched
 * by request id (many requests in flight per connection). The server calls
 * the replica API in the order requests arrive (the calls may finish in any
 * order), and the client writes requests in the order they were made: the
 * replication layer relies on changes to one block sent down one connection
 * being applied in the order they were sent.
 *
 * Request header (REQUEST_HEADER_BYTES):
 *    0 u32 REQUEST_MAGIC    4 u8 opcode    5 u8 flags    6 u8 copy state    7 u8 0
 *    8 u32 request id      12 u64 ring version (the sender's)
 *   20 BlockRef (16 bytes, encodeBlockRef; all zero when unused)
 *   36 u32 offset          40 u32 length
 *   44 u64 token           52 u64 version       60 u64 prev
 *   68 u32 payload length  72 u32 crc32c(payload)  76 u32 crc32c(header bytes 0..76)
 *
 * Versions (version, prev) are u64 with VERSION_ABSENT (-1) as all ones;
 * every other u64 must be a safe integer (below 2^53). Fields an opcode
 * does not use are zero; a request with a non-zero unused field is invalid.
 *
 * | opcode        | ref   | offset | length          | token | version | prev | copy state | payload          |
 * | ------------- | ----- | ------ | --------------- | ----- | ------- | ---- | ---------- | ---------------- |
 * | READ          | ref   | offset | length          |       |         |      |            |                  |
 * | WRITE         | ref   | offset | = payload bytes | token | version | prev |            | data             |
 * | ZERO          | ref   | offset | length          | token | version | prev |            |                  |
 * | INSTALL       | ref   |        | blockSize or 0  | token | version |      | data/zero  | block (data)     |
 * | CONFIRM       | ref   |        |                 | token | version |      |            | u32 digest       |
 * | META          |       |        | ref count       |       |         |      |            | refs (16 each)   |
 * | EXPECT        |       |        | ref count       |       |         |      |            | refs (16 each)   |
 * | LIST          | after |        | limit           |       |         |      |            | u32 volume id    |
 * | VERIFY        | ref   |        |                 |       |         |      |            |                  |
 * | DROP          | ref   |        |                 | token | version |      |            |                  |
 * | FENCE         |       |        |                 | token |         |      |            | u32 volume id    |
 * | FLUSH, USAGE, HELLO: nothing   | DELETE_VOLUME: payload u32 volume id                                     |
 *
 * Response header (RESPONSE_HEADER_BYTES):
 *    0 u32 RESPONSE_MAGIC   4 u8 opcode (echoed)   5 u8 status   6 u16 0
 *    8 u32 request id      12 u32 payload length  16 u32 crc32c(payload)
 *   20 u32 crc32c(header bytes 0..20)
 *
 * Reply payloads (STATUS_OK):
 *   READ      BlockMeta + the bytes asked for
 *   WRITE, ZERO, FENCE, FLUSH, DELETE_VOLUME, EXPECT: empty
 *   INSTALL   u8 outcome (INSTALL_OUTCOME_CODES)
 *   CONFIRM, DROP: u8 0 or 1
 *   META      BlockMeta per ref asked, in order
 *   VERIFY    BlockMeta
 *   LIST      u8 more (0/1), u32 count, count x (BlockRef, BlockMeta)
 *   USAGE     u64 capacity, u64 used, u64 blocks
 *   HELLO     u64 ring version, u8 n + uuid, u8 n + incarnation
 *
 * BlockMeta (BLOCK_META_BYTES): u8 state (BLOCK_STATE_CODES), u8 suspect
 * (0/1), u64 version, u32 digest.
 *
 * A STATUS_ERROR reply carries the error: `u16 code length, code (ASCII
 * TORUS_ERR_...), u16 details length, details (a JSON object of plain
 * values, at most ERROR_DETAILS_BYTES_MAX), message (UTF-8)`. Codes travel
 * as strings so that a peer of another release decodes them without a
 * shared table; the details carry what a caller acts on, e.g. the replying
 * peer's ringVersion with TORUS_ERR_RING_OUTDATED.
 */

import { LIST_BLOCKS_MAX, META_REFS_MAX } from '../model/replica-api.js';

/** 'TORUSPR1' names the handshake framing, unchanged since protocol 1 (see above). */
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

/**
 * Versions this build speaks; the server picks the highest both speak.
 * Protocol 1 (0.1.0) carried BlockStore calls without versions; a peer
 * speaking it cannot take part in safe replication, so it is refused.
 */
export const PROTOCOL_VERSION_MIN = 2;
export const PROTOCOL_VERSION_MAX = 2;

/** HELLO flag: this side authenticates with a cluster secret (both sides must agree). */
export const HELLO_FLAG_AUTH = 0x0001;
export const HELLO_FLAGS_KNOWN = HELLO_FLAG_AUTH;

export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;
export const CLUSTER_ID_BYTES_MAX = 255;
export const PEER_UUID_BYTES_MAX = 255;
export const INCARNATION_BYTES_MAX = 255;
export const PROOF_LABEL_CLIENT = 'torus-peer-proof client';
export const PROOF_LABEL_SERVER = 'torus-peer-proof server';

/** ASCII 'TRQ2' and 'TRS2': a desynchronised stream, or a frame of another version, fails fast instead of misparsing. */
export const REQUEST_MAGIC = 0x54525132;
export const RESPONSE_MAGIC = 0x54525332;
export const REQUEST_HEADER_BYTES = 80;
export const RESPONSE_HEADER_BYTES = 24;

/** Byte offsets of the request header fields (see the table above). */
export const REQ = {
  MAGIC: 0,
  OPCODE: 4,
  FLAGS: 5,
  COPY_STATE: 6,
  RESERVED: 7,
  REQUEST_ID: 8,
  RING_VERSION: 12,
  REF: 20,
  OFFSET: 36,
  LENGTH: 40,
  TOKEN: 44,
  VERSION: 52,
  PREV: 60,
  PAYLOAD_LENGTH: 68,
  PAYLOAD_CRC: 72,
  HEADER_CRC: 76,
} as const;

/** Byte offsets of the response header fields. */
export const RES = {
  MAGIC: 0,
  OPCODE: 4,
  STATUS: 5,
  RESERVED: 6,
  REQUEST_ID: 8,
  PAYLOAD_LENGTH: 12,
  PAYLOAD_CRC: 16,
  HEADER_CRC: 20,
} as const;

/** One opcode per ReplicaApi method. */
export const Opcode = {
  READ: 1,
  WRITE: 2,
  ZERO: 3,
  INSTALL: 4,
  CONFIRM: 5,
  META: 6,
  LIST: 7,
  VERIFY: 8,
  DROP: 9,
  FENCE: 10,
  FLUSH: 11,
  DELETE_VOLUME: 12,
  USAGE: 13,
  /** ReplicaApi.hello: who answers (also a cheap round trip, a ping). */
  HELLO: 14,
  /**
   * ReplicaApi.expectWrites: a hint that whole-block writes to these
   * blocks follow. A peer of an earlier release answers it with
   * TORUS_ERR_PEER_PROTOCOL and keeps the connection: the sender ignores
   * the answer either way.
   */
  EXPECT: 15,
} as const;
export type Opcode = (typeof Opcode)[keyof typeof Opcode];

export const OPCODE_NAMES: Readonly<Record<number, string>> = {
  [Opcode.READ]: 'READ',
  [Opcode.WRITE]: 'WRITE',
  [Opcode.ZERO]: 'ZERO',
  [Opcode.INSTALL]: 'INSTALL',
  [Opcode.CONFIRM]: 'CONFIRM',
  [Opcode.META]: 'META',
  [Opcode.LIST]: 'LIST',
  [Opcode.VERIFY]: 'VERIFY',
  [Opcode.DROP]: 'DROP',
  [Opcode.FENCE]: 'FENCE',
  [Opcode.FLUSH]: 'FLUSH',
  [Opcode.DELETE_VOLUME]: 'DELETE_VOLUME',
  [Opcode.USAGE]: 'USAGE',
  [Opcode.HELLO]: 'HELLO',
  [Opcode.EXPECT]: 'EXPECT',
};

/** Force unit access: the change is durable before the reply. */
export const FLAG_FUA = 0x01;
/** ZERO: the range may be freed (a whole block leaves a tombstone); without it the range stays allocated. */
export const FLAG_PUNCH = 0x02;

/** Which request flags each opcode accepts; anything else is an invalid request. */
export const OPCODE_FLAGS: Readonly<Record<number, number>> = {
  [Opcode.READ]: 0,
  [Opcode.WRITE]: FLAG_FUA,
  [Opcode.ZERO]: FLAG_FUA | FLAG_PUNCH,
  [Opcode.INSTALL]: FLAG_FUA,
  [Opcode.CONFIRM]: 0,
  [Opcode.META]: 0,
  [Opcode.LIST]: 0,
  [Opcode.VERIFY]: 0,
  [Opcode.DROP]: 0,
  [Opcode.FENCE]: 0,
  [Opcode.FLUSH]: 0,
  [Opcode.DELETE_VOLUME]: 0,
  [Opcode.USAGE]: 0,
  [Opcode.HELLO]: 0,
  [Opcode.EXPECT]: 0,
};

/** Copy states of an INSTALL (request header byte 6). 0 for every other opcode. */
export const COPY_STATE_DATA = 1;
export const COPY_STATE_ZERO = 2;

/** BlockMeta.state on the wire. */
export const BLOCK_STATE_CODES = { absent: 0, data: 1, zero: 2 } as const;
/** InstallOutcome on the wire. */
export const INSTALL_OUTCOME_CODES = { installed: 1, same: 2, newer: 3 } as const;

export const STATUS_OK = 0;
export const STATUS_ERROR = 1;

/** state u8, suspect u8, version u64, digest u32. */
export const BLOCK_META_BYTES = 14;
export const BLOCK_REF_WIRE_BYTES = 16;
/** A volume id payload (LIST, FENCE, DELETE_VOLUME). */
export const VOLUME_ID_PAYLOAD_BYTES = 4;
/** CONFIRM: the digest the copy must have. */
export const CONFIRM_PAYLOAD_BYTES = 4;
/** INSTALL, CONFIRM, DROP replies: one byte. */
export const BYTE_REPLY_BYTES = 1;
/** LIST reply: more(u8) count(u32), then entries. */
export const LIST_REPLY_HEAD_BYTES = 5;
export const LIST_ENTRY_BYTES = BLOCK_REF_WIRE_BYTES + BLOCK_META_BYTES;
export const USAGE_PAYLOAD_BYTES = 24; // capacity, used, blocks: three u64
/** HELLO reply: ring version u64, then two u8-length strings. */
export const HELLO_REPLY_BYTES_MAX = 8 + 1 + PEER_UUID_BYTES_MAX + 1 + INCARNATION_BYTES_MAX;

export const ERROR_PAYLOAD_BYTES_MAX = 4096;
export const ERROR_CODE_BYTES_MAX = 64;
/** Error details cross the wire as JSON up to this size; larger ones lose their last keys. */
export const ERROR_DETAILS_BYTES_MAX = 512;

/**
 * The largest payload of any frame: a whole block of the largest block size a
 * cluster may have (64 MiB, see ClusterConfig) plus slack. Connections use
 * tighter limits derived from their block size.
 */
export const PAYLOAD_BYTES_MAX = 64 * 1024 * 1024 + 64 * 1024;

/**
 * Default memory limits of the peer path (README, "Memory"). A client holds
 * at most CLIENT_INFLIGHT_BYTES_MAX of request payloads on its connection
 * (a stalled peer holds no more than that of the writer's memory); a server
 * connection stops reading at SERVER_INFLIGHT_BYTES_MAX of requests being
 * handled, and again at as many reply bytes queued on its socket.
 */
export const CLIENT_INFLIGHT_BYTES_MAX = 8 * 1024 * 1024;
export const SERVER_INFLIGHT_BYTES_MAX = 8 * 1024 * 1024;
/** Socket reads that are not straight into a payload land in one reused buffer of this size per connection. */
export const READ_BUFFER_BYTES = 64 * 1024;

/** Request ids are u32 and wrap; ids still in flight are skipped. */
export const REQUEST_ID_MAX = 0xffffffff;

/** Largest safe u64 high word: values stay below 2^53. */
export const U64_HIGH_SAFE_MAX = 2 ** 21 - 1;

/**
 * The request payload bytes a connection with this block size ever needs to
 * accept: a whole block (WRITE, INSTALL) or the longest META ref list.
 */
export function requestPayloadBytesMaxFor(blockSize: number): number {
  return Math.min(PAYLOAD_BYTES_MAX, Math.max(blockSize, META_REFS_MAX * BLOCK_REF_WIRE_BYTES, VOLUME_ID_PAYLOAD_BYTES, CONFIRM_PAYLOAD_BYTES));
}

/**
 * The reply payload bytes a connection with this block size ever needs to
 * accept: a whole block read with its metadata, the longest META or LIST
 * answer, an error.
 */
export function replyPayloadBytesMaxFor(blockSize: number): number {
  return Math.min(
    PAYLOAD_BYTES_MAX,
    Math.max(
      BLOCK_META_BYTES + blockSize,
      META_REFS_MAX * BLOCK_META_BYTES,
      LIST_REPLY_HEAD_BYTES + LIST_BLOCKS_MAX * LIST_ENTRY_BYTES,
      ERROR_PAYLOAD_BYTES_MAX,
      HELLO_REPLY_BYTES_MAX,
      USAGE_PAYLOAD_BYTES,
    ),
  );
}
