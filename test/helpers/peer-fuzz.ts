/**
 * Seeded fuzzing of the peer port (the "random bytes, a wrong
 * secret, an old protocol version"): garbage, damaged and truncated
 * handshakes, wrong secrets, protocol 1 HELLOs, and, after a real
 * handshake, streams of requests that are valid, subtly invalid (every
 * header field fair game, CRCs resealed so they reach validation), damaged
 * (bad CRCs, oversized lengths) or cut short. Everything derives from one
 * seed: each connection draws its own Rng when it starts, so the n-th
 * connection's bytes depend only on the seed.
 */
import net from 'node:net';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import { LIST_BLOCKS_MAX, META_REFS_MAX } from '../../src/model/replica-api.js';
import { TOKEN_MAX, VERSION_ABSENT, makeVersion } from '../../src/model/version.js';
import { encodeRequest, type PeerRequest } from '../../src/peer/codec.js';
import { encodeHandshakeMessage, encodeHelloBody, readHandshakeMessage } from '../../src/peer/handshake-codec.js';
import { ClientHandshake } from '../../src/peer/handshake.js';
import { HANDSHAKE_MAGIC, HandshakeKind, NONCE_BYTES, Opcode, REQ, REQUEST_HEADER_BYTES } from '../../src/peer/protocol.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import { crc32c } from '../../src/util/crc32c.js';
import { Rng } from './nbd-fuzz.js';

export interface PeerFuzzTarget {
  readonly port: number;
  readonly blockSize: number;
  readonly clusterId: string;
  readonly secret: string;
  /** Volumes the fuzzer may touch; keep the good client's volume out of it (and several bytes away from these). */
  readonly volumes: readonly number[];
}

export interface PeerFuzzStats {
  connections: number;
  handshakesCompleted: number;
  framesSent: number;
}

const OPCODES = Object.values(Opcode);

function ref(rng: Rng, t: PeerFuzzTarget): BlockRef {
  return blockRef(rng.pick(t.volumes), 1 + rng.int(3), rng.chance(0.1) ? 2 ** 48 - 1 - rng.int(4) : rng.int(64));
}

function version(rng: Rng): number {
  return makeVersion(1 + rng.int(TOKEN_MAX), 1 + rng.int(2 ** 32 - 1));
}

/** A request that passes validation (the replica must only ever see such). */
function validRequest(rng: Rng, t: PeerFuzzTarget): PeerRequest {
  const ctx = { ringVersion: rng.chance(0.9) ? rng.int(10) : rng.int(2 ** 53) };
  const bs = t.blockSize;
  const offset = rng.int(bs);
  const length = rng.int(bs - offset + 1);
  const token = rng.int(TOKEN_MAX + 1);
  const stamp = () => {
    const v = version(rng);
    return { token, version: v, prev: rng.chance(0.3) ? VERSION_ABSENT : v - 1 - rng.int(Math.min(v, 1000)) };
  };
  switch (rng.pick(OPCODES)) {
    case Opcode.READ:
      return { opcode: Opcode.READ, ctx, ref: ref(rng, t), offset, length };
    case Opcode.WRITE:
      return { opcode: Opcode.WRITE, ctx, ref: ref(rng, t), offset, data: rng.bytes(length), stamp: stamp(), fua: rng.chance(0.5) };
    case Opcode.ZERO:
      return { opcode: Opcode.ZERO, ctx, ref: ref(rng, t), offset, length, stamp: stamp(), punch: rng.chance(0.5), fua: rng.chance(0.5) };
    case Opcode.INSTALL:
      return rng.chance(0.5)
        ? { opcode: Opcode.INSTALL, ctx, ref: ref(rng, t), copy: { state: 'data', version: version(rng), data: rng.bytes(bs) }, token, fua: rng.chance(0.5) }
        : { opcode: Opcode.INSTALL, ctx, ref: ref(rng, t), copy: { state: 'zero', version: version(rng), data: null }, token, fua: false };
    case Opcode.CONFIRM:
      return { opcode: Opcode.CONFIRM, ctx, ref: ref(rng, t), version: version(rng), digest: rng.u32(), token };
    case Opcode.META:
      return { opcode: Opcode.META, ctx, refs: Array.from({ length: rng.chance(0.05) ? META_REFS_MAX : rng.int(20) }, () => ref(rng, t)) };
    case Opcode.LIST: {
      const volumeId = rng.pick(t.volumes);
      return { opcode: Opcode.LIST, ctx, volumeId, after: rng.chance(0.5) ? null : blockRef(volumeId, 1, rng.int(64)), limit: 1 + rng.int(LIST_BLOCKS_MAX) };
    }
    case Opcode.VERIFY:
      return { opcode: Opcode.VERIFY, ctx, ref: ref(rng, t) };
    case Opcode.DROP:
      return { opcode: Opcode.DROP, ctx, ref: ref(rng, t), version: rng.chance(0.1) ? VERSION_ABSENT : version(rng), token };
    case Opcode.FENCE:
      return { opcode: Opcode.FENCE, ctx, volumeId: rng.pick(t.volumes), token };
    case Opcode.FLUSH:
      return { opcode: Opcode.FLUSH, ctx };
    case Opcode.DELETE_VOLUME:
      return { opcode: Opcode.DELETE_VOLUME, ctx, volumeId: rng.pick(t.volumes) };
    case Opcode.USAGE:
      return { opcode: Opcode.USAGE, ctx };
    default:
      return { opcode: Opcode.HELLO, ctx };
  }
}

/**
 * A request that breaks exactly one rule beyond its encoding (checkRequest's
 * rules: ranges, version order, counts, sizes): well framed, so it must be
 * answered with an error and never reach the replica.
 */
function edgyRequest(rng: Rng, t: PeerFuzzTarget): PeerRequest {
  const ctx = { ringVersion: rng.int(10) };
  const bs = t.blockSize;
  const v = version(rng);
  const badStamp = () => ({ token: 1, version: rng.pick([v, v - 1, VERSION_ABSENT]), prev: v });
  const overflow = () => {
    const offset = rng.int(bs + 1);
    return { offset, length: bs - offset + 1 };
  };
  switch (rng.int(10)) {
    case 0:
      return { opcode: Opcode.WRITE, ctx, ref: ref(rng, t), offset: 0, data: rng.bytes(1 + rng.int(16)), stamp: badStamp(), fua: false };
    case 1:
      return { opcode: Opcode.ZERO, ctx, ref: ref(rng, t), offset: 0, length: 1, stamp: badStamp(), punch: rng.chance(0.5), fua: false };
    case 2: {
      const { offset, length } = overflow();
      return rng.chance(0.5)
        ? { opcode: Opcode.READ, ctx, ref: ref(rng, t), offset, length }
        : { opcode: Opcode.WRITE, ctx, ref: ref(rng, t), offset, data: rng.bytes(length), stamp: { token: 1, version: v, prev: VERSION_ABSENT }, fua: false };
    }
    case 3:
      return { opcode: Opcode.INSTALL, ctx, ref: ref(rng, t), copy: { state: 'data', version: v, data: rng.bytes(rng.pick([0, 1, bs - 1, bs + 1])) }, token: 1, fua: false };
    case 4:
      return { opcode: Opcode.META, ctx, refs: Array.from({ length: META_REFS_MAX + 1 }, () => ref(rng, t)) };
    case 5:
      return { opcode: Opcode.LIST, ctx, volumeId: t.volumes[0]!, after: null, limit: rng.pick([0, LIST_BLOCKS_MAX + 1]) };
    case 6:
      return { opcode: Opcode.LIST, ctx, volumeId: t.volumes[0]!, after: blockRef(t.volumes[1]!, 1, 0), limit: 10 };
    case 7:
      return { opcode: Opcode.CONFIRM, ctx, ref: ref(rng, t), version: VERSION_ABSENT, digest: 0, token: 1 };
    case 8:
      return rng.chance(0.5) ? { opcode: Opcode.FENCE, ctx, volumeId: 0, token: 1 } : { opcode: Opcode.DELETE_VOLUME, ctx, volumeId: 0 };
    default:
      return { opcode: Opcode.ZERO, ctx, ref: ref(rng, t), ...overflow(), stamp: { token: 1, version: v, prev: v - 1 }, punch: false, fua: false };
  }
}

function frameOf(req: PeerRequest, id: number): Buffer {
  const { header, payload } = encodeRequest(req, id);
  return Buffer.concat([header, payload]);
}

function resealHeader(frame: Buffer): void {
  frame.writeUInt32BE(crc32c(frame.subarray(0, REQ.HEADER_CRC)), REQ.HEADER_CRC);
}

/** Header fields a mutation picks from, with values near their edges. */
const FIELDS: readonly { at: number; bytes: 1 | 4 | 8 }[] = [
  { at: REQ.OPCODE, bytes: 1 },
  { at: REQ.FLAGS, bytes: 1 },
  { at: REQ.COPY_STATE, bytes: 1 },
  { at: REQ.RESERVED, bytes: 1 },
  { at: REQ.RING_VERSION, bytes: 8 },
  { at: REQ.REF, bytes: 4 },
  { at: REQ.REF + 4, bytes: 4 },
  { at: REQ.REF + 8, bytes: 4 },
  { at: REQ.REF + 12, bytes: 4 },
  { at: REQ.OFFSET, bytes: 4 },
  { at: REQ.LENGTH, bytes: 4 },
  { at: REQ.TOKEN, bytes: 8 },
  { at: REQ.VERSION, bytes: 8 },
  { at: REQ.PREV, bytes: 8 },
];

/** A well-framed request with one or more header fields changed: validation must judge it. */
function mutatedRequest(rng: Rng, t: PeerFuzzTarget, id: number): Buffer {
  const frame = frameOf(validRequest(rng, t), id);
  const n = 1 + rng.int(3);
  for (let i = 0; i < n; i++) {
    const f = rng.pick(FIELDS);
    if (f.bytes === 1) {
      frame[f.at] = rng.chance(0.5) ? rng.int(16) : rng.int(256);
    } else if (f.bytes === 4) {
      frame.writeUInt32BE(rng.pick([0, 1, t.blockSize - 1, t.blockSize, t.blockSize + 1, 0x7fffffff, 0xffffffff, rng.u32()]), f.at);
    } else {
      const high = rng.pick([0, 1, 2 ** 21 - 1, 2 ** 21, 0xffffffff, rng.u32()]);
      frame.writeUInt32BE(high, f.at);
      frame.writeUInt32BE(rng.pick([0, 1, 0xffffffff, rng.u32()]), f.at + 4);
    }
  }
  resealHeader(frame);
  return frame;
}

/** A frame that breaks the framing: the server answers what it can and closes. */
function damagedFrame(rng: Rng, t: PeerFuzzTarget, id: number): Buffer {
  const frame = frameOf(validRequest(rng, t), id);
  switch (rng.int(4)) {
    case 0: // header CRC
      frame[rng.int(REQUEST_HEADER_BYTES)]! ^= 1 << rng.int(8);
      return frame;
    case 1: // payload CRC (or the header, when there is no payload)
      frame[REQUEST_HEADER_BYTES + rng.int(Math.max(1, frame.length - REQUEST_HEADER_BYTES))]! ^= 1;
      return frame;
    case 2: // an oversized length, resealed so only the size is wrong
      frame.writeUInt32BE(rng.pick([0xffffffff, 64 * 1024 * 1024 + 1, t.blockSize * 64 + rng.int(1000)]), REQ.PAYLOAD_LENGTH);
      resealHeader(frame);
      return frame.subarray(0, REQUEST_HEADER_BYTES);
    default: // wrong magic (a protocol 1 frame, or anything)
      frame.writeUInt32BE(rng.pick([0x54505251, rng.u32()]), REQ.MAGIC);
      resealHeader(frame);
      return frame;
  }
}

function requestStream(rng: Rng, t: PeerFuzzTarget, stats: PeerFuzzStats): Buffer[] {
  const parts: Buffer[] = [];
  const n = 1 + rng.int(16);
  for (let i = 0; i < n; i++) {
    const id = rng.chance(0.9) ? i + 1 : rng.u32();
    const r = rng.int(20);
    let frame =
      r < 7
        ? frameOf(validRequest(rng, t), id)
        : r < 10
          ? frameOf(edgyRequest(rng, t), id)
          : r < 17
            ? mutatedRequest(rng, t, id)
            : r < 19
              ? damagedFrame(rng, t, id)
              : rng.bytes(rng.int(200));
    // Sometimes cut the last frame short: the server waits for the rest until the client goes.
    if (i === n - 1 && rng.chance(0.2)) frame = frame.subarray(0, rng.int(frame.length));
    parts.push(frame);
    stats.framesSent++;
  }
  return parts;
}

function v1Hello(t: PeerFuzzTarget, rng: Rng): Buffer {
  const cluster = Buffer.from(t.clusterId);
  const uuid = Buffer.from('v1-peer');
  const body = Buffer.alloc(12 + NONCE_BYTES + 2 + cluster.length + uuid.length);
  body.writeUInt16BE(1, 0);
  body.writeUInt16BE(1, 2);
  body.writeUInt16BE(1, 4);
  body.writeUInt32BE(t.blockSize, 8);
  rng.bytes(NONCE_BYTES).copy(body, 12);
  body[12 + NONCE_BYTES] = cluster.length;
  cluster.copy(body, 13 + NONCE_BYTES);
  body[13 + NONCE_BYTES + cluster.length] = uuid.length;
  uuid.copy(body, 14 + NONCE_BYTES + cluster.length);
  return encodeHandshakeMessage(HandshakeKind.HELLO, body);
}

/** A HELLO with random fields (sometimes a good CRC, so the fields are judged). */
function garbledHello(t: PeerFuzzTarget, rng: Rng): Buffer {
  const body = encodeHelloBody({
    versionMin: rng.pick([0, 1, 2, 3, rng.int(0x10000)]),
    versionMax: rng.pick([1, 2, 9, rng.int(0x10000)]),
    flags: rng.pick([0, 1, 2, 0x8001, rng.int(0x10000)]),
    blockSize: rng.pick([t.blockSize, t.blockSize * 2, 0, rng.u32()]),
    nonce: rng.bytes(NONCE_BYTES),
    clusterId: rng.pick([t.clusterId, 'other-cluster', '']),
    peerUuid: rng.pick(['fuzz', '', 'x'.repeat(255)]),
    incarnation: rng.pick(['inc', '']),
  });
  const trimmed = rng.chance(0.3) ? body.subarray(0, rng.int(body.length)) : body;
  const msg = Buffer.from(encodeHandshakeMessage(rng.chance(0.9) ? HandshakeKind.HELLO : (rng.int(256) as HandshakeKind), trimmed));
  if (rng.chance(0.2)) msg[HANDSHAKE_MAGIC.length + 2 + rng.int(msg.length - HANDSHAKE_MAGIC.length - 2)]! ^= 1;
  if (rng.chance(0.1)) msg.writeUInt16BE(rng.int(0x10000), HANDSHAKE_MAGIC.length + 2);
  return msg;
}

type Plan =
  | { kind: 'blind'; chunks: Buffer[] }
  | { kind: 'handshake'; secret: string; then: Buffer[] };

function plan(rng: Rng, t: PeerFuzzTarget, stats: PeerFuzzStats): Plan {
  switch (rng.int(10)) {
    case 0:
      return { kind: 'blind', chunks: [rng.chance(0.5) ? rng.bytes(rng.int(300)) : Buffer.concat([HANDSHAKE_MAGIC, rng.bytes(rng.int(300))])] };
    case 1: {
      const hello = garbledHello(t, rng);
      return { kind: 'blind', chunks: [rng.chance(0.3) ? hello.subarray(0, rng.int(hello.length)) : hello] };
    }
    case 2:
      return { kind: 'blind', chunks: [v1Hello(t, rng)] };
    case 3:
      return { kind: 'handshake', secret: rng.pick(['wrong secret', t.secret + 'x', 'x']), then: [] };
    default:
      return { kind: 'handshake', secret: t.secret, then: requestStream(rng, t, stats) };
  }
}

/** Runs one connection's plan; resolves once the socket is closed (by either side). */
async function fuzzConnection(t: PeerFuzzTarget, rng: Rng, stats: PeerFuzzStats): Promise<void> {
  const p = plan(rng, t, stats);
  const socket = net.connect({ port: t.port, host: '127.0.0.1' });
  socket.on('error', () => {
    // resets are expected
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const connected = await new Promise<boolean>((resolve) => {
    socket.once('connect', () => resolve(true));
    socket.once('close', () => resolve(false));
  });
  const hangUp = () => {
    // Give the server a bounded chance to answer or hang up, then hang up ourselves.
    if (rng.chance(0.5)) socket.end();
    const timer = setTimeout(() => socket.destroy(), 20 + rng.int(150));
    void closed.then(() => clearTimeout(timer));
  };
  if (!connected) return;
  if (p.kind === 'blind') {
    for (const c of p.chunks) socket.write(c);
    hangUp();
    await closed;
    return;
  }
  const hs = new ClientHandshake(
    { clusterId: t.clusterId, peerUuid: 'fuzzer', incarnation: `fuzz-${rng.u32()}`, secret: Buffer.from(p.secret), blockSize: t.blockSize },
    rng.bytes(NONCE_BYTES),
  );
  const queue = new ByteQueue();
  let done = false;
  socket.on('data', (chunk: Buffer) => {
    if (done) return; // replies are not checked: the server surviving is
    queue.push(chunk);
    try {
      for (let msg = readHandshakeMessage(queue); msg !== null && !done; msg = readHandshakeMessage(queue)) {
        const step = hs.receive(msg);
        for (const out of step.out) socket.write(out);
        if (step.kind === 'fail') {
          done = true;
          hangUp();
        } else if (step.kind === 'done') {
          done = true;
          stats.handshakesCompleted++;
          for (const c of p.then) socket.write(c);
          hangUp();
        }
      }
    } catch {
      done = true;
      socket.destroy();
    }
  });
  socket.write(hs.hello());
  // A server that never answers the handshake is a failure the caller sees as a slow run; bound it anyway.
  const timer = setTimeout(() => socket.destroy(), 5_000);
  await closed;
  clearTimeout(timer);
}

export interface PeerFuzzRun {
  /** Stop starting connections after this (Date.now() time), once connectionsMin have started. */
  readonly deadline: number;
  /** Connections started whatever the time: a loaded machine still covers every kind of input. */
  readonly connectionsMin: number;
  readonly connectionsMax: number;
  /** Connections open at once. */
  readonly concurrency: number;
}

export async function fuzzPeerPort(t: PeerFuzzTarget, rng: Rng, run: PeerFuzzRun): Promise<PeerFuzzStats> {
  const stats: PeerFuzzStats = { connections: 0, handshakesCompleted: 0, framesSent: 0 };
  const worker = async () => {
    while (stats.connections < run.connectionsMax && (stats.connections < run.connectionsMin || Date.now() < run.deadline)) {
      const local = new Rng(rng.u32());
      stats.connections++;
      await fuzzConnection(t, local, stats);
    }
  };
  await Promise.all(Array.from({ length: run.concurrency }, () => worker()));
  return stats;
}
