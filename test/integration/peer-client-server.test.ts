/**
 * Peer protocol 2 over real TCP on loopback: a PeerClient against a
 * PeerServer serving the in-memory FakeReplica (test/helpers/fake-replica.ts).
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isTorusError, TorusError } from '../../src/errors/torus-error.js';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import type { ChangeStamp, ReplicaApi, ReplicaWriteOptions, RequestContext } from '../../src/model/replica-api.js';
import { VERSION_ABSENT, makeVersion } from '../../src/model/version.js';
import type { IncarnationChange } from '../../src/peer/client.js';
import { decodeErrorPayload, encodeRequest } from '../../src/peer/codec.js';
import { Opcode, REQ, STATUS_ERROR, STATUS_OK } from '../../src/peer/protocol.js';
import { END_LINGER_MS } from '../../src/peer/server-connection.js';
import { tcpConnector, type PeerConnector } from '../../src/peer/transport.js';
import { BufferPool } from '../../src/util/buffer-pool.js';
import { crc32c } from '../../src/util/crc32c.js';
import type { Random } from '../../src/util/random.js';
import { FakeReplica } from '../helpers/fake-replica.js';
import { ManualClock } from '../helpers/metadata-contract.js';
import {
  Cleanups,
  SERVER_UUID,
  codeOf,
  flippingConnector,
  makeClient as makeClientWith,
  rawSession as rawSessionWith,
  startServer as startServerWith,
} from '../helpers/peer-harness.js';
import { waitFor } from '../helpers/wait.js';

const BS = 4096;
const CTX = { ringVersion: 5 };
const T = 3;
const v = (seq: number, token = T) => makeVersion(token, seq);
const stamp = (version: number, prev: number, token = T) => ({ token, version, prev });
const W = { fua: false };

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const startServer = (api: ReplicaApi, over: Parameters<typeof startServerWith>[3] = {}, port = 0) => startServerWith(cleanups, api, BS, over, port);
const makeClient = (addr: Parameters<typeof makeClientWith>[1], over: Parameters<typeof makeClientWith>[3] = {}) => makeClientWith(cleanups, addr, BS, over);
const rawSession = (addr: Parameters<typeof rawSessionWith>[1], opts: Parameters<typeof rawSessionWith>[3] = {}) => rawSessionWith(cleanups, addr, BS, opts);

/** A Random whose next() is fixed: reconnect delays become exact. */
function fixedRandom(next: number): Random {
  return { next: () => next, int: (n) => Math.floor(next * n), bytes: (n) => Buffer.alloc(n, 0x5a) };
}

describe('peer protocol 2 over TCP', () => {
  it('carries the write-ahead hint (EXPECT) without waiting, and a WRITE of whole pages arrives with its page CRCs', async () => {
    class Observed extends FakeReplica {
      readonly expected: string[][] = [];
      readonly pageCrcs: (Uint32Array | undefined)[] = [];
      expectWrites(_ctx: RequestContext, refs: readonly BlockRef[]): void {
        this.expected.push(refs.map((r) => `${r.volumeId}/${r.generation}/${r.index}`));
      }
      override write(ctx: RequestContext, ref: BlockRef, offset: number, data: Buffer, st: ChangeStamp, opts: ReplicaWriteOptions): Promise<void> {
        this.pageCrcs.push(opts.pageCrcs === undefined ? undefined : Uint32Array.from(opts.pageCrcs));
        return super.write(ctx, ref, offset, data, st, opts);
      }
    }
    const fake = new Observed(BS);
    fake.ringVersion = 5;
    const { addr } = await startServer(fake);
    const client = makeClient(addr);
    client.expectWrites(CTX, [blockRef(7, 1, 1), blockRef(7, 1, 2)]);
    client.expectWrites(CTX, []); // nothing to send
    await waitFor('the hint reached the replica', () => fake.expected.length === 1);
    expect(fake.expected).toEqual([['7/1/1', '7/1/2']]);
    const page = Buffer.alloc(BS, 7);
    await client.write(CTX, blockRef(7, 1, 1), 0, page, stamp(v(1), VERSION_ABSENT), W);
    await client.write(CTX, blockRef(7, 1, 1), 1, Buffer.from('x'), stamp(v(2), v(1)), W);
    expect(fake.pageCrcs).toEqual([Uint32Array.from([crc32c(page)]), undefined]);
    // A replica without the method (or a peer of an earlier release) answers; the client does not mind.
    const plain = new FakeReplica(BS);
    plain.ringVersion = 5;
    const other = makeClient((await startServer(plain)).addr);
    other.expectWrites(CTX, [blockRef(7, 1, 3)]);
    expect(await other.hello(CTX)).toMatchObject({ uuid: 'fake-peer' });
  });

  it('carries every ReplicaApi method', async () => {
    const fake = new FakeReplica(BS);
    fake.ringVersion = 5;
    const { addr } = await startServer(fake);
    const client = makeClient(addr);
    const a = blockRef(7, 1, 0);
    const b = blockRef(7, 1, 2 ** 40);
    const c = blockRef(7, 2, 5);

    expect(await client.hello(CTX)).toEqual({ uuid: 'fake-peer', incarnation: 'fake-incarnation-1', ringVersion: 5 });
    await client.write(CTX, a, 0, Buffer.alloc(BS, 1), stamp(v(1), VERSION_ABSENT), { fua: true });
    await client.write(CTX, a, 10, Buffer.from('hello peer'), stamp(v(2), v(1)), W);
    const read = await client.read(CTX, a, 8, 14);
    expect(read.data.toString('latin1')).toBe('\x01\x01hello peer\x01\x01');
    expect(read.meta).toEqual({ state: 'data', version: v(2), suspect: false, digest: crc32c(fake.peek(a).data!) });
    expect(await client.read(CTX, blockRef(9, 9, 9), 0, 16)).toEqual({ meta: { state: 'absent', version: -1, suspect: false, digest: 0 }, data: Buffer.alloc(16) });

    await client.zero(CTX, a, 10, 5, stamp(v(3), v(2)), { punch: false, fua: false });
    expect((await client.read(CTX, a, 10, 10)).data.toString('latin1')).toBe('\0\0\0\0\0 peer');
    await client.zero(CTX, a, 0, BS, stamp(v(4), v(3)), { punch: true, fua: true });
    expect(fake.peek(a)).toMatchObject({ state: 'zero', version: v(4) });

    expect(await client.install(CTX, b, { state: 'data', version: v(7), data: Buffer.alloc(BS, 9) }, { token: T, fua: true })).toBe('installed');
    expect(await client.install(CTX, b, { state: 'data', version: v(6), data: Buffer.alloc(BS, 8) }, { token: T, fua: false })).toBe('newer');
    expect(await client.install(CTX, c, { state: 'zero', version: v(1), data: null }, { token: T, fua: false })).toBe('installed');
    expect(await client.install(CTX, c, { state: 'zero', version: v(1), data: null }, { token: T, fua: false })).toBe('same');
    expect(fake.peek(b).data).toEqual(Buffer.alloc(BS, 9));

    const metas = await client.meta(CTX, [a, b, c, blockRef(8, 1, 1)]);
    expect(metas.map((m) => [m.state, m.version])).toEqual([
      ['zero', v(4)],
      ['data', v(7)],
      ['zero', v(1)],
      ['absent', VERSION_ABSENT],
    ]);
    expect(await client.meta(CTX, [])).toEqual([]);
    expect(await client.verify(CTX, b)).toEqual(metas[1]);

    // A gap makes b suspect; confirm with the right digest clears it.
    expect(await codeOf(client.write(CTX, b, 0, Buffer.from('x'), stamp(v(9), v(8)), W))).toBe('TORUS_ERR_REPLICA_STALE');
    expect((await client.meta(CTX, [b]))[0]!.suspect).toBe(true);
    expect(await client.confirm(CTX, b, v(10), metas[1]!.digest ^ 1, { token: T })).toBe(false);
    expect(await client.confirm(CTX, b, v(10), metas[1]!.digest, { token: T })).toBe(true);
    expect((await client.meta(CTX, [b]))[0]).toMatchObject({ suspect: false, version: v(10) });

    const first = await client.list(CTX, 7, null, 2);
    expect(first.blocks.map((x) => [x.ref, x.state])).toEqual([
      [a, 'zero'],
      [b, 'data'],
    ]);
    expect(first.more).toBe(true);
    const rest = await client.list(CTX, 7, first.blocks[1]!.ref, 10);
    expect(rest).toEqual({ blocks: [{ ref: c, state: 'zero', version: v(1), suspect: false, digest: 0 }], more: false });

    expect(await client.drop(CTX, b, v(9), { token: T })).toBe(false);
    expect(await client.drop(CTX, b, v(10), { token: T })).toBe(true);
    expect(fake.peek(b).state).toBe('absent');

    await client.fence(CTX, 7, 12);
    expect(fake.fenceOf(7)).toBe(12);
    await client.flush(CTX);
    expect(await client.usage(CTX)).toEqual({ capacity: (1 << 20) * BS, used: 0, blocks: 0 });
    await client.deleteVolume(CTX, 7);
    expect(fake.peek(c).state).toBe('absent');
    expect(fake.violations).toEqual([]);
  });

  it('keeps error codes and their details across the wire, and the connection', async () => {
    const fake = new FakeReplica(BS, { capacityBlocks: 1 });
    fake.ringVersion = 8;
    const { server, addr } = await startServer(fake);
    const client = makeClient(addr);
    let outdated: unknown;
    try {
      await client.write(CTX, blockRef(1, 1, 0), 0, Buffer.alloc(BS), stamp(v(1), VERSION_ABSENT), W);
    } catch (err) {
      outdated = err;
    }
    expect(isTorusError(outdated, 'TORUS_ERR_RING_OUTDATED')).toBe(true);
    expect((outdated as TorusError).details).toMatchObject({ ringVersion: 8, remote: true });

    const ctx = { ringVersion: 8 };
    await client.write(ctx, blockRef(1, 1, 0), 0, Buffer.alloc(BS), stamp(v(1, 10), VERSION_ABSENT, 10), W);
    expect(await codeOf(client.write(ctx, blockRef(1, 1, 1), 0, Buffer.alloc(BS), stamp(v(1, 10), VERSION_ABSENT, 10), W))).toBe('TORUS_ERR_STORE_NO_SPACE');
    expect(await codeOf(client.write(ctx, blockRef(1, 1, 0), 0, Buffer.alloc(BS), stamp(v(2, 9), VERSION_ABSENT, 9), W))).toBe('TORUS_ERR_VOLUME_FENCED');
    fake.live = false;
    expect(await codeOf(client.read(ctx, blockRef(1, 1, 0), 0, 1))).toBe('TORUS_ERR_PEER_NOT_LIVE');
    fake.live = true;
    expect((await client.read(ctx, blockRef(1, 1, 0), 0, 1)).meta.version).toBe(v(1, 10));
    expect(server.connectionCount).toBe(1);
  });

  it('writes requests in call order: 1,000 pipelined writes to one block apply in order', async () => {
    const fake = new FakeReplica(BS);
    // Answers come back out of order; the calls must not.
    let spin = 0;
    fake.delay = async () => {
      for (let i = (spin = (spin * 7 + 3) % 11); i > 0; i--) await new Promise((r) => setImmediate(r));
    };
    const { addr } = await startServer(fake, { inflightMax: 5 });
    const client = makeClient(addr, { inflightMax: 7, waitQueueMax: 2000 });
    const ref = blockRef(1, 1, 0);
    await client.write(CTX, ref, 0, Buffer.alloc(BS), stamp(v(1), VERSION_ABSENT), W);
    const n = 1000;
    // Each partial write builds on the one before: any reordering is a gap (TORUS_ERR_REPLICA_STALE).
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => codeOf(client.write(CTX, ref, (i * 4) % BS, Buffer.from([i & 0xff, i >> 8, 0xee, 0xff]), stamp(v(i + 2), v(i + 1)), W))),
    );
    expect(results.filter((r) => r !== 'resolved')).toEqual([]);
    const versions = fake.calls.filter((c) => c.method === 'write').map((c) => c.stamp!.version);
    expect(versions).toEqual(Array.from({ length: n + 1 }, (_, i) => v(i + 1)));
    expect(fake.peek(ref).version).toBe(v(n + 1));
  });

  it('calls the replica in arrival order without waiting for earlier calls to finish', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake, { inflightMax: 64 });
    const client = makeClient(addr);
    fake.hold();
    const writes = Array.from({ length: 20 }, (_, i) => client.write(CTX, blockRef(1, 1, i), 0, Buffer.alloc(BS, i), stamp(v(1), VERSION_ABSENT), W));
    // All 20 reached the replica while none had finished.
    await waitFor('twenty writes held in the replica', () => fake.held === 20);
    expect(fake.calls.map((c) => c.ref!.index)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    fake.open();
    await Promise.all(writes);
  });

  it('answers an invalid request with an error and keeps the connection', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const raw = await rawSession(addr);
    const frame = (r: Parameters<typeof encodeRequest>[0], id: number) => {
      const { header, payload } = encodeRequest(r, id);
      return Buffer.concat([header, payload]);
    };
    const reseal = (h: Buffer) => (h.writeUInt32BE(crc32c(h.subarray(0, REQ.HEADER_CRC)), REQ.HEADER_CRC), h);
    // Out of range.
    const read = frame({ opcode: Opcode.READ, ctx: CTX, ref: blockRef(1, 1, 0), offset: 0, length: 2 }, 5);
    read.writeUInt32BE(BS - 1, REQ.OFFSET);
    raw.send(reseal(read));
    expect(decodeErrorPayload((await raw.reply(5)).payload).code).toBe('TORUS_ERR_IO_OUT_OF_RANGE');
    // Unknown opcode.
    const hello = frame({ opcode: Opcode.HELLO, ctx: CTX }, 6);
    hello[REQ.OPCODE] = 200;
    raw.send(reseal(hello));
    const bad = await raw.reply(6);
    expect(bad.status).toBe(STATUS_ERROR);
    expect(decodeErrorPayload(bad.payload).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    // A change whose version does not follow prev.
    const w = frame({ opcode: Opcode.WRITE, ctx: CTX, ref: blockRef(1, 1, 0), offset: 0, data: Buffer.from('x'), stamp: stamp(v(2), v(1)), fua: false }, 7);
    w.fill(0, REQ.VERSION, REQ.VERSION + 8);
    raw.send(reseal(w));
    expect(decodeErrorPayload((await raw.reply(7)).payload).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    // FUA on a READ.
    const fua = frame({ opcode: Opcode.READ, ctx: CTX, ref: blockRef(1, 1, 0), offset: 0, length: 2 }, 8);
    fua[REQ.FLAGS] = 1;
    raw.send(reseal(fua));
    expect(decodeErrorPayload((await raw.reply(8)).payload).code).toBe('TORUS_ERR_PEER_PROTOCOL');
    // None of them reached the replica; the connection still serves.
    raw.send(frame({ opcode: Opcode.HELLO, ctx: CTX }, 9));
    expect((await raw.reply(9)).status).toBe(STATUS_OK);
    expect(fake.calls.map((c) => c.method)).toEqual(['hello']);
  });

  it('closes the connection on a damaged header', async () => {
    const { server, addr } = await startServer(new FakeReplica(BS));
    const raw = await rawSession(addr);
    const { header } = encodeRequest({ opcode: Opcode.HELLO, ctx: CTX }, 1);
    const hdr = Buffer.from(header);
    hdr[30]! ^= 1;
    raw.send(hdr);
    await raw.closed;
    await waitFor('server to forget the connection', () => server.connectionCount === 0);
  });

  it('cuts a peer that damaged its stream and keeps its side open, after END_LINGER_MS', async () => {
    const clock = new ManualClock();
    const { server, addr } = await startServer(new FakeReplica(BS), { clock });
    const raw = await rawSession(addr, { allowHalfOpen: true });
    const { header, payload } = encodeRequest({ opcode: Opcode.WRITE, ctx: CTX, ref: blockRef(1, 1, 0), offset: 0, data: Buffer.from('data'), stamp: stamp(v(1), VERSION_ABSENT), fua: false }, 3);
    const damaged = Buffer.from(payload);
    damaged[0]! ^= 1;
    raw.send(header, damaged);
    // The damaged request is answered (by id), then the server ends its side.
    expect(decodeErrorPayload((await raw.reply(3)).payload).code).toBe('TORUS_ERR_PEER_CHECKSUM');
    await new Promise((r) => setImmediate(r));
    expect(server.connectionCount).toBe(1);
    await clock.advance(END_LINGER_MS);
    await waitFor('the slot to be free', () => server.connectionCount === 0, 5000);
  });

  // An answer the protocol cannot carry is an assertion failure: no reply, the connection is cut (test/unit/peer-server-invariant.test.ts).
  it('a replica that throws gets an error reply and the connection lives', async () => {
    const fake = new FakeReplica(BS);
    const broken = Object.assign(Object.create(fake) as FakeReplica, {
      verify: () => {
        throw new TorusError('TORUS_ERR_STORE_IO', 'thrown, not rejected');
      },
      flush: async () => {
        throw new Error('plain error');
      },
    });
    const { addr } = await startServer(broken);
    const client = makeClient(addr);
    expect(await codeOf(client.verify(CTX, blockRef(1, 1, 0)))).toBe('TORUS_ERR_STORE_IO');
    expect(await codeOf(client.flush(CTX))).toBe('TORUS_ERR_STORE_IO');
    expect((await client.hello(CTX)).uuid).toBe('fake-peer');
  });

  it('takes a precomputed CRC for a write and refuses a wrong one', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const client = makeClient(addr);
    const data = Buffer.alloc(BS, 0x5a);
    await client.write(CTX, blockRef(1, 1, 0), 0, data, stamp(v(1), VERSION_ABSENT), { fua: false, crc32c: crc32c(data) });
    expect(fake.peek(blockRef(1, 1, 0)).data).toEqual(data);
    expect(await codeOf(client.write(CTX, blockRef(1, 1, 1), 0, data, stamp(v(1), VERSION_ABSENT), { fua: false, crc32c: crc32c(data) ^ 1 }))).toBe(
      'TORUS_ERR_PEER_CHECKSUM',
    );
    expect(fake.peek(blockRef(1, 1, 1)).state).toBe('absent');
  });

  it('sends a block that is a small part of a large buffer as a pooled copy, byte for byte, and gives the copy back', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const pool = new BufferPool({ poison: true });
    const client = makeClient(addr, { pool });
    // One block of an 8 MiB buffer (an NBD WRITE spanning many blocks): sent as it is, it would pin all 8 MiB on the socket.
    const big = Buffer.alloc(8 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4096) big.fill(i / 4096, i, i + 4096);
    const view = big.subarray(3 * BS, 4 * BS);
    await client.write(CTX, blockRef(1, 1, 0), 0, view, stamp(v(1), VERSION_ABSENT), { fua: false, crc32c: crc32c(view) });
    expect(fake.peek(blockRef(1, 1, 0)).data).toEqual(Buffer.alloc(BS, 3));
    await waitFor('the copy back in its pool', () => pool.stats().inUseBytes === 0, 5000);
    expect(pool.stats().allocations).toBe(1);
  });

  it('serves several clients at once', async () => {
    const fake = new FakeReplica(BS);
    const { server, addr } = await startServer(fake);
    const clients = [0, 1, 2].map(() => makeClient(addr));
    await Promise.all(clients.map((c, i) => c.write(CTX, blockRef(1, 1, i), 0, Buffer.from(`c${i}`), stamp(v(1), VERSION_ABSENT), W)));
    expect(server.connectionCount).toBe(3);
    for (const [i, c] of clients.entries()) {
      expect((await c.read(CTX, blockRef(1, 1, (i + 1) % 3), 0, 2)).data.toString()).toBe(`c${(i + 1) % 3}`);
    }
  });

  it('asserts on caller bugs at once, before anything is sent', () => {
    const client = makeClient({ host: '127.0.0.1', port: 1 });
    expect(() => client.read(CTX, blockRef(1, 1, 0), BS, 1)).toThrow(/assertion failed/);
    expect(() => client.write(CTX, blockRef(1, 1, 0), 1, Buffer.alloc(BS), stamp(v(1), VERSION_ABSENT), W)).toThrow(/assertion failed/);
    expect(() => client.write(CTX, blockRef(1, 1, 0), 0, Buffer.alloc(1), stamp(v(1), v(1)), W)).toThrow(/assertion failed/);
    expect(() => client.meta(CTX, Array.from({ length: 4097 }, () => blockRef(1, 1, 0)))).toThrow(/assertion failed/);
    expect(() => client.list(CTX, 1, null, 0)).toThrow(/assertion failed/);
    expect(() => client.install(CTX, blockRef(1, 1, 0), { state: 'data', version: v(1), data: Buffer.alloc(1) }, { token: T, fua: false })).toThrow(
      /assertion failed/,
    );
    expect(() => client.hello({ ringVersion: -1 })).toThrow(/assertion failed/);
    expect(client.inflightCount).toBe(0);
  });
});

describe('handshake and authentication', () => {
  it('tells the client the server incarnation, and when it changes, before any answer from the new one', async () => {
    const fake1 = new FakeReplica(BS, { incarnation: 'boot-1' });
    const first = await startServer(fake1, { incarnation: 'boot-1' });
    const events: string[] = [];
    const changes: IncarnationChange[] = [];
    const client = makeClient(first.addr, {
      onIncarnationChange: (c) => {
        changes.push(c);
        events.push(`change ${c.previous} -> ${c.current}`);
      },
    });
    expect(client.incarnation).toBeNull();
    await client.hello(CTX);
    expect(client.incarnation).toBe('boot-1');
    expect(client.remotePeerUuid).toBe(SERVER_UUID);
    expect(changes).toEqual([{ peerUuid: SERVER_UUID, previous: null, current: 'boot-1' }]);

    // A dropped connection to the same incarnation is not a restart.
    first.server.abort();
    const again = await startServer(fake1, { incarnation: 'boot-1' }, first.addr.port);
    await waitFor('reconnect to the same incarnation', async () => (await client.hello(CTX)).incarnation === 'boot-1');
    expect(changes.length).toBe(1);

    // A restart: a new incarnation on the same address.
    again.server.abort();
    await startServer(new FakeReplica(BS, { incarnation: 'boot-2' }), { incarnation: 'boot-2' }, first.addr.port);
    await waitFor('reconnect to the restarted peer', async () => {
      const info = await client.hello(CTX);
      events.push(`answer from ${info.incarnation}`);
      return info.incarnation === 'boot-2';
    });
    expect(changes[1]).toEqual({ peerUuid: SERVER_UUID, previous: 'boot-1', current: 'boot-2' });
    expect(client.incarnation).toBe('boot-2');
    // The change was reported before the first answer of the new incarnation.
    expect(events.indexOf('change boot-1 -> boot-2')).toBeLessThan(events.indexOf('answer from boot-2'));
  });

  it('refuses a client with the wrong secret, logs it once per address per minute, and keeps serving others', async () => {
    const { recordingLogger } = await import('../helpers/peer-harness.js');
    const rec = recordingLogger();
    const clock = new ManualClock();
    // The server's clock only drives the refusal log window and handshake timeouts here.
    const { server, addr } = await startServer(new FakeReplica(BS), { logger: rec.logger, clock });
    for (let i = 0; i < 3; i++) {
      const bad = makeClient(addr, { secret: 'not the secret' });
      expect(await codeOf(bad.hello(CTX))).toBe('TORUS_ERR_PEER_AUTH');
    }
    await waitFor('server to drop the bad connections', () => server.connectionCount === 0);
    await waitFor('three refusals seen', () => rec.lines.filter((l) => l.msg === 'peer connection refused').length === 3);
    expect(rec.warns('peer connection refused')).toBe(1);
    const warned = rec.lines.find((l) => l.level === 40 && l.msg === 'peer connection refused')!;
    expect(warned).toMatchObject({ address: '127.0.0.1', err: { code: 'TORUS_ERR_PEER_AUTH' } });
    const good = makeClient(addr);
    await good.hello(CTX);
    await clock.advance(60_000);
    expect(await codeOf(makeClient(addr, { secret: 'still wrong' }).hello(CTX))).toBe('TORUS_ERR_PEER_AUTH');
    await waitFor('a second warning after a minute', () => rec.warns('peer connection refused') === 2);
    await good.hello(CTX);
  });

  it('cuts a refused client that keeps its side open, after END_LINGER_MS', async () => {
    const clock = new ManualClock();
    const { server, addr } = await startServer(new FakeReplica(BS), { clock });
    const { ClientHandshake } = await import('../../src/peer/handshake.js');
    const { encodeHandshakeMessage, readHandshakeMessage } = await import('../../src/peer/handshake-codec.js');
    const { HandshakeKind } = await import('../../src/peer/protocol.js');
    const { ByteQueue } = await import('../../src/util/byte-queue.js');
    const hs = new ClientHandshake({ clusterId: 'test-cluster', peerUuid: 'stubborn', incarnation: 'i', secret: Buffer.from('wrong'), blockSize: BS }, Buffer.alloc(32, 1));
    // allowHalfOpen: this client never ends its side, whatever the server does.
    const socket = net.connect({ port: addr.port, host: addr.host, allowHalfOpen: true });
    socket.on('error', () => {});
    const q = new ByteQueue();
    let rejected = false;
    socket.on('data', (d: Buffer) => {
      q.push(d);
      for (let m = readHandshakeMessage(q); m !== null; m = readHandshakeMessage(q)) {
        if (m.kind === HandshakeKind.REJECT) rejected = true;
        // A forged proof in answer to the server HELLO.
        else socket.write(encodeHandshakeMessage(HandshakeKind.PROOF, Buffer.alloc(32, 0xab)));
      }
    });
    cleanups.add(() => void socket.destroy());
    socket.write(hs.hello());
    await waitFor('the server REJECT', () => rejected);
    await new Promise((r) => setImmediate(r));
    // The server ended its side; the client's side stays open, and so would the connection.
    expect(server.connectionCount).toBe(1);
    await clock.advance(END_LINGER_MS - 1);
    expect(server.connectionCount).toBe(1);
    await clock.advance(1);
    await waitFor('the slot to be free', () => server.connectionCount === 0, 5000);
  });

  it('requires a secret unless insecure is set, and an insecure side cannot talk to a secure one', async () => {
    expect(() => makeClient({ host: '127.0.0.1', port: 1 }, { secret: '' })).toThrow(/no cluster secret/);
    await expect(startServer(new FakeReplica(BS), { secret: '' })).rejects.toMatchObject({ code: 'TORUS_ERR_PEER_AUTH' });
    const { addr } = await startServer(new FakeReplica(BS));
    expect(await codeOf(makeClient(addr, { secret: '', insecure: true }).hello(CTX))).toBe('TORUS_ERR_PEER_AUTH');
    const { addr: open } = await startServer(new FakeReplica(BS), { secret: '', insecure: true });
    expect(await codeOf(makeClient(open).hello(CTX))).toBe('TORUS_ERR_PEER_AUTH');
    await makeClient(open, { secret: '', insecure: true }).hello(CTX);
  });

  it('refuses a peer of another cluster, another block size, or another uuid than expected', async () => {
    const { addr } = await startServer(new FakeReplica(BS));
    expect(await codeOf(makeClient(addr, { clusterId: 'other-cluster' }).hello(CTX))).toBe('TORUS_ERR_PEER_AUTH');
    const other = makeClientWith(cleanups, addr, 8192);
    expect(await codeOf(other.hello(CTX))).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(await codeOf(makeClient(addr, { remotePeerUuid: 'someone-else' }).hello(CTX))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    await makeClient(addr, { remotePeerUuid: SERVER_UUID }).hello(CTX);
  });

  it('refuses a protocol 1 client with a REJECT naming both versions, and keeps serving', async () => {
    const { server, addr } = await startServer(new FakeReplica(BS));
    const { encodeHandshakeMessage, readHandshakeMessage } = await import('../../src/peer/handshake-codec.js');
    const { HandshakeKind } = await import('../../src/peer/protocol.js');
    const { ByteQueue } = await import('../../src/util/byte-queue.js');
    // 0.1.0's HELLO, byte by byte: versions 1..1, no incarnation.
    const cluster = Buffer.from('test-cluster');
    const uuid = Buffer.from('old-peer');
    const body = Buffer.alloc(44 + 2 + cluster.length + uuid.length);
    body.writeUInt16BE(1, 0);
    body.writeUInt16BE(1, 2);
    body.writeUInt16BE(1, 4);
    body.writeUInt32BE(BS, 8);
    body[44] = cluster.length;
    cluster.copy(body, 45);
    body[45 + cluster.length] = uuid.length;
    uuid.copy(body, 46 + cluster.length);
    const socket = net.connect(addr.port, addr.host);
    socket.on('error', () => {});
    const q = new ByteQueue();
    socket.on('data', (d: Buffer) => q.push(d));
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    socket.write(encodeHandshakeMessage(HandshakeKind.HELLO, body));
    await closed;
    const reject = readHandshakeMessage(q)!;
    expect(reject.kind).toBe(HandshakeKind.REJECT);
    const codeLength = reject.body.readUInt16BE(0);
    expect(reject.body.toString('latin1', 2, 2 + codeLength)).toBe('TORUS_ERR_PEER_PROTOCOL');
    expect(reject.body.toString('utf8', 2 + codeLength)).toBe('the client speaks protocol versions 1..1, this server 2..2');
    await makeClient(addr).hello(CTX);
    await waitFor('only the good client left', () => server.connectionCount === 1);
  });

  it('drops a stranger that does not speak the protocol and keeps serving', async () => {
    const { server, addr } = await startServer(new FakeReplica(BS));
    const stranger = net.connect(addr.port, addr.host);
    stranger.on('error', () => {});
    const closed = new Promise<void>((resolve) => stranger.on('close', () => resolve()));
    stranger.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await closed;
    await makeClient(addr).hello(CTX);
    await waitFor('stranger gone', () => server.connectionCount === 1);
  });
});

describe('peer failures', () => {
  it('fails requests in flight with TORUS_ERR_PEER_UNAVAILABLE when the server dies, and reconnects when it is back', async () => {
    const fake = new FakeReplica(BS);
    const { server, addr } = await startServer(fake);
    const client = makeClient(addr);
    await client.hello(CTX);
    fake.hold();
    const writes = Array.from({ length: 10 }, (_, i) => codeOf(client.write(CTX, blockRef(1, 1, i), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W)));
    await waitFor('writes to reach the replica', () => fake.held === 10);
    server.abort();
    expect(await Promise.all(writes)).toEqual(Array(10).fill('TORUS_ERR_PEER_UNAVAILABLE'));
    fake.open();

    // While no one listens, requests fail with the same code.
    expect(await codeOf(client.hello(CTX))).toBe('TORUS_ERR_PEER_UNAVAILABLE');

    const fake2 = new FakeReplica(BS);
    await startServer(fake2, {}, addr.port);
    await waitFor('client to reconnect', async () => {
      await client.hello(CTX);
      return true;
    });
    await client.write(CTX, blockRef(1, 1, 0), 0, Buffer.from('back'), stamp(v(1), VERSION_ABSENT), W);
    expect(fake2.peek(blockRef(1, 1, 0)).data!.subarray(0, 4).toString()).toBe('back');
  });

  it('a payload damaged on its way to the client fails every request on the connection with TORUS_ERR_PEER_CHECKSUM', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const tamper = flippingConnector('in', 1000);
    const client = makeClient(addr, { connect: tamper.connect });
    await client.write(CTX, blockRef(1, 1, 0), 0, Buffer.alloc(BS, 5), stamp(v(1), VERSION_ABSENT), W);
    // Two writes wait in the replica while the one big answer, the read's, is damaged.
    fake.hold();
    const writes = [1, 2].map((i) => codeOf(client.write(CTX, blockRef(1, 1, i), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W)));
    await waitFor('writes held', () => fake.held === 2);
    const read = codeOf(client.read(CTX, blockRef(1, 1, 0), 0, BS));
    expect(await Promise.all([read, ...writes])).toEqual(Array(3).fill('TORUS_ERR_PEER_CHECKSUM'));
    expect(tamper.flipped()).toBe(true);
    fake.open();
    // A fresh connection (the tamperer flips only once) works again.
    await waitFor('client to reconnect', async () => (await client.read(CTX, blockRef(1, 1, 0), 0, BS)).data.equals(Buffer.alloc(BS, 5)));
  });

  it('a payload damaged on its way to the server is refused with TORUS_ERR_PEER_CHECKSUM and not applied', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const tamper = flippingConnector('out', BS);
    const client = makeClient(addr, { connect: tamper.connect });
    await client.hello(CTX);
    expect(await codeOf(client.write(CTX, blockRef(1, 1, 0), 0, Buffer.alloc(BS, 9), stamp(v(1), VERSION_ABSENT), W))).toBe('TORUS_ERR_PEER_CHECKSUM');
    expect(tamper.flipped()).toBe(true);
    expect(fake.calls.filter((c) => c.method === 'write')).toEqual([]);
    await waitFor('client to reconnect', async () => {
      await client.write(CTX, blockRef(1, 1, 0), 0, Buffer.alloc(BS, 9), stamp(v(1), VERSION_ABSENT), W);
      return true;
    });
    expect(fake.peek(blockRef(1, 1, 0)).data).toEqual(Buffer.alloc(BS, 9));
  });

  it('times a request out with TORUS_ERR_TIMEOUT on the injected clock', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const clock = new ManualClock();
    const client = makeClient(addr, { requestTimeoutMs: 150, clock });
    await client.hello(CTX);
    fake.hold();
    const write = codeOf(client.write(CTX, blockRef(1, 1, 0), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W));
    await waitFor('write held', () => fake.held === 1);
    await clock.advance(149);
    expect(client.inflightCount).toBe(1);
    await clock.advance(1);
    expect(await write).toBe('TORUS_ERR_TIMEOUT');
    // The late answer is ignored and the connection still serves.
    fake.open();
    await client.hello(CTX);
    expect(client.inflightCount).toBe(0);
  });

  it('ends a request at its own deadline when that comes before the request timeout, and frees its slot', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const clock = new ManualClock();
    const client = makeClient(addr, { requestTimeoutMs: 30_000, clock });
    await client.hello(CTX);
    fake.hold();
    const ctx = { ...CTX, deadline: clock.monotonic() + 2_000 };
    const write = codeOf(client.write(ctx, blockRef(1, 1, 0), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W));
    await waitFor('write held', () => fake.held === 1);
    await clock.advance(1_999);
    expect(client.inflightCount).toBe(1);
    await clock.advance(1);
    expect(await write).toBe('TORUS_ERR_TIMEOUT');
    expect(client.inflightCount).toBe(0);
    fake.open();
  });

  it('reuses request ids only once their answer came: a late answer never reaches a newer request', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const clock = new ManualClock();
    const client = makeClient(addr, { requestTimeoutMs: 150, clock });
    const X = blockRef(1, 1, 0);
    const Y = blockRef(1, 1, 1);
    await client.write(CTX, X, 0, Buffer.alloc(BS, 0x61), stamp(v(1), VERSION_ABSENT), W);
    await client.write(CTX, Y, 0, Buffer.alloc(BS, 0x62), stamp(v(2), VERSION_ABSENT), W);
    const readsRight = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const [x, y] = await Promise.all([client.read(CTX, X, 0, 8), client.read(CTX, Y, 0, 8)]);
        expect(x.data.toString()).toBe('aaaaaaaa');
        expect(y.data.toString()).toBe('bbbbbbbb');
      }
    };
    await readsRight(5);
    // A write held by the replica times out; its id waits for the late answer.
    fake.hold();
    const late = codeOf(client.write(CTX, blockRef(1, 1, 2), 0, Buffer.alloc(BS, 0x63), stamp(v(3), VERSION_ABSENT), W));
    await waitFor('write held', () => fake.held === 1);
    await clock.advance(150);
    expect(await late).toBe('TORUS_ERR_TIMEOUT');
    await readsRight(5);
    // The late answer comes; reads on the reused ids still get their own answers.
    fake.open();
    await waitFor('late write applied', () => fake.peek(blockRef(1, 1, 2)).state === 'data');
    await readsRight(20);
    expect(client.inflightCount).toBe(0);
  });

  it('defaults the request timeout to 30 s, an upper bound', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const clock = new ManualClock();
    const client = makeClient(addr, { requestTimeoutMs: undefined, clock });
    await client.hello(CTX);
    fake.hold();
    const write = codeOf(client.write(CTX, blockRef(1, 1, 0), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W));
    await waitFor('write held', () => fake.held === 1);
    await clock.advance(29_999);
    expect(client.inflightCount).toBe(1);
    await clock.advance(1);
    expect(await write).toBe('TORUS_ERR_TIMEOUT');
    fake.open();
  });

  it('bounds the wait queue: beyond it requests fail with TORUS_ERR_STORE_BUSY', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const client = makeClient(addr, { inflightMax: 2, waitQueueMax: 3 });
    await client.hello(CTX);
    fake.hold();
    const writes = Array.from({ length: 5 }, (_, i) => client.write(CTX, blockRef(1, 1, i), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W));
    expect(await codeOf(client.write(CTX, blockRef(1, 1, 9), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W))).toBe('TORUS_ERR_STORE_BUSY');
    await waitFor('two writes in the replica', () => fake.held === 2);
    expect(client.inflightCount).toBe(2);
    fake.open();
    await Promise.all(writes);
    expect(fake.heldMax).toBe(2);
  });

  it('the server hands at most inflightMax requests of a connection to the replica at once', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake, { inflightMax: 4 });
    const client = makeClient(addr);
    fake.hold();
    const writes = Array.from({ length: 40 }, (_, i) => client.write(CTX, blockRef(1, 1, i), 0, Buffer.alloc(BS, 1), stamp(v(1), VERSION_ABSENT), W));
    await waitFor('four writes in the replica', () => fake.held === 4);
    // A hello queued behind the held writes is not read until a slot frees.
    let answered = false;
    const hello = client.hello(CTX).then(() => (answered = true));
    await new Promise((r) => setImmediate(r));
    expect(answered).toBe(false);
    expect(fake.calls.length).toBe(4);
    fake.open();
    await Promise.all([...writes, hello]);
    expect(fake.heldMax).toBe(4);
  });

  it('close() answers the requests in flight before closing', async () => {
    const fake = new FakeReplica(BS);
    const { server, addr } = await startServer(fake);
    const client = makeClient(addr);
    fake.hold();
    const writes = Array.from({ length: 5 }, (_, i) => client.write(CTX, blockRef(1, 1, i), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W));
    await waitFor('writes held', () => fake.held === 5);
    const closing = server.close();
    fake.open();
    await Promise.all(writes);
    await closing;
    expect(server.connectionCount).toBe(0);
  });

  it('a client\'s close() waits for answers on their way, and delivers them', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const clock = new ManualClock();
    const client = makeClient(addr, { clock, closeWaitMs: 2_000 });
    await client.hello(CTX);
    fake.hold();
    const writes = Array.from({ length: 3 }, (_, i) => client.write(CTX, blockRef(1, 1, i), 0, Buffer.from('x'), stamp(v(1), VERSION_ABSENT), W));
    await waitFor('writes held', () => fake.held === 3);
    let closed = false;
    const closing = client.close().then(() => (closed = true));
    await clock.advance(1_000);
    expect(closed).toBe(false);
    fake.open();
    await Promise.all(writes);
    await closing;
    expect(client.inflightCount).toBe(0);
  });

  it('a client\'s close() gives up on a peer that does not answer after closeWaitMs, not the request timeout, and fails what it sent', async () => {
    const fake = new FakeReplica(BS);
    const { addr } = await startServer(fake);
    const clock = new ManualClock();
    const client = makeClient(addr, { clock, closeWaitMs: 2_000, requestTimeoutMs: 30_000 });
    await client.hello(CTX);
    fake.hold();
    const writes = Array.from({ length: 3 }, (_, i) => codeOf(client.write(CTX, blockRef(1, 1, i), 0, Buffer.alloc(BS, 7), stamp(v(1), VERSION_ABSENT), W)));
    await waitFor('writes held', () => fake.held === 3);
    let closed = false;
    const closing = client.close().then(() => (closed = true));
    await clock.advance(1_999);
    expect(closed).toBe(false);
    await clock.advance(1);
    await closing;
    expect(await Promise.all(writes)).toEqual(['TORUS_ERR_STORE_CLOSED', 'TORUS_ERR_STORE_CLOSED', 'TORUS_ERR_STORE_CLOSED']);
    expect(client.inflightCount).toBe(0);
    expect(await codeOf(client.hello(CTX))).toBe('TORUS_ERR_STORE_CLOSED');
    fake.open();
  });

  it('backs off after a failed connection, doubling up to the max, jittered, on the injected clock', async () => {
    // A port nobody listens on: take one and close it.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));

    const clock = new ManualClock();
    let attempts = 0;
    const connect: PeerConnector = (addr) => {
      attempts++;
      return tcpConnector(addr);
    };
    // Jitter at its top: the delays are the full 100, 200, 400, 400 ...
    const client = makeClient({ host: '127.0.0.1', port }, { clock, connect, random: fixedRandom(0.999999), reconnectDelayMinMs: 100, reconnectDelayMaxMs: 400 });
    expect(await codeOf(client.hello(CTX))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(1);
    // Within the backoff requests fail at once, without dialling.
    expect(await codeOf(client.hello(CTX))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(1);
    await clock.advance(100);
    expect(await codeOf(client.hello(CTX))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(2);
    // The delay doubled: 100 ms is not enough now, 200 is.
    await clock.advance(100);
    expect(await codeOf(client.hello(CTX))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(attempts).toBe(2);
    await clock.advance(100);
    await codeOf(client.hello(CTX));
    expect(attempts).toBe(3);
    // Bounded: never more than reconnectDelayMaxMs.
    for (let i = 0; i < 5; i++) {
      await clock.advance(400);
      await codeOf(client.hello(CTX));
    }
    expect(attempts).toBe(8);

    // Jitter at its bottom: half the delay.
    const clock2 = new ManualClock();
    let attempts2 = 0;
    const low = makeClient(
      { host: '127.0.0.1', port },
      { clock: clock2, connect: (a) => (attempts2++, tcpConnector(a)), random: fixedRandom(0), reconnectDelayMinMs: 100, reconnectDelayMaxMs: 400 },
    );
    await codeOf(low.hello(CTX));
    await clock2.advance(49);
    await codeOf(low.hello(CTX));
    expect(attempts2).toBe(1);
    await clock2.advance(1);
    await codeOf(low.hello(CTX));
    expect(attempts2).toBe(2);
  });
});

