import { TorusError } from '../errors/torus-error.js';
import { assert } from '../util/assert.js';
import { crc32c } from '../util/crc32c.js';
import type { ByteQueue } from '../util/byte-queue.js';
import {
  CLUSTER_ID_BYTES_MAX,
  HANDSHAKE_BODY_BYTES_MAX,
  INCARNATION_BYTES_MAX,
  HANDSHAKE_CRC_BYTES,
  HANDSHAKE_MAGIC,
  HANDSHAKE_PREFIX_BYTES,
  HandshakeKind,
  NONCE_BYTES,
  PEER_UUID_BYTES_MAX,
  PROOF_BYTES,
} from './protocol.js';

/** What each side says about itself in HELLO. */
export interface Hello {
  readonly versionMin: number;
  readonly versionMax: number;
  readonly flags: number;
  readonly blockSize: number;
  readonly nonce: Buffer;
  readonly clusterId: string;
  readonly peerUuid: string;
  /** New at every start of the peer (protocol 2). */
  readonly incarnation: string;
}

export interface HandshakeMessage {
  readonly kind: number;
  readonly body: Buffer;
}

const HELLO_FIXED_BYTES = 12 + NONCE_BYTES; // versions(4) flags(2) reserved(2) blockSize(4) nonce

function protocolError(message: string): TorusError {
  return new TorusError('TORUS_ERR_PEER_PROTOCOL', message);
}

/**
 * HELLO body: u16 versionMin, u16 versionMax, u16 flags, u16 0, u32
 * blockSize, nonce, u8+cluster id, u8+peer uuid, u8+incarnation.
 */
export function encodeHelloBody(h: Hello): Buffer {
  const cluster = Buffer.from(h.clusterId, 'utf8');
  const uuid = Buffer.from(h.peerUuid, 'utf8');
  const incarnation = Buffer.from(h.incarnation, 'utf8');
  assert(cluster.length <= CLUSTER_ID_BYTES_MAX, 'cluster id fits in HELLO');
  assert(uuid.length <= PEER_UUID_BYTES_MAX, 'peer uuid fits in HELLO');
  assert(incarnation.length <= INCARNATION_BYTES_MAX, 'incarnation fits in HELLO');
  assert(h.nonce.length === NONCE_BYTES, 'nonce has NONCE_BYTES');
  const body = Buffer.alloc(HELLO_FIXED_BYTES + 3 + cluster.length + uuid.length + incarnation.length);
  body.writeUInt16BE(h.versionMin, 0);
  body.writeUInt16BE(h.versionMax, 2);
  body.writeUInt16BE(h.flags, 4);
  body.writeUInt32BE(h.blockSize, 8);
  h.nonce.copy(body, 12);
  let at = HELLO_FIXED_BYTES;
  body[at++] = cluster.length;
  at += cluster.copy(body, at);
  body[at++] = uuid.length;
  at += uuid.copy(body, at);
  body[at++] = incarnation.length;
  incarnation.copy(body, at);
  return body;
}

/**
 * The version range of a HELLO, read before anything else in it: the only
 * fields every protocol version keeps in place, so that a peer of another
 * version is refused naming both ranges rather than for a field it lacks.
 */
export function decodeHelloVersions(body: Buffer): { versionMin: number; versionMax: number } {
  if (body.length < 4) throw protocolError('HELLO is too short');
  return { versionMin: body.readUInt16BE(0), versionMax: body.readUInt16BE(2) };
}

/**
 * Decodes a HELLO body; a server HELLO ends with its proof. `signed` is the
 * body without the proof, the bytes the proofs cover.
 */
export function decodeHelloBody(body: Buffer, withProof: boolean): { hello: Hello; proof: Buffer | null; signed: Buffer } {
  const proofBytes = withProof ? PROOF_BYTES : 0;
  if (body.length < HELLO_FIXED_BYTES + 3 + proofBytes) throw protocolError('HELLO is too short');
  if (body.readUInt16BE(6) !== 0) throw protocolError('HELLO reserved field is not zero');
  let at = HELLO_FIXED_BYTES;
  const clusterLength = body[at++]!;
  if (at + clusterLength + 1 + proofBytes > body.length) throw protocolError('HELLO cluster id overruns the message');
  const clusterId = body.toString('utf8', at, at + clusterLength);
  at += clusterLength;
  const uuidLength = body[at++]!;
  if (at + uuidLength + 1 + proofBytes > body.length) throw protocolError('HELLO peer uuid overruns the message');
  const peerUuid = body.toString('utf8', at, at + uuidLength);
  at += uuidLength;
  const incarnationLength = body[at++]!;
  if (at + incarnationLength + proofBytes !== body.length) throw protocolError('HELLO length does not match its fields');
  const incarnation = body.toString('utf8', at, at + incarnationLength);
  at += incarnationLength;
  const hello: Hello = {
    versionMin: body.readUInt16BE(0),
    versionMax: body.readUInt16BE(2),
    flags: body.readUInt16BE(4),
    blockSize: body.readUInt32BE(8),
    nonce: Buffer.from(body.subarray(12, 12 + NONCE_BYTES)),
    clusterId,
    peerUuid,
    incarnation,
  };
  return { hello, proof: withProof ? Buffer.from(body.subarray(at)) : null, signed: Buffer.from(body.subarray(0, at)) };
}

/** `magic kind 0 u16-length body crc32c`; the CRC covers everything before it. */
export function encodeHandshakeMessage(kind: HandshakeKind, body: Buffer): Buffer {
  assert(body.length <= HANDSHAKE_BODY_BYTES_MAX, 'handshake body within HANDSHAKE_BODY_BYTES_MAX');
  const msg = Buffer.allocUnsafe(HANDSHAKE_PREFIX_BYTES + body.length + HANDSHAKE_CRC_BYTES);
  HANDSHAKE_MAGIC.copy(msg, 0);
  msg[8] = kind;
  msg[9] = 0;
  msg.writeUInt16BE(body.length, 10);
  body.copy(msg, HANDSHAKE_PREFIX_BYTES);
  const end = HANDSHAKE_PREFIX_BYTES + body.length;
  msg.writeUInt32BE(crc32c(msg.subarray(0, end)), end);
  return msg;
}

/**
 * Takes the next handshake message off the connection's queue, or null until
 * it is complete. Throws TORUS_ERR_PEER_PROTOCOL for something that is not
 * the torus peer protocol and TORUS_ERR_PEER_CHECKSUM for a damaged message.
 */
export function readHandshakeMessage(queue: ByteQueue): HandshakeMessage | null {
  const magicSeen = Math.min(queue.length, HANDSHAKE_MAGIC.length);
  // Check the magic as soon as bytes arrive: an HTTP client or another
  // protocol is refused at once instead of waiting for a length it never sends.
  if (magicSeen > 0 && !queue.peek(magicSeen).equals(HANDSHAKE_MAGIC.subarray(0, magicSeen))) {
    throw protocolError('the remote side does not speak the torus peer protocol (bad magic)');
  }
  if (queue.length < HANDSHAKE_PREFIX_BYTES) return null;
  const prefix = queue.peek(HANDSHAKE_PREFIX_BYTES);
  const kind = prefix[8]!;
  const bodyLength = prefix.readUInt16BE(10);
  if (prefix[9] !== 0) throw protocolError('handshake reserved byte is not zero');
  if (bodyLength > HANDSHAKE_BODY_BYTES_MAX) throw protocolError(`handshake message of ${bodyLength} bytes is too long`);
  const total = HANDSHAKE_PREFIX_BYTES + bodyLength + HANDSHAKE_CRC_BYTES;
  if (queue.length < total) return null;
  const msg = queue.take(total);
  const end = HANDSHAKE_PREFIX_BYTES + bodyLength;
  if (crc32c(msg.subarray(0, end)) !== msg.readUInt32BE(end)) {
    throw new TorusError('TORUS_ERR_PEER_CHECKSUM', 'handshake message failed its checksum');
  }
  return { kind, body: Buffer.from(msg.subarray(HANDSHAKE_PREFIX_BYTES, end)) };
}
