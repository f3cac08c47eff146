/**
 * End to end, on real processes (issue 5): bad input on the peer port of a
 * real torusd, while the cluster's replicated I/O goes through it. Two
 * torusd peers, replication 2: a client writes and reads through peer A,
 * so every write reaches peer B over the peer protocol before it is
 * acknowledged, while this test sends B's peer port random bytes, HELLOs
 * proved with a wrong secret and protocol 1 HELLOs. Each is refused the way
 * the protocol says (dropped, or a REJECT with its code), B logs one warning
 * per remote address, and the replicated data stays right throughout and
 * after. Then the data dir: the copy of the cluster secret each peer keeps
 * (0600, the secret etcd holds, and it authenticates), and a data dir
 * written by a newer release refused at start with TORUS_ERR_DATA_DIR_NEWER,
 * left untouched.
 *
 * Each kind of bad input comes from its own loopback address (127.0.0.2-4;
 * A dials from 127.0.0.1): the refusal log counts per address, so each kind
 * gets its own warning. Reproduce a failure with TORUS_E2E_PEER_SEED=<seed>.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handshakeProof } from '../../src/peer/auth.js';
import { decodeRejectPayload } from '../../src/peer/codec.js';
import { decodeHelloBody, encodeHandshakeMessage, encodeHelloBody, readHandshakeMessage, type HandshakeMessage } from '../../src/peer/handshake-codec.js';
import {
  HANDSHAKE_MAGIC,
  HELLO_FLAG_AUTH,
  HandshakeKind,
  NONCE_BYTES,
  PROOF_LABEL_CLIENT,
  PROTOCOL_VERSION_MAX,
  PROTOCOL_VERSION_MIN,
} from '../../src/peer/protocol.js';
import type { ClusterConfig } from '../../src/model/records.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import { VERSION } from '../../src/version.js';
import { ensureBuilt } from '../helpers/build.js';
import { TestCluster } from '../helpers/cluster.js';
import { testPeerClient } from '../helpers/peer-harness.js';
import { fuzzSeed, Rng } from '../helpers/nbd-fuzz.js';
import type { NbdTestClient } from '../helpers/nbd-test-client.js';
import { httpGet, nbdConnect, volumeList, type LogLine, type TorusdHandle } from '../helpers/torusd.js';
import { waitFor } from '../helpers/wait.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const VOLUME_BYTES = 8 * MiB;
/** Where each kind of bad input comes from (see the header). */
const FROM = { garbage: '127.0.0.2', wrongSecret: '127.0.0.3', oldProtocol: '127.0.0.4' } as const;
/** Bad connections of each kind at least, and at most (the loops run while the writer does). */
const BAD_PER_KIND_MIN = 10;
const BAD_PER_KIND_MAX = 200;
/** Write-and-read-back rounds through A while B is under bad input. */
const WRITER_ROUNDS_MIN = 40;
/** A refused connection must be closed by the server within this. */
const CLOSE_TIMEOUT_MS = 3_000;

const seed = fuzzSeed('TORUS_E2E_PEER_SEED');
let cluster: TestCluster | undefined;
let a: TorusdHandle;
let b: TorusdHandle;
let config: ClusterConfig;
let volumeId = 0;
/** What the volume must hold: everything the writer wrote. */
const model = Buffer.alloc(VOLUME_BYTES);

beforeAll(async () => {
  ensureBuilt();
  cluster = await TestCluster.start({ peers: 2, blockSize: '64KiB', replication: 2, size: '256MiB' });
  [a, b] = cluster.peers as [TorusdHandle, TorusdHandle];
  config = JSON.parse((await cluster.etcdGet('config'))!) as ClusterConfig;
  expect(config.blockSize).toBe(BLOCK);
  volumeId = (await cluster.createVolume('vol', `${VOLUME_BYTES / MiB}MiB`)).id;
});

afterAll(async () => {
  await cluster?.destroy();
});

/** What a connection to the peer port saw before it was closed. */
interface Exchange {
  /** Handshake messages from the server, in order. */
  readonly messages: HandshakeMessage[];
  /** Bytes from the server that were not a whole handshake message. */
  readonly leftover: number;
}

/**
 * Connects to `port` from `from`, sends `first`, answers each server
 * message with what `answer` returns, and resolves once the server has
 * closed or reset the connection. Our side stays open (allowHalfOpen), so
 * the close is the server's doing; fails if it has not come within
 * CLOSE_TIMEOUT_MS.
 */
function exchange(port: number, from: string, first: Buffer, answer: (m: HandshakeMessage) => Buffer | null = () => null): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: from, allowHalfOpen: true });
    const queue = new ByteQueue();
    const messages: HandshakeMessage[] = [];
    let serverClosed = false;
    const timer = setTimeout(() => socket.destroy(new Error(`the server did not close a refused connection from ${from} within ${CLOSE_TIMEOUT_MS} ms`)), CLOSE_TIMEOUT_MS);
    socket.on('data', (chunk: Buffer) => {
      queue.push(chunk);
      for (let m = readHandshakeMessage(queue); m !== null; m = readHandshakeMessage(queue)) {
        messages.push(m);
        const out = answer(m);
        if (out !== null) socket.write(out);
      }
    });
    socket.on('end', () => {
      serverClosed = true;
      socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A reset is the server dropping us too (it may not wait for what we sent).
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') serverClosed = true;
      else if (!serverClosed) reject(err);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (serverClosed) resolve({ messages, leftover: queue.length });
      else reject(new Error(`connection from ${from} closed without the server closing it`));
    });
    socket.write(first);
  });
}

/** Random bytes that never start like the handshake magic: refused at the first byte. */
function garbage(rng: Rng): Buffer {
  const blob = rng.bytes(16 + rng.int(4096));
  if (blob[0] === HANDSHAKE_MAGIC[0]) blob[0]! ^= 0xff;
  return blob;
}

function hello(rng: Rng, peerUuid: string, versionMin: number, versionMax: number, incarnation: string): Buffer {
  return encodeHelloBody({ versionMin, versionMax, flags: HELLO_FLAG_AUTH, blockSize: config.blockSize, nonce: rng.bytes(NONCE_BYTES), clusterId: config.id, peerUuid, incarnation });
}

function rejectOf(x: Exchange): { code: string; message: string } {
  const last = x.messages[x.messages.length - 1];
  expect(last?.kind, `the last message is a REJECT: ${JSON.stringify(x.messages.map((m) => m.kind))}`).toBe(HandshakeKind.REJECT);
  const err = decodeRejectPayload(last!.body);
  return { code: err.code, message: err.message };
}

/** Random bytes: dropped at once, nothing answered. */
async function sendGarbage(port: number, rng: Rng): Promise<void> {
  const x = await exchange(port, FROM.garbage, garbage(rng));
  expect(x.messages).toEqual([]);
  expect(x.leftover).toBe(0);
}

/**
 * A HELLO of this cluster and block size, then a PROOF made with a wrong
 * secret: B answers the HELLO (it cannot tell yet), then refuses the proof.
 */
async function sendWrongSecret(port: number, rng: Rng): Promise<void> {
  const mine = hello(rng, 'intruder', PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX, `intruder-${rng.u32()}`);
  const x = await exchange(port, FROM.wrongSecret, encodeHandshakeMessage(HandshakeKind.HELLO, mine), (m) => {
    if (m.kind !== HandshakeKind.HELLO) return null;
    const { signed } = decodeHelloBody(m.body, true);
    return encodeHandshakeMessage(HandshakeKind.PROOF, handshakeProof(Buffer.from('not the cluster secret'), PROOF_LABEL_CLIENT, mine, signed));
  });
  expect(x.messages.map((m) => m.kind)).toEqual([HandshakeKind.HELLO, HandshakeKind.REJECT]);
  expect(decodeHelloBody(x.messages[0]!.body, true).hello.peerUuid).toBe(b.uuid);
  expect(rejectOf(x)).toEqual({ code: 'TORUS_ERR_PEER_AUTH', message: 'the client (peer intruder) does not know the cluster secret' });
}

/** 0.1.0's HELLO (protocol 1: versions 1..1, no incarnation field): refused naming both ranges. */
async function sendOldProtocol(port: number, rng: Rng): Promise<void> {
  // The protocol 2 layout with an empty incarnation, less its length byte, is the protocol 1 layout.
  const v2 = hello(rng, 'old-peer', 1, 1, '');
  const x = await exchange(port, FROM.oldProtocol, encodeHandshakeMessage(HandshakeKind.HELLO, v2.subarray(0, v2.length - 1)));
  expect(x.messages.map((m) => m.kind)).toEqual([HandshakeKind.REJECT]);
  expect(rejectOf(x)).toEqual({
    code: 'TORUS_ERR_PEER_PROTOCOL',
    message: `the client speaks protocol versions 1..1, this server ${PROTOCOL_VERSION_MIN}..${PROTOCOL_VERSION_MAX}`,
  });
}

function peerPort(h: TorusdHandle): number {
  return Number(h.peerAddress.split(':').pop());
}

/** Writes random data at random places through `c` and reads places back against the model. */
async function writeAndCheck(c: NbdTestClient, rng: Rng): Promise<void> {
  const len = (1 + rng.int(16)) * 4 * KiB;
  const off = rng.int((VOLUME_BYTES - len) / (4 * KiB) + 1) * 4 * KiB;
  const data = rng.bytes(len);
  await c.write(off, data);
  data.copy(model, off);
  const rlen = (1 + rng.int(32)) * 4 * KiB;
  const roff = rng.int((VOLUME_BYTES - rlen) / (4 * KiB) + 1) * 4 * KiB;
  const got = await c.read(roff, rlen);
  if (!got.equals(model.subarray(roff, roff + rlen))) throw new Error(`read ${roff}+${rlen} through A does not match what was written`);
}

async function readAll(c: NbdTestClient): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let off = 0; off < VOLUME_BYTES; off += MiB) parts.push(await c.read(off, MiB));
  return Buffer.concat(parts);
}

function refusalWarnings(h: TorusdHandle): LogLine[] {
  return h.lines().filter((l) => l.level === 40 && l.msg === 'peer connection refused');
}

async function withSeed<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new Error(`failed; reproduce with TORUS_E2E_PEER_SEED=${seed}: ${(err as Error).stack ?? String(err)}\n--- B's log tail ---\n${b?.tail(4000) ?? ''}`);
  }
}

describe('bad input on the peer port of a real torusd', () => {
  it('is refused and logged per kind while replicated writes through the other peer carry on, with the right data', () =>
    withSeed(async () => {
      const rng = new Rng(seed);
      const port = peerPort(b);
      const c = await nbdConnect(a.nbdPort, 'vol');
      try {
        let rounds = 0;
        let attacking = true;
        let writerDone = false;
        const writer = (async () => {
          const wr = new Rng(rng.u32());
          while (attacking || rounds < WRITER_ROUNDS_MIN) {
            await writeAndCheck(c, wr);
            rounds++;
          }
        })().finally(() => (writerDone = true));
        // Its failure is reported below, after the bad input stops (which it makes happen at once).
        writer.catch(() => undefined);
        const sent = { garbage: 0, wrongSecret: 0, oldProtocol: 0 };
        const attack = async (kind: keyof typeof sent, send: (port: number, rng: Rng) => Promise<void>) => {
          const kr = new Rng(rng.u32());
          while (!writerDone && sent[kind] < BAD_PER_KIND_MAX && (sent[kind] < BAD_PER_KIND_MIN || rounds < WRITER_ROUNDS_MIN)) {
            await send(port, kr);
            sent[kind]++;
          }
        };
        const roundsBefore = rounds;
        try {
          await Promise.all([attack('garbage', sendGarbage), attack('wrongSecret', sendWrongSecret), attack('oldProtocol', sendOldProtocol)]);
        } finally {
          attacking = false;
        }
        const roundsDuring = rounds - roundsBefore;
        await writer;
        expect(roundsDuring, `writer rounds while B was under bad input (sent ${JSON.stringify(sent)})`).toBeGreaterThan(0);
        for (const n of Object.values(sent)) expect(n, JSON.stringify(sent)).toBeGreaterThanOrEqual(BAD_PER_KIND_MIN);
        expect(rounds).toBeGreaterThanOrEqual(WRITER_ROUNDS_MIN);
        expect((await c.flush()).error).toBe(0);
        // After: everything written reads back through A.
        expect((await readAll(c)).equals(model), 'the whole volume through A').toBe(true);
      } finally {
        await c.disconnect();
      }

      // One warning per address, naming the kind of refusal; the rest went to debug.
      for (const [from, code, message] of [
        [FROM.garbage, 'TORUS_ERR_PEER_PROTOCOL', /bad magic/],
        [FROM.wrongSecret, 'TORUS_ERR_PEER_AUTH', /does not know the cluster secret/],
        [FROM.oldProtocol, 'TORUS_ERR_PEER_PROTOCOL', /protocol versions 1\.\.1/],
      ] as const) {
        const line = await b.waitForLog(`a refusal warning for ${from}`, (l) => l.msg === 'peer connection refused' && l.address === from, 5_000);
        expect(line.level).toBe(40);
        expect(line.err).toMatchObject({ code, message: expect.stringMatching(message) });
      }
      expect(refusalWarnings(b).map((l) => l.address).sort()).toEqual([FROM.garbage, FROM.wrongSecret, FROM.oldProtocol]);
      // A was never refused, and nothing was fatal.
      expect(refusalWarnings(a)).toEqual([]);
      expect([...a.lines(), ...b.lines()].filter((l) => (l.level ?? 0) >= 60), 'fatal log lines').toEqual([]);

      // Every write reached B: nothing recorded stale for it, and every block has its two equal copies.
      expect(await cluster!.staleBlocks(b.uuid)).toBe(0);
      const copies = await cluster!.checkCopies('vol');
      expect(copies.problems).toEqual([]);
      expect(copies.blocks).toBeGreaterThan(0);
      expect((await httpGet(`${b.httpUrl}/healthz`)).status).toBe(200);

      // B serves the same bytes through its own NBD export once A's writer has let go of the volume.
      await waitFor('vol to be free', async () => (await volumeList(cluster!.endpoint)).get('vol')?.status === 'free', 15_000, 250);
      const cb = await nbdConnect(b.nbdPort, 'vol');
      try {
        expect((await readAll(cb)).equals(model), 'the whole volume through B').toBe(true);
      } finally {
        await cb.disconnect();
      }
    }));

  it('a new peer connection that knows the secret is served after all that: B kept the real secret in its data dir', () =>
    withSeed(async () => {
      const file = path.join(b.dataDir, 'cluster-secret');
      const st = await stat(file);
      expect(st.mode & 0o777).toBe(0o600);
      const secret = (await readFile(file, 'utf8')).trim();
      expect(secret).toBe(await cluster!.etcdGet('secret'));
      const client = testPeerClient({ address: b.peerAddress, config, secret, remotePeerUuid: b.uuid, name: 'e2e-peer-port-test', seed });
      try {
        const info = await client.hello({ ringVersion: 0 });
        expect(info.uuid).toBe(b.uuid);
        // A data request is placed with the ring version B uses (B refuses an outdated one).
        expect((await client.usage({ ringVersion: info.ringVersion })).blocks).toBeGreaterThan(0);
      } finally {
        await client.close();
      }
    }));
});

describe('a data dir written by a newer release', () => {
  it('is refused at start with TORUS_ERR_DATA_DIR_NEWER, exit code 1, and left as it was', async () => {
    const file = path.join(b.dataDir, 'store', 'store.json');
    await b.stop();
    const original = await readFile(file, 'utf8');
    expect(JSON.parse(original)).toMatchObject({ schema: 2, blockSize: BLOCK });
    const newer = JSON.stringify({ schema: 3, blockSize: BLOCK }) + '\n';
    await writeFile(file, newer);

    await expect(b.restart()).rejects.toThrow(/process exited before log line/);
    expect(b.exit).toEqual({ code: 1, signal: null });
    const out = b.output();
    // One line on stderr a person reads, naming both schemas, and the fatal log line a machine reads.
    expect(out.split('\n')).toContain(`torusd: TORUS_ERR_DATA_DIR_NEWER: ${file} has store schema 3, written by a newer torus release; torus ${VERSION} knows store schemas up to 2`);
    const fatal = b.lines().find((l) => l.msg === 'torusd could not start');
    expect(fatal?.level).toBe(60);
    expect(fatal?.err).toMatchObject({ code: 'TORUS_ERR_DATA_DIR_NEWER' });
    expect(b.lines().some((l) => l.msg === 'peer server listening')).toBe(false);
    expect(await readFile(file, 'utf8')).toBe(newer);

    // With the store description put back, the same data dir starts and holds every copy.
    await writeFile(file, original);
    await b.restart();
    expect((await cluster!.checkCopies('vol')).problems).toEqual([]);
  });
});
