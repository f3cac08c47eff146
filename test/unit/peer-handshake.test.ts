import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import { resolveSecret } from '../../src/peer/auth.js';
import { decodeRejectPayload, encodeRejectPayload } from '../../src/peer/codec.js';
import { decodeHelloBody, encodeHandshakeMessage, encodeHelloBody, readHandshakeMessage } from '../../src/peer/handshake-codec.js';
import { ClientHandshake, ServerHandshake, type HandshakeConfig, type HandshakeStep } from '../../src/peer/handshake.js';
import { HANDSHAKE_BODY_BYTES_MAX, HandshakeKind, NONCE_BYTES, PROOF_BYTES } from '../../src/peer/protocol.js';
import { RefusalLog } from '../../src/peer/refusal-log.js';
import { ManualClock } from '../helpers/metadata-contract.js';

const SECRET = Buffer.from('correct horse battery staple');

function cfg(over: Partial<HandshakeConfig> = {}): HandshakeConfig {
  return { clusterId: 'cluster-a', peerUuid: 'peer-1', incarnation: 'inc-1', secret: SECRET, blockSize: 4096, ...over };
}

/** A protocol 1 HELLO body, byte by byte as 0.1.0 sent it: no incarnation. */
function v1HelloBody(): Buffer {
  const cluster = Buffer.from('cluster-a');
  const uuid = Buffer.from('old-peer');
  const body = Buffer.alloc(12 + NONCE_BYTES + 2 + cluster.length + uuid.length);
  body.writeUInt16BE(1, 0);
  body.writeUInt16BE(1, 2);
  body.writeUInt16BE(1, 4); // HELLO_FLAG_AUTH
  body.writeUInt32BE(4096, 8);
  body.fill(7, 12, 12 + NONCE_BYTES);
  let at = 12 + NONCE_BYTES;
  body[at++] = cluster.length;
  at += cluster.copy(body, at);
  body[at++] = uuid.length;
  uuid.copy(body, at);
  return body;
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
    expect(r.client).toMatchObject({ kind: 'done', result: { version: 2, remotePeerUuid: 'peer-2', remoteIncarnation: 'inc-1' } });
    expect(r.server).toMatchObject({ kind: 'done', result: { version: 2, remotePeerUuid: 'peer-1', remoteIncarnation: 'inc-1' } });
  });

  it('never puts the secret on the wire', () => {
    const r = play(new ClientHandshake(cfg(), nonce()), new ServerHandshake(cfg(), nonce()));
    const wire = Buffer.concat(r.wire);
    expect(wire.includes(SECRET)).toBe(false);
    expect(wire.includes(Buffer.from('battery'))).toBe(false);
  });

  it('each side learns the other\'s incarnation, and the proofs cover it', () => {
    const r = play(new ClientHandshake(cfg({ incarnation: 'client-boot-7' }), nonce()), new ServerHandshake(cfg({ incarnation: 'server-boot-3' }), nonce()));
    expect(r.client).toMatchObject({ kind: 'done', result: { remoteIncarnation: 'server-boot-3' } });
    expect(r.server).toMatchObject({ kind: 'done', result: { remoteIncarnation: 'client-boot-7' } });
    // A man in the middle who rewrites the server's incarnation breaks the server proof.
    const c = new ClientHandshake(cfg(), nonce());
    const s = new ServerHandshake(cfg({ incarnation: 'server-boot-3' }), nonce());
    const [hello] = messages([c.hello()]);
    const [serverHello] = messages(s.receive(hello!).out);
    const body = Buffer.from(serverHello!.body);
    const at = body.indexOf(Buffer.from('server-boot-3'));
    body[at + 12] = '4'.charCodeAt(0);
    expect(failCode(c.receive({ kind: HandshakeKind.HELLO, body }))).toBe('TORUS_ERR_PEER_AUTH');
  });

  it('refuses a HELLO without an incarnation', () => {
    const s = new ServerHandshake(cfg(), nonce());
    const body = encodeHelloBody({ versionMin: 2, versionMax: 2, flags: 1, blockSize: 4096, nonce: nonce(), clusterId: 'cluster-a', peerUuid: 'x', incarnation: '' });
    expect(failCode(s.receive({ kind: HandshakeKind.HELLO, body }))).toBe('TORUS_ERR_PEER_PROTOCOL');
  });

  it('completes with no secret on either side (authentication turned off explicitly)', () => {
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

  it('refuses a protocol 1 client with TORUS_ERR_PEER_PROTOCOL naming both versions, in a REJECT it can read', () => {
    const s = new ServerHandshake(cfg(), nonce());
    const step = s.receive({ kind: HandshakeKind.HELLO, body: v1HelloBody() });
    expect(failCode(step)).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(step.kind === 'fail' && step.error.message).toBe('the client speaks protocol versions 1..1, this server 2..2');
    const [reject] = messages(step.out);
    expect(reject!.kind).toBe(HandshakeKind.REJECT);
    // The v1 layout: u16 code length, code, message.
    const code = reject!.body.toString('latin1', 2, 2 + reject!.body.readUInt16BE(0));
    expect(code).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(reject!.body.toString('utf8', 2 + code.length)).toContain('1..1');
  });

  it('a protocol 1 server\'s refusal of our HELLO says which versions this client speaks', () => {
    const c = new ClientHandshake(cfg(), nonce());
    c.hello();
    // What 0.1.0 answers a HELLO longer than it expects.
    const step = c.receive({ kind: HandshakeKind.REJECT, body: encodeRejectPayload('TORUS_ERR_PEER_PROTOCOL', 'HELLO length does not match its fields') });
    expect(failCode(step)).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(step.kind === 'fail' && step.error.message).toBe(
      'the server refused the HELLO: HELLO length does not match its fields (this client speaks protocol 2..2)',
    );
    expect(decodeRejectPayload(encodeRejectPayload('TORUS_ERR_PEER_AUTH', 'x')).code).toBe('TORUS_ERR_PEER_AUTH');
  });

  it('no common protocol version fails with TORUS_ERR_PEER_PROTOCOL, from the versions alone', () => {
    const s = new ServerHandshake(cfg(), nonce());
    // A future client: only the version fields are in place.
    const future = Buffer.concat([Buffer.from([0, 3, 0, 4]), Buffer.alloc(3)]);
    const step = s.receive({ kind: HandshakeKind.HELLO, body: future });
    expect(step.kind === 'fail' && step.error.message).toBe('the client speaks protocol versions 3..4, this server 2..2');
  });

  it('picks the highest common version with a newer client', () => {
    const s = new ServerHandshake(cfg(), nonce());
    const body = encodeHelloBody({ versionMin: 1, versionMax: 9, flags: 1, blockSize: 4096, nonce: nonce(), clusterId: 'cluster-a', peerUuid: 'x', incarnation: 'i' });
    const step = s.receive({ kind: HandshakeKind.HELLO, body });
    const [hello] = messages(step.out);
    const { hello: h } = decodeHelloBody(hello!.body, true);
    expect([h.versionMin, h.versionMax]).toEqual([2, 2]);
    expect(h.incarnation).toBe('inc-1');
  });

  it('refuses malformed and out-of-order messages', () => {
    expect(failCode(new ServerHandshake(cfg(), nonce()).receive({ kind: HandshakeKind.HELLO, body: Buffer.alloc(10) }))).toBe(
      'TORUS_ERR_PEER_PROTOCOL',
    );
    expect(failCode(new ServerHandshake(cfg(), nonce()).receive({ kind: HandshakeKind.PROOF, body: Buffer.alloc(PROOF_BYTES) }))).toBe(
      'TORUS_ERR_PEER_PROTOCOL',
    );
    const good = encodeHelloBody({ versionMin: 2, versionMax: 2, flags: 1, blockSize: 4096, nonce: nonce(), clusterId: 'cluster-a', peerUuid: 'x', incarnation: 'i' });
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
    const h = { versionMin: 1, versionMax: 4, flags: 1, blockSize: 1 << 20, nonce: nonce(), clusterId: 'clüster', peerUuid: 'a'.repeat(255), incarnation: 'b'.repeat(255) };
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

describe('authentication is on by default', () => {
  it('refuses an empty secret unless insecure is set explicitly', () => {
    let err: unknown;
    try {
      resolveSecret('', undefined, 'peer server');
    } catch (e) {
      err = e;
    }
    expect(isTorusError(err, 'TORUS_ERR_PEER_AUTH')).toBe(true);
    expect((err as Error).message).toContain('no cluster secret');
    expect(() => resolveSecret(Buffer.alloc(0), false, 'peer client')).toThrow(/no cluster secret/);
    expect(resolveSecret('', true, 'x').length).toBe(0);
    expect(resolveSecret('s3cret', undefined, 'x')).toEqual(Buffer.from('s3cret'));
  });
});

describe('refusal log', () => {
  function capture(level: string) {
    const lines: { level: number; address?: string; suppressed?: number; msg: string }[] = [];
    const logger = pino({ level }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    return { logger, lines, warns: () => lines.filter((l) => l.level === 40) };
  }

  it('warns once per address per minute, counting what it held back', async () => {
    const clock = new ManualClock();
    const { logger, lines, warns } = capture('debug');
    const log = new RefusalLog(logger, clock);
    for (let i = 0; i < 5; i++) log.refused('10.0.0.1', new Error('wrong secret'));
    log.refused('10.0.0.2', new Error('wrong secret'));
    expect(warns().map((l) => l.address)).toEqual(['10.0.0.1', '10.0.0.2']);
    expect(lines.filter((l) => l.level === 20).length).toBe(4);
    await clock.advance(59_999);
    log.refused('10.0.0.1', new Error('wrong secret'));
    expect(warns().length).toBe(2);
    await clock.advance(1);
    log.refused('10.0.0.1', new Error('wrong secret'));
    expect(warns().length).toBe(3);
    expect(warns()[2]).toMatchObject({ address: '10.0.0.1', suppressed: 5 });
  });

  it('remembers a bounded number of addresses', () => {
    const { logger, warns } = capture('warn');
    const log = new RefusalLog(logger, new ManualClock(), 60_000, 3);
    for (const a of ['a', 'b', 'c', 'd']) log.refused(a, new Error('x'));
    // 'a' was forgotten to make room for 'd': it may warn again early; 'd' may not.
    log.refused('a', new Error('x'));
    log.refused('d', new Error('x'));
    expect(warns().map((l) => l.address)).toEqual(['a', 'b', 'c', 'd', 'a']);
  });
});
