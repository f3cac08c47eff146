import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import { decodeHelloBody, encodeHandshakeMessage, encodeHelloBody, readHandshakeMessage } from '../../src/peer/handshake-codec.js';
import { ClientHandshake, ServerHandshake, type HandshakeConfig, type HandshakeStep } from '../../src/peer/handshake.js';
import { HANDSHAKE_BODY_BYTES_MAX, HandshakeKind, NONCE_BYTES, PROOF_BYTES } from '../../src/peer/protocol.js';

const SECRET = Buffer.from('correct horse battery staple');

function cfg(over: Partial<HandshakeConfig> = {}): HandshakeConfig {
  return { clusterId: 'cluster-a', peerUuid: 'peer-1', secret: SECRET, blockSize: 4096, ...over };
}

let nonceSeed = 0;
function nonce(): Buffer {
  return Buffer.alloc(NONCE_BYTES, ++nonceSeed);
}

/** Parses the messages of a step as the other side would read them off the wire. */
function messages(bufs: Buffer[]) {
  const q = new ByteQueue();
  for (const b of bufs) q.push(b);
  const out = [];
  for (let m = readHandshakeMessage(q); m !== null; m = readHandshakeMessage(q)) out.push(m);
  expect(q.length).toBe(0);
  return out;
}

interface Run {
  client: HandshakeStep | null;
  server: HandshakeStep | null;
  wire: Buffer[];
}

/** Plays a whole handshake between the two state machines, recording every byte sent. */
function play(c: ClientHandshake, s: ServerHandshake): Run {
  const wire: Buffer[] = [];
  let toServer = [c.hello()];
  let clientStep: HandshakeStep | null = null;
  let serverStep: HandshakeStep | null = null;
  for (let round = 0; round < 4; round++) {
    wire.push(...toServer);
    const toClient: Buffer[] = [];
    for (const m of messages(toServer)) {
      serverStep = s.receive(m);
      toClient.push(...serverStep.out);
      if (serverStep.kind !== 'continue') break;
    }
    toServer = [];
    wire.push(...toClient);
    if (toClient.length === 0) break;
    for (const m of messages(toClient)) {
      clientStep = c.receive(m);
      toServer.push(...clientStep.out);
      if (clientStep.kind !== 'continue') break;
    }
    if (clientStep?.kind === 'fail') {
      // The client's REJECT reaches the server.
      wire.push(...toServer);
      for (const m of messages(toServer)) serverStep = s.receive(m);
      break;
    }
    if (clientStep?.kind === 'done' || serverStep?.kind === 'fail') break;
  }
  return { client: clientStep, server: serverStep, wire };
}

function failCode(step: HandshakeStep | null): string | undefined {
  return step?.kind === 'fail' ? step.error.code : undefined;
}

describe('peer handshake', () => {
  it('completes when both sides share the secret', () => {
    const r = play(new ClientHandshake(cfg(), nonce()), new ServerHandshake(cfg({ peerUuid: 'peer-2' }), nonce()));
    expect(r.client).toMatchObject({ kind: 'done', result: { version: 1, remotePeerUuid: 'peer-2' } });
    expect(r.server).toMatchObject({ kind: 'done', result: { version: 1, remotePeerUuid: 'peer-1' } });
  });

  it('never puts the secret on the wire', () => {
    const r = play(new ClientHandshake(cfg(), nonce()), new ServerHandshake(cfg(), nonce()));
    const wire = Buffer.concat(r.wire);
    expect(wire.includes(SECRET)).toBe(false);
    expect(wire.includes(Buffer.from('battery'))).toBe(false);
  });

  it('completes with no secret on either side', () => {
    const none = Buffer.alloc(0);
    const r = play(new ClientHandshake(cfg({ secret: none }), nonce()), new ServerHandshake(cfg({ secret: none }), nonce()));
    expect(r.client?.kind).toBe('done');
    expect(r.server?.kind).toBe('done');
  });

  it('a wrong secret fails on both sides with TORUS_ERR_PEER_AUTH', () => {
    const r = play(new ClientHandshake(cfg({ secret: Buffer.from('wrong') }), nonce()), new ServerHandshake(cfg(), nonce()));
    expect(failCode(r.client)).toBe('TORUS_ERR_PEER_AUTH');
    // The client's REJECT tells the server why.
    expect(failCode(r.server)).toBe('TORUS_ERR_PEER_AUTH');
  });

  it('the server checks the client proof itself', () => {
    const c = new ClientHandshake(cfg(), nonce());
    const s = new ServerHandshake(cfg(), nonce());
    const [hello] = messages([c.hello()]);
    const step = s.receive(hello!);
    expect(step.kind).toBe('continue');
    const forged = s.receive({ kind: HandshakeKind.PROOF, body: Buffer.alloc(PROOF_BYTES, 0xaa) });
    expect(failCode(forged)).toBe('TORUS_ERR_PEER_AUTH');
    const [reject] = messages(forged.out);
    expect(reject!.kind).toBe(HandshakeKind.REJECT);
  });

  it('a proof from one session is worthless in another (fresh nonces)', () => {
    const c1 = new ClientHandshake(cfg(), nonce());
    const s1 = new ServerHandshake(cfg(), nonce());
    const [h1] = messages([c1.hello()]);
    const [serverHello1] = messages(s1.receive(h1!).out);
    const [proof1] = messages(c1.receive(serverHello1!).out);
    expect(proof1!.kind).toBe(HandshakeKind.PROOF);
    // Replay the same client HELLO and proof to a server with another nonce.
    const s2 = new ServerHandshake(cfg(), nonce());
    s2.receive(h1!);
    expect(failCode(s2.receive(proof1!))).toBe('TORUS_ERR_PEER_AUTH');
  });

  it('a secret on one side only fails with TORUS_ERR_PEER_AUTH, either way round', () => {
    const none = Buffer.alloc(0);
    const a = play(new ClientHandshake(cfg({ secret: none }), nonce()), new ServerHandshake(cfg(), nonce()));
    expect(failCode(a.server)).toBe('TORUS_ERR_PEER_AUTH');
    expect(failCode(a.client)).toBe('TORUS_ERR_PEER_AUTH');
    const b = play(new ClientHandshake(cfg(), nonce()), new ServerHandshake(cfg({ secret: none }), nonce()));
    expect(failCode(b.server)).toBe('TORUS_ERR_PEER_AUTH');
    expect(failCode(b.client)).toBe('TORUS_ERR_PEER_AUTH');
  });

  it('another cluster id fails with TORUS_ERR_PEER_AUTH', () => {
    const r = play(new ClientHandshake(cfg({ clusterId: 'cluster-b' }), nonce()), new ServerHandshake(cfg(), nonce()));
    expect(failCode(r.server)).toBe('TORUS_ERR_PEER_AUTH');
    expect(failCode(r.client)).toBe('TORUS_ERR_PEER_AUTH');
    expect(r.client?.kind === 'fail' && r.client.error.message).toContain('cluster-a');
  });

  it('another block size fails with TORUS_ERR_PEER_PROTOCOL', () => {
    const r = play(new ClientHandshake(cfg({ blockSize: 8192 }), nonce()), new ServerHandshake(cfg(), nonce()));
    expect(failCode(r.client)).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('no common protocol version fails with TORUS_ERR_PEER_PROTOCOL', () => {
    const s = new ServerHandshake(cfg(), nonce());
    const body = encodeHelloBody({ versionMin: 2, versionMax: 3, flags: 1, blockSize: 4096, nonce: nonce(), clusterId: 'cluster-a', peerUuid: 'x' });
    expect(failCode(s.receive({ kind: HandshakeKind.HELLO, body }))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('picks the highest common version with a newer client', () => {
    const s = new ServerHandshake(cfg(), nonce());
    const body = encodeHelloBody({ versionMin: 1, versionMax: 9, flags: 1, blockSize: 4096, nonce: nonce(), clusterId: 'cluster-a', peerUuid: 'x' });
    const step = s.receive({ kind: HandshakeKind.HELLO, body });
    const [hello] = messages(step.out);
    const { hello: h } = decodeHelloBody(hello!.body, true);
    expect([h.versionMin, h.versionMax]).toEqual([1, 1]);
  });

  it('refuses malformed and out-of-order messages', () => {
    expect(failCode(new ServerHandshake(cfg(), nonce()).receive({ kind: HandshakeKind.HELLO, body: Buffer.alloc(10) }))).toBe(
      'TORUS_ERR_PEER_PROTOCOL',
    );
    expect(failCode(new ServerHandshake(cfg(), nonce()).receive({ kind: HandshakeKind.PROOF, body: Buffer.alloc(PROOF_BYTES) }))).toBe(
      'TORUS_ERR_PEER_PROTOCOL',
    );
    const good = encodeHelloBody({ versionMin: 1, versionMax: 1, flags: 1, blockSize: 4096, nonce: nonce(), clusterId: 'cluster-a', peerUuid: 'x' });
    const longer = Buffer.concat([good, Buffer.from([0])]);
    expect(failCode(new ServerHandshake(cfg(), nonce()).receive({ kind: HandshakeKind.HELLO, body: longer }))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const flagged = Buffer.from(good);
    flagged.writeUInt16BE(0x8001, 4);
    expect(failCode(new ServerHandshake(cfg(), nonce()).receive({ kind: HandshakeKind.HELLO, body: flagged }))).toBe('TORUS_ERR_PEER_PROTOCOL');
    const c = new ClientHandshake(cfg(), nonce());
    c.hello();
    expect(failCode(c.receive({ kind: HandshakeKind.READY, body: Buffer.alloc(0) }))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('round-trips HELLO bodies', () => {
    const h = { versionMin: 1, versionMax: 4, flags: 1, blockSize: 1 << 20, nonce: nonce(), clusterId: 'clüster', peerUuid: 'a'.repeat(255) };
    expect(decodeHelloBody(encodeHelloBody(h), false).hello).toEqual(h);
  });
});

describe('handshake message framing', () => {
  function code(bytes: Buffer): string | undefined {
    const q = new ByteQueue();
    q.push(bytes);
    try {
      readHandshakeMessage(q);
      return undefined;
    } catch (err) {
      return isTorusError(err) ? err.code : String(err);
    }
  }

  it('refuses a stranger from its first bytes', () => {
    expect(code(Buffer.from('GET / HTTP/1.1\r\n'))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(Buffer.from('TORX'))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(code(Buffer.from('TORU'))).toBeUndefined(); // a prefix of the magic: wait for more
  });

  it('detects a damaged message', () => {
    const msg = encodeHandshakeMessage(HandshakeKind.PROOF, Buffer.alloc(PROOF_BYTES, 1));
    // (A damaged length byte may instead leave the reader waiting; the handshake timeout ends that.)
    for (const i of [9, 12, 20, msg.length - 1]) {
      const bad = Buffer.from(msg);
      bad[i]! ^= 4;
      expect(code(bad), `byte ${i}`).toMatch(/TORUS_ERR_PEER_(CHECKSUM|PROTOCOL)/);
    }
    const bad = Buffer.from(msg);
    bad[20]! ^= 4;
    expect(code(bad)).toBe('TORUS_ERR_PEER_CHECKSUM');
  });

  it('refuses an oversized message from its length alone', () => {
    const msg = Buffer.from(encodeHandshakeMessage(HandshakeKind.HELLO, Buffer.alloc(4)));
    msg.writeUInt16BE(HANDSHAKE_BODY_BYTES_MAX + 1, 10);
    expect(code(msg.subarray(0, 12))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('waits for a message split across chunks', () => {
    const msg = encodeHandshakeMessage(HandshakeKind.READY, Buffer.alloc(0));
    const q = new ByteQueue();
    for (let i = 0; i < msg.length - 1; i++) {
      q.push(msg.subarray(i, i + 1));
      expect(readHandshakeMessage(q)).toBeNull();
    }
    q.push(msg.subarray(msg.length - 1));
    expect(readHandshakeMessage(q)).toEqual({ kind: HandshakeKind.READY, body: Buffer.alloc(0) });
  });
});
