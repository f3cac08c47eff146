import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TorusError } from '../../src/errors/torus-error.js';
import { encodeInfoRequest, encodeMetaContextRequest, encodeRequestHeader, readUint64 } from '../../src/nbd/codec.js';
import { resolveLimits, type NbdLimits } from '../../src/nbd/limits.js';
import { ByteBudget } from '../../src/nbd/byte-budget.js';
import { MemoryExportProvider } from '../../src/nbd/memory-export.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdSession, type NbdRequestInfo } from '../../src/nbd/session.js';
import { systemClock } from '../../src/util/clock.js';
import { streamPair } from '../helpers/nbd-stream-pair.js';
import { NbdTestClient, openExport } from '../helpers/nbd-test-client.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;

interface Harness {
  provider: MemoryExportProvider;
  logs: Array<Record<string, unknown>>;
  requests: NbdRequestInfo[];
  /** What the sessions reported to their onInvariantBroken hook. */
  broken: Array<{ err: TorusError; context: Record<string, unknown> }>;
  start(limits?: Partial<NbdLimits>, budget?: ByteBudget): { session: NbdSession; client: Parameters<typeof NbdTestClient.connect>[0] };
}

const sessions: NbdSession[] = [];

afterEach(() => {
  for (const s of sessions.splice(0)) s.destroy();
});

function harness(): Harness {
  const provider = new MemoryExportProvider([
    { name: 'disk', size: 64 * MiB, description: 'a test disk' },
    { name: 'small', size: 8192, chunkBytes: 1024 },
    { name: 'ro', size: MiB, readOnly: true },
    { name: 'excl', size: MiB, exclusive: true },
  ]);
  const logs: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => logs.push(JSON.parse(line) as Record<string, unknown>) });
  const requests: NbdRequestInfo[] = [];
  const broken: Harness['broken'] = [];
  let n = 0;
  return {
    provider,
    logs,
    requests,
    broken,
    start(limits, budget) {
      const [server, client] = streamPair();
      const session = new NbdSession({
        stream: server,
        remote: `test:${++n}`,
        provider,
        logger,
        clock: systemClock,
        limits: resolveLimits(limits),
        onRequest: (i) => requests.push(i),
        onInvariantBroken: (err, context) => broken.push({ err, context }),
        ...(budget ? { budget } : {}),
      });
      sessions.push(session);
      return { session, client };
    },
  };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Lets queued I/O callbacks run (not a timed sleep). */
async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

const pattern = (len: number, seed: number) => Buffer.from(Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff));

describe('NbdSession handshake', () => {
  it('greets with fixed newstyle and no-zeroes', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    expect(c.handshakeFlags).toBe(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES);
  });

  it('drops a client that sets unknown client flags', async () => {
    const h = harness();
    const { session, client } = h.start();
    const c = await NbdTestClient.connect(client, 0x100);
    await c.reader.closed;
    await session.closed;
    expect(h.logs.some((l) => l.reason === 'unknown client flags' && l.remote === 'test:1' && l.level === 40)).toBe(true);
  });

  it('answers GO with export info, name, description and block sizes', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    await c.structuredReplies();
    const replies = await c.go('disk', [P.INFO_NAME, P.INFO_DESCRIPTION, P.INFO_BLOCK_SIZE]);
    expect(replies[replies.length - 1]!.type).toBe(P.REP_ACK);
    const infos = new Map(replies.filter((r) => r.type === P.REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data.subarray(2)]));
    expect(readUint64(infos.get(P.INFO_EXPORT)!, 0)).toBe(64 * MiB);
    expect(infos.get(P.INFO_NAME)!.toString()).toBe('disk');
    expect(infos.get(P.INFO_DESCRIPTION)!.toString()).toBe('a test disk');
    const bs = infos.get(P.INFO_BLOCK_SIZE)!;
    expect([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)]).toEqual([1, 4096, 32 * MiB]);
    expect(c.exportSize).toBe(64 * MiB);
    const f = c.transmissionFlags;
    for (const flag of [P.TFLAG_HAS_FLAGS, P.TFLAG_SEND_FLUSH, P.TFLAG_SEND_FUA, P.TFLAG_SEND_TRIM, P.TFLAG_SEND_WRITE_ZEROES, P.TFLAG_SEND_FAST_ZERO, P.TFLAG_SEND_CACHE, P.TFLAG_SEND_DF, P.TFLAG_CAN_MULTI_CONN]) {
      expect(f & flag).toBe(flag);
    }
    expect(f & P.TFLAG_READ_ONLY).toBe(0);
    expect(h.provider.opens).toBe(1);
  });

  it('does not advertise DF without structured replies, and marks read-only exports', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    await c.go('ro', []);
    expect(c.transmissionFlags & P.TFLAG_SEND_DF).toBe(0);
    expect(c.transmissionFlags & P.TFLAG_READ_ONLY).toBe(P.TFLAG_READ_ONLY);
  });

  it('answers INFO without opening the export, then GO', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    const info = await c.option(P.OPT_INFO, encodeInfoRequest('small', []));
    expect(info.map((r) => r.type)).toEqual([P.REP_INFO, P.REP_INFO, P.REP_ACK]);
    expect(h.provider.opens).toBe(0);
    await c.go('small');
    expect(c.exportSize).toBe(8192);
  });

  it('refuses an unknown export with ERR_UNKNOWN and a message, and keeps negotiating', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    const r = await c.option(P.OPT_GO, encodeInfoRequest('nope', []));
    expect(r).toHaveLength(1);
    expect(r[0]!.type).toBe(P.REP_ERR_UNKNOWN);
    expect(r[0]!.data.toString()).toContain('nope');
    const i = await c.option(P.OPT_INFO, encodeInfoRequest('nope', []));
    expect(i[0]!.type).toBe(P.REP_ERR_UNKNOWN);
    await c.go('disk');
    expect(c.exportSize).toBe(64 * MiB);
  });

  it('refuses an existing export it cannot open now (etcd unreachable) with POLICY, not UNKNOWN, carrying the code, and logs the real error', async () => {
    const h = harness();
    const down = new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'etcd at 127.0.0.1:2379 is unavailable (get /torus/volumes/disk): connection refused');
    const open = h.provider.open.bind(h.provider);
    const describe = h.provider.describe.bind(h.provider);
    let failing = true;
    h.provider.open = (name, client) => (failing ? Promise.reject(down) : open(name, client));
    h.provider.describe = (name) => (failing ? Promise.reject(down) : describe(name));
    const c = await NbdTestClient.connect(h.start().client);
    for (const option of [P.OPT_GO, P.OPT_INFO]) {
      const r = await c.option(option, encodeInfoRequest('disk', []));
      expect(r).toHaveLength(1);
      expect(r[0]!.type).toBe(P.REP_ERR_POLICY);
      expect(r[0]!.data.toString()).toMatch(/^TORUS_ERR_ETCD_UNAVAILABLE: etcd at .* connection refused/);
    }
    const logged = h.logs.filter((l) => l.msg === 'nbd export refused');
    expect(logged).toHaveLength(2);
    expect(logged[0]).toMatchObject({ level: 40, option: 'go', export: 'disk', reply: 'NBD_REP_ERR_POLICY', err: { code: 'TORUS_ERR_ETCD_UNAVAILABLE' } });
    // Negotiation goes on: once etcd answers, the same connection gets the export.
    failing = false;
    await c.go('disk');
    expect(c.exportSize).toBe(64 * MiB);
  });

  it('refuses an export in use by policy, naming the holder', async () => {
    const h = harness();
    const first = await openExport(h.start().client, 'excl');
    const c = await NbdTestClient.connect(h.start().client);
    const r = await c.option(P.OPT_GO, encodeInfoRequest('excl', []));
    expect(r[0]!.type).toBe(P.REP_ERR_POLICY);
    expect(r[0]!.data.toString()).toContain('TORUS_ERR_VOLUME_IN_USE');
    expect(r[0]!.data.toString()).toContain('test:1');
    await first.disconnect();
    await waitFor('release of excl', () => h.provider.disk('excl').holder === null, 5000);
    await c.go('excl');
  });

  it('answers EXPORT_NAME with size and flags, padded unless NO_ZEROES', async () => {
    const h = harness();
    const padded = await NbdTestClient.connect(h.start().client, P.FLAG_C_FIXED_NEWSTYLE);
    await padded.exportName('small', false);
    expect(padded.exportSize).toBe(8192);
    expect(padded.transmissionFlags & P.TFLAG_HAS_FLAGS).toBe(1);
    await padded.write(0, Buffer.from('hi'));
    expect((await padded.read(0, 2)).toString()).toBe('hi');

    const bare = await NbdTestClient.connect(h.start().client);
    await bare.exportName('small', true);
    expect(bare.exportSize).toBe(8192);
  });

  it('closes the connection when EXPORT_NAME names an unknown export', async () => {
    const h = harness();
    const { session, client } = h.start();
    const c = await NbdTestClient.connect(client);
    c.sendOption(P.OPT_EXPORT_NAME, Buffer.from('nope'));
    await c.reader.closed;
    await session.closed;
  });

  it('lists exports, and refuses LIST with data', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    const r = await c.option(P.OPT_LIST);
    const servers = r.filter((x) => x.type === P.REP_SERVER).map((x) => {
      const len = x.data.readUInt32BE(0);
      return [x.data.toString('utf8', 4, 4 + len), x.data.toString('utf8', 4 + len)];
    });
    expect(servers).toEqual([
      ['disk', 'a test disk'],
      ['small', ''],
      ['ro', ''],
      ['excl', ''],
    ]);
    expect(r[r.length - 1]!.type).toBe(P.REP_ACK);
    expect((await c.option(P.OPT_LIST, Buffer.from('x')))[0]!.type).toBe(P.REP_ERR_INVALID);
  });

  it('answers unknown options and STARTTLS with ERR_UNSUP and keeps parsing', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    expect((await c.option(42, Buffer.from('payload bytes')))[0]!.type).toBe(P.REP_ERR_UNSUP);
    expect((await c.option(P.OPT_STARTTLS))[0]!.type).toBe(P.REP_ERR_UNSUP);
    expect((await c.option(4))[0]!.type).toBe(P.REP_ERR_UNSUP);
    expect((await c.option(P.OPT_STRUCTURED_REPLY, Buffer.from('x')))[0]!.type).toBe(P.REP_ERR_INVALID);
    await c.structuredReplies();
    expect((await c.option(P.OPT_STRUCTURED_REPLY))[0]!.type).toBe(P.REP_ERR_INVALID);
    await c.go('disk');
  });

  it('acknowledges ABORT and closes', async () => {
    const h = harness();
    const { session, client } = h.start();
    const c = await NbdTestClient.connect(client);
    expect((await c.option(P.OPT_ABORT))[0]!.type).toBe(P.REP_ACK);
    client.end();
    await session.closed;
  });

  it('lists and sets the base:allocation meta context', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    const metaNames = (r: Awaited<ReturnType<typeof c.option>>) =>
      r.filter((x) => x.type === P.REP_META_CONTEXT).map((x) => [x.data.readUInt32BE(0), x.data.toString('utf8', 4)]);
    // SET needs structured replies first
    expect((await c.setMetaContext('disk', ['base:allocation']))[0]!.type).toBe(P.REP_ERR_INVALID);
    await c.structuredReplies();
    expect(metaNames(await c.option(P.OPT_LIST_META_CONTEXT, encodeMetaContextRequest('disk', [])))).toEqual([[0, 'base:allocation']]);
    expect(metaNames(await c.option(P.OPT_LIST_META_CONTEXT, encodeMetaContextRequest('disk', ['base:'])))).toEqual([[0, 'base:allocation']]);
    const none = await c.option(P.OPT_LIST_META_CONTEXT, encodeMetaContextRequest('disk', ['qemu:dirty-bitmap:x']));
    expect(none.map((x) => x.type)).toEqual([P.REP_ACK]);
    expect((await c.option(P.OPT_LIST_META_CONTEXT, encodeMetaContextRequest('nope', [])))[0]!.type).toBe(P.REP_ERR_UNKNOWN);
    expect((await c.option(P.OPT_SET_META_CONTEXT, Buffer.from([0, 0])))[0]!.type).toBe(P.REP_ERR_INVALID);
    // "base:" selects nothing in SET
    expect((await c.setMetaContext('disk', ['base:'])).map((x) => x.type)).toEqual([P.REP_ACK]);
    expect(metaNames(await c.setMetaContext('disk', ['x-foo:bar', 'base:allocation']))).toEqual([[P.META_CONTEXT_BASE_ALLOCATION_ID, 'base:allocation']]);
    await c.go('disk');
    const bs = await c.blockStatus(0, MiB);
    expect(bs.error).toBe(0);
    expect(bs.contextId).toBe(P.META_CONTEXT_BASE_ALLOCATION_ID);
    expect(bs.extents).toEqual([{ length: MiB, flags: P.STATE_HOLE | P.STATE_ZERO }]);
  });

  it('refuses BLOCK_STATUS when the meta context was set for another export', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start().client);
    await c.structuredReplies();
    await c.setMetaContext('small', ['base:allocation']);
    await c.go('disk');
    const r = await c.blockStatus(0, 4096);
    expect(r.error).toBe(P.NBD_EINVAL);
  });

  it('closes a client that sends too many options', async () => {
    const h = harness();
    const { session, client } = h.start({ optionsMax: 3 });
    const c = await NbdTestClient.connect(client);
    for (let i = 0; i < 3; i++) expect((await c.option(42))[0]!.type).toBe(P.REP_ERR_UNSUP);
    c.sendOption(42);
    await c.reader.closed;
    await session.closed;
    expect(h.logs.some((l) => l.reason === 'too many options')).toBe(true);
  });

  it('skips an oversized option with ERR_TOO_BIG and keeps going', async () => {
    const h = harness();
    const c = await NbdTestClient.connect(h.start({ optionBytesMax: 64 }).client);
    expect((await c.option(P.OPT_GO, Buffer.alloc(1000, 7)))[0]!.type).toBe(P.REP_ERR_TOO_BIG);
    await c.go('disk');
  });

  it('closes a client that does not finish the handshake in time', async () => {
    const h = harness();
    const { session, client } = h.start({ handshakeTimeoutMs: 50 });
    const c = await NbdTestClient.connect(client);
    await c.reader.closed;
    await session.closed;
    expect(h.logs.some((l) => l.reason === 'handshake not finished in time')).toBe(true);
  });
});

/** Two sessions sharing one byte budget, over a disk whose requests wait for `gate`. */
async function twoSessionsOnOneBudget(bytes: number) {
  const h = harness();
  const budget = new ByteBudget(bytes);
  const a = await openExport(h.start({}, budget).client, 'disk');
  const bSide = h.start({}, budget);
  const b = await openExport(bSide.client, 'disk');
  const disk = h.provider.disk('disk');
  const gate = deferred();
  disk.interceptor = async () => {
    await gate.promise;
  };
  return { budget, a, b, bSide, disk, gate };
}

describe('NbdSession transmission', () => {
  for (const structured of [false, true]) {
    it(`writes and reads back at odd offsets (${structured ? 'structured' : 'simple'} replies)`, async () => {
      const h = harness();
      const c = await openExport(h.start().client, 'disk', { structured });
      const data = pattern(3333, 5);
      await c.write(1000, data);
      const r = await c.request({ type: P.CMD_READ, offset: 1000, length: 3333 });
      expect(r.structured).toBe(structured);
      expect(r.data).toEqual(data);
      expect((await c.read(0, 1000)).equals(Buffer.alloc(1000))).toBe(true);
      expect(h.provider.disk('disk').peek(1000, 3333)).toEqual(data);
    });
  }

  it('accepts DF reads with structured replies and answers them in one chunk', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'disk');
    h.provider.disk('disk').poke(0, Buffer.alloc(65536, 9));
    const r = await c.request({ type: P.CMD_READ, offset: 0, length: 65536, flags: P.CMD_FLAG_DF });
    expect(r.error).toBe(0);
    expect(r.data).toEqual(Buffer.alloc(65536, 9));
  });

  it('answers an export call that throws instead of rejecting with an error reply, and goes on serving', async () => {
    const h = harness();
    const open = h.provider.open.bind(h.provider);
    h.provider.open = async (name, o) => {
      const exp = await open(name, o);
      const write = exp.write.bind(exp);
      exp.write = (offset, data, fua) => {
        if (offset === 8192) throw new TorusError('TORUS_ERR_IO_OUT_OF_RANGE', 'thrown, not rejected');
        return write(offset, data, fua);
      };
      return exp;
    };
    const c = await openExport(h.start().client, 'disk');
    const disk = h.provider.disk('disk');
    const r = await c.request({ type: P.CMD_WRITE, offset: 8192, data: Buffer.alloc(512, 1) });
    expect(r.error).toBe(P.NBD_EINVAL);
    await c.write(0, Buffer.alloc(512, 2));
    expect(disk.peek(0, 512)).toEqual(Buffer.alloc(512, 2));
    expect(disk.peek(8192, 512)).toEqual(Buffer.alloc(512));
    expect(h.broken).toEqual([]);
  });

  it('handles requests concurrently and replies out of order', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'disk');
    const disk = h.provider.disk('disk');
    for (let i = 0; i < 4; i++) disk.poke(i * 4096, Buffer.alloc(4096, i + 1));
    const gates = new Map<number, ReturnType<typeof deferred>>();
    disk.interceptor = async (op, offset) => {
      if (op !== 'read') return;
      const g = deferred();
      gates.set(offset, g);
      await g.promise;
    };
    const replies = [0, 1, 2, 3].map((i) => c.request({ type: P.CMD_READ, offset: i * 4096, length: 4096, cookie: BigInt(100 + i) }));
    // All four reach the export before any of them completes.
    await waitFor('4 reads in the export', () => gates.size === 4, 5000);
    for (const i of [3, 2, 1, 0]) {
      gates.get(i * 4096)!.resolve();
      await waitFor(`reply ${i}`, () => c.replyOrder.includes(BigInt(100 + i)), 5000);
    }
    const got = await Promise.all(replies);
    expect(c.replyOrder).toEqual([103n, 102n, 101n, 100n]);
    got.forEach((r, i) => expect(r.data).toEqual(Buffer.alloc(4096, i + 1)));
  });

  it('does not flush before the writes in flight when FLUSH arrived have completed', async () => {
    const h = harness();
    const { session, client } = h.start();
    const c = await openExport(client, 'disk');
    const disk = h.provider.disk('disk');
    const gates: Array<ReturnType<typeof deferred>> = [];
    let writesDone = 0;
    let writesDoneAtFlush = -1;
    disk.interceptor = async (op) => {
      if (op === 'write') {
        const g = deferred();
        gates.push(g);
        await g.promise;
        writesDone++;
      }
      if (op === 'flush') writesDoneAtFlush = writesDone;
    };
    const w1 = c.write(0, Buffer.alloc(512, 1));
    const w2 = c.write(4096, Buffer.alloc(512, 2));
    const f = c.flush();
    await waitFor('3 requests in flight', () => session.inflightCount === 3 && gates.length === 2, 5000);
    await settle();
    expect(disk.stats.flushes).toBe(0);
    gates[1]!.resolve();
    await w2;
    await settle();
    expect(disk.stats.flushes).toBe(0);
    gates[0]!.resolve();
    await w1;
    const fr = await f;
    expect(fr.error).toBe(0);
    expect(writesDoneAtFlush).toBe(2);
    expect(c.replyOrder.indexOf(fr.cookie)).toBe(2);
  });

  it('answers invalid requests with errors and keeps the connection working (simple replies)', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'small', { structured: false });
    const expectErr = async (spec: Parameters<typeof c.request>[0], errno: number) => {
      const r = await c.request(spec);
      expect(r.error, JSON.stringify({ ...spec, data: undefined })).toBe(errno);
      expect(r.data).toBeUndefined();
    };
    await expectErr({ type: P.CMD_READ, offset: 8000, length: 193 }, P.NBD_EINVAL);
    await expectErr({ type: P.CMD_WRITE, offset: 8000, data: Buffer.alloc(193, 1) }, P.NBD_ENOSPC);
    await expectErr({ type: P.CMD_WRITE_ZEROES, offset: 8192, length: 1 }, P.NBD_ENOSPC);
    await expectErr({ type: P.CMD_TRIM, offset: 0, length: 9000 }, P.NBD_EINVAL);
    await expectErr({ type: P.CMD_READ, offset: 0, length: 0 }, P.NBD_EINVAL);
    await expectErr({ type: P.CMD_READ, length: 16, flags: 0x40 }, P.NBD_EINVAL);
    await expectErr({ type: P.CMD_WRITE, data: Buffer.alloc(16, 3), flags: P.CMD_FLAG_NO_HOLE }, P.NBD_EINVAL);
    await expectErr({ type: P.CMD_READ, length: 16, flags: P.CMD_FLAG_DF }, P.NBD_EINVAL);
    await expectErr({ type: P.CMD_TRIM, length: 16, flags: P.CMD_FLAG_REQ_ONE }, P.NBD_EINVAL);
    await expectErr({ type: P.CMD_BLOCK_STATUS, length: 16 }, P.NBD_EINVAL);
    await expectErr({ type: 9, length: 16 }, P.NBD_EINVAL);
    // the refused writes' payloads were consumed: the stream is still in step
    await c.write(100, Buffer.from('still here'));
    expect((await c.read(100, 10)).toString()).toBe('still here');
    expect(h.provider.disk('small').peek(8000, 192).equals(Buffer.alloc(192))).toBe(true);
  });

  it('sends structured errors with a message when structured replies are on', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'small');
    const r = await c.request({ type: P.CMD_READ, offset: 8192, length: 1 });
    expect(r.structured).toBe(true);
    expect(r.error).toBe(P.NBD_EINVAL);
    expect(r.message).toContain('beyond the end');
    const w = await c.request({ type: P.CMD_WRITE, offset: 0, data: Buffer.alloc(4), flags: P.CMD_FLAG_REQ_ONE });
    expect(w.error).toBe(P.NBD_EINVAL);
    expect(w.message).toContain('REQ_ONE');
    await c.write(0, Buffer.from('ok'));
  });

  it('consumes an oversized WRITE payload, refuses it and carries on', async () => {
    const h = harness();
    const c = await openExport(h.start({ payloadBytesMax: 64 * 1024, payloadDiscardBytesMax: 1 * MiB }).client, 'disk');
    const big = await c.request({ type: P.CMD_WRITE, offset: 0, data: Buffer.alloc(512 * 1024, 0xaa) });
    expect(big.error).toBe(P.NBD_EINVAL);
    expect((await c.request({ type: P.CMD_READ, offset: 0, length: 64 * 1024 + 1 })).error).toBe(P.NBD_EINVAL);
    await c.write(0, Buffer.alloc(64 * 1024, 0xbb));
    expect(await c.read(0, 64 * 1024)).toEqual(Buffer.alloc(64 * 1024, 0xbb));
  });

  it('refuses writes, trims and zeroes on a read-only export with EPERM', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'ro', { structured: false });
    expect((await c.request({ type: P.CMD_WRITE, offset: 0, data: Buffer.alloc(512, 1) })).error).toBe(P.NBD_EPERM);
    expect((await c.trim(0, 512)).error).toBe(P.NBD_EPERM);
    expect((await c.zeroes(0, 512)).error).toBe(P.NBD_EPERM);
    expect((await c.read(0, 512)).equals(Buffer.alloc(512))).toBe(true);
    expect((await c.flush()).error).toBe(0);
  });

  it('trims, zeroes and reports allocation', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'small');
    await c.write(1024, Buffer.alloc(2048, 5));
    let bs = await c.blockStatus(0, 8192);
    expect(bs.extents).toEqual([
      { length: 1024, flags: 3 },
      { length: 2048, flags: 0 },
      { length: 5120, flags: 3 },
    ]);
    bs = await c.blockStatus(0, 8192, P.CMD_FLAG_REQ_ONE);
    expect(bs.extents).toEqual([{ length: 1024, flags: 3 }]);
    expect((await c.trim(1024, 1024, P.CMD_FLAG_FUA)).error).toBe(0);
    expect((await c.zeroes(2048, 100, P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO)).error).toBe(0);
    expect((await c.read(1024, 1124)).equals(Buffer.alloc(1124))).toBe(true);
    expect((await c.read(2148, 10)).equals(Buffer.alloc(10, 5))).toBe(true);
    expect((await c.request({ type: P.CMD_CACHE, offset: 0, length: 8192 })).error).toBe(0);
    const disk = h.provider.disk('small');
    expect(disk.stats).toMatchObject({ trims: 1, zeroes: 1, caches: 1, blockStatuses: 2 });
  });

  it('passes FUA through to writes', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'disk');
    await c.write(0, Buffer.alloc(10, 1), P.CMD_FLAG_FUA);
    await c.write(0, Buffer.alloc(10, 1));
    expect(h.provider.disk('disk').stats.fuaWrites).toBe(1);
  });

  it('maps export errors to NBD errors', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'disk');
    const disk = h.provider.disk('disk');
    disk.interceptor = (op) => {
      if (op === 'write') throw new TorusError('TORUS_ERR_STORE_NO_SPACE', 'data dir full');
      if (op === 'flush') throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', 'lock lost');
      if (op === 'read') throw new Error('disk on fire');
    };
    const w = await c.request({ type: P.CMD_WRITE, offset: 0, data: Buffer.alloc(8) });
    expect(w.error).toBe(P.NBD_ENOSPC);
    expect(w.message).toBe('TORUS_ERR_STORE_NO_SPACE: data dir full');
    expect((await c.flush()).error).toBe(P.NBD_EIO);
    expect((await c.request({ type: P.CMD_READ, offset: 0, length: 8 })).error).toBe(P.NBD_EIO);
    disk.interceptor = null;
    expect((await c.read(0, 8)).length).toBe(8);
  });

  it('reports every finished request to the observer', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'disk');
    await c.write(0, Buffer.alloc(4096));
    await c.read(0, 512);
    await c.request({ type: P.CMD_READ, offset: 64 * MiB, length: 1 });
    await c.flush();
    expect(h.requests.map((r) => [r.command, r.bytes, r.error])).toEqual([
      ['write', 4096, undefined],
      ['read', 512, undefined],
      ['read', 1, P.NBD_EINVAL],
      ['flush', 0, undefined],
    ]);
    expect(h.requests.every((r) => r.latencyMs >= 0)).toBe(true);
  });

  it('parses requests split into single bytes and many requests in one chunk', async () => {
    const h = harness();
    const { client } = h.start();
    const c = await openExport(client, 'disk');
    const data = pattern(1000, 1);
    const raw = Buffer.concat([encodeRequestHeader({ flags: 0, type: P.CMD_WRITE, cookie: 77n, offset: 5, length: 1000 }), data]);
    const write = c.expectReply(77n, P.CMD_WRITE, 5, 1000);
    for (const byte of raw) client.write(Buffer.from([byte]));
    expect((await write).error).toBe(0);
    expect(h.provider.disk('disk').peek(5, 1000)).toEqual(data);

    const many = Array.from({ length: 20 }, (_, i) => c.request({ type: P.CMD_READ, offset: i, length: 10, cookie: BigInt(1000 + i) }));
    expect((await Promise.all(many)).map((r) => r.error)).toEqual(Array(20).fill(0));
  });

  it('stops reading at inflightMax and resumes as requests finish', async () => {
    const h = harness();
    const { session, client } = h.start({ inflightMax: 2 });
    const c = await openExport(client, 'disk');
    const disk = h.provider.disk('disk');
    const gates: Array<ReturnType<typeof deferred>> = [];
    disk.interceptor = async (op) => {
      if (op !== 'read') return;
      const g = deferred();
      gates.push(g);
      await g.promise;
    };
    const reads = Array.from({ length: 5 }, (_, i) => c.request({ type: P.CMD_READ, offset: i * 512, length: 512 }));
    await waitFor('2 reads in the export', () => gates.length === 2, 5000);
    await settle(20);
    expect(gates.length).toBe(2);
    expect(session.inflightCount).toBe(2);
    gates[0]!.resolve();
    await waitFor('third read in the export', () => gates.length === 3, 5000);
    await settle(20);
    expect(gates.length).toBe(3);
    disk.interceptor = null;
    for (const g of gates) g.resolve();
    await waitFor('all gates', () => gates.length === 3, 5000);
    expect((await Promise.all(reads)).every((r) => r.error === 0)).toBe(true);
  });

  it('stops reading at inflightBytesMax', async () => {
    const h = harness();
    const { client } = h.start({ inflightBytesMax: 8192 });
    const c = await openExport(client, 'disk');
    const disk = h.provider.disk('disk');
    const gates: Array<ReturnType<typeof deferred>> = [];
    disk.interceptor = async (op) => {
      if (op !== 'read') return;
      const g = deferred();
      gates.push(g);
      await g.promise;
    };
    const reads = Array.from({ length: 4 }, (_, i) => c.request({ type: P.CMD_READ, offset: i * 4096, length: 4096 }));
    await waitFor('2 reads in the export', () => gates.length === 2, 5000);
    await settle(20);
    expect(gates.length).toBe(2);
    disk.interceptor = null;
    for (const g of gates) g.resolve();
    expect((await Promise.all(reads)).every((r) => r.error === 0)).toBe(true);
  });

  it('holds READ and WRITE bytes of every connection under the shared budget, and gives all of it back', async () => {
    const h = harness();
    const budget = new ByteBudget(8192);
    const conns = await Promise.all([0, 1, 2].map(() => openExport(h.start({}, budget).client, 'disk')));
    const disk = h.provider.disk('disk');
    const gates: Array<ReturnType<typeof deferred>> = [];
    disk.interceptor = async () => {
      const g = deferred();
      gates.push(g);
      await g.promise;
    };
    // Three connections, each one 4 KiB read and one 4 KiB write: two requests fit.
    const all = conns.flatMap((c, i) => [c.request({ type: P.CMD_READ, offset: i * 8192, length: 4096 }), c.write(i * 8192 + 4096, pattern(4096, i))]);
    await waitFor('2 requests in the export', () => gates.length === 2, 5000);
    await settle(20);
    expect(gates.length).toBe(2);
    expect(budget.usedBytes).toBe(8192);
    expect(budget.waiting).toBeGreaterThan(0);
    disk.interceptor = null;
    for (const g of gates) g.resolve();
    await Promise.all(all);
    await settle(5);
    expect(budget.usedBytes).toBe(0);
    expect(budget.waiting).toBe(0);
    for (const [i, c] of conns.entries()) expect((await c.read(i * 8192 + 4096, 4096)).equals(pattern(4096, i))).toBe(true);
  });

  it('serves a request larger than the shared budget alone, and a closed connection gives back what it waited for', async () => {
    const { budget, a, b, bSide, disk, gate } = await twoSessionsOnOneBudget(4096);
    const big = a.write(0, pattern(65536, 7));
    await waitFor('the large write holds the budget', () => budget.usedBytes === 65536, 5000);
    const waiting = b.request({ type: P.CMD_READ, offset: 0, length: 4096 });
    await waitFor('the read waits', () => budget.waiting === 1, 5000);
    bSide.session.destroy();
    await expect(waiting).rejects.toThrow();
    expect(budget.waiting).toBe(0);
    disk.interceptor = null;
    gate.resolve();
    await big;
    await settle(5);
    expect(budget.usedBytes).toBe(0);
  });

  it('answers a WRITE that waited for the shared budget after its client sent its last byte', async () => {
    const { budget, a, b, bSide, disk, gate } = await twoSessionsOnOneBudget(4096);
    const first = a.write(0, pattern(4096, 1));
    await waitFor('the first write holds the budget', () => budget.usedBytes === 4096, 5000);
    const second = b.write(8192, pattern(4096, 2));
    await waitFor('the second write waits', () => budget.waiting === 1, 5000);
    bSide.client.end();
    await settle(20);
    disk.interceptor = null;
    gate.resolve();
    await first;
    await second;
    expect((await a.read(8192, 4096)).equals(pattern(4096, 2))).toBe(true);
    await settle(5);
    expect(budget.usedBytes).toBe(0);
  });

  it('closes only the offending connection on a malformed stream', async () => {
    const h = harness();
    const good = await openExport(h.start().client, 'disk');
    const badSide = h.start();
    const bad = await openExport(badSide.client, 'disk');
    await good.write(0, Buffer.from('good data'));
    const r = bad.request({ type: P.CMD_READ, offset: 0, length: 4, magic: 0x12345678 });
    await expect(r).rejects.toThrow('connection closed');
    await badSide.session.closed;
    const warn = h.logs.find((l) => l.reason === 'bad request magic');
    expect(warn).toMatchObject({ level: 40, remote: 'test:2', module: 'nbd' });
    expect((await good.read(0, 9)).toString()).toBe('good data');
    // every connection that opened the export released it once closed
    expect(h.provider.releases).toBe(1);
  });

  it('closes the connection when a WRITE announces more payload than it will read', async () => {
    const h = harness();
    const { session, client } = h.start({ payloadBytesMax: 1024, payloadDiscardBytesMax: 4096 });
    const c = await openExport(client, 'disk');
    client.write(encodeRequestHeader({ flags: 0, type: P.CMD_WRITE, cookie: 1n, offset: 0, length: 4097 }));
    await c.reader.closed;
    await session.closed;
    expect(h.logs.some((l) => l.reason === 'write payload larger than the connection will read')).toBe(true);
  });

  /** A session with one READ held in flight until `gate.resolve()`. */
  async function withHeldRead() {
    const h = harness();
    const { session, client } = h.start();
    const c = await openExport(client, 'disk');
    const gate = deferred();
    h.provider.disk('disk').interceptor = async (op) => {
      if (op === 'read') await gate.promise;
    };
    const r = c.request({ type: P.CMD_READ, offset: 0, length: 100 });
    await waitFor('read in flight', () => session.inflightCount === 1, 5000);
    return { h, session, client, c, gate, r };
  }

  it('answers in-flight requests before closing on DISC, then releases the export', async () => {
    const { h, session, c, gate, r } = await withHeldRead();
    const disc = c.disconnect();
    await settle();
    gate.resolve();
    expect((await r).error).toBe(0);
    await disc;
    await session.closed;
    expect(h.provider.releases).toBe(1);
    expect(h.provider.disk('disk').openCount).toBe(0);
  });

  it('close() lets in-flight requests reply, then ends the connection', async () => {
    const { h, session, client, c, gate, r } = await withHeldRead();
    const closing = session.close();
    await settle();
    gate.resolve();
    expect((await r).error).toBe(0);
    await waitFor('server end', () => c.reader.atEnd, 5000);
    client.end();
    await closing;
    expect(h.provider.releases).toBe(1);
  });

  it('releases the export when the client just goes away', async () => {
    const h = harness();
    const { session, client } = h.start();
    await openExport(client, 'disk');
    client.destroy();
    await session.closed;
    expect(h.provider.releases).toBe(1);
  });
});

describe('NbdSession and broken invariants', () => {
  const bug = () => new TorusError('TORUS_ERR_ASSERTION', 'assertion failed: a block entry is pinned');

  for (const structured of [false, true]) {
    it(`reports an assertion failure of a request to the hook and sends no error reply (${structured ? 'structured' : 'simple'} replies)`, async () => {
      const h = harness();
      const { session, client } = h.start();
      const c = await openExport(client, 'disk', { structured });
      h.provider.disk('disk').interceptor = (op) => {
        if (op === 'read') throw bug();
      };
      // No EIO comes back: the connection ends without an answer.
      await expect(c.request({ type: P.CMD_READ, offset: 4096, length: 512 })).rejects.toThrow('connection closed');
      await session.closed;
      expect(h.broken).toHaveLength(1);
      expect(h.broken[0]!.err.code).toBe('TORUS_ERR_ASSERTION');
      expect(h.broken[0]!.context).toMatchObject({ module: 'nbd', remote: 'test:1', export: 'disk', command: 'read', offset: 4096, length: 512 });
      expect(h.provider.releases).toBe(1);
    });
  }

  it('takes an export that breaks its contract (a short read) for an assertion failure', async () => {
    const h = harness();
    const open = h.provider.open.bind(h.provider);
    h.provider.open = async (name, client) => {
      const e = await open(name, client);
      return Object.assign(Object.create(e) as typeof e, { read: async (o: number, l: number) => (await e.read(o, l)).subarray(0, l - 1) });
    };
    const { session, client } = h.start();
    const c = await openExport(client, 'disk');
    await expect(c.read(0, 100)).rejects.toThrow('connection closed');
    await session.closed;
    expect(h.broken.map((b) => b.err.message)).toEqual(['assertion failed: the export returned 99 bytes for a 100-byte read']);
  });

  it('reports an assertion failure while opening an export instead of refusing it by policy', async () => {
    const h = harness();
    h.provider.open = () => Promise.reject(bug());
    const { session, client } = h.start();
    const c = await NbdTestClient.connect(client);
    await expect(c.option(P.OPT_GO, encodeInfoRequest('disk', []))).rejects.toThrow('connection closed');
    await session.closed;
    expect(h.broken.map((b) => b.context)).toEqual([{ module: 'nbd', remote: 'test:1', option: 'go', export: 'disk' }]);
  });

  it('still answers ordinary errors with their NBD error, and the connection lives', async () => {
    const h = harness();
    const c = await openExport(h.start().client, 'disk');
    h.provider.disk('disk').interceptor = (op) => {
      if (op === 'write') throw new TorusError('TORUS_ERR_STORE_NO_SPACE', 'data dir full');
      if (op === 'read') throw new TorusError('TORUS_ERR_STORE_IO', 'disk on fire');
    };
    const w = await c.request({ type: P.CMD_WRITE, offset: 0, data: Buffer.alloc(8) });
    expect([w.error, w.message]).toEqual([P.NBD_ENOSPC, 'TORUS_ERR_STORE_NO_SPACE: data dir full']);
    const r = await c.request({ type: P.CMD_READ, offset: 0, length: 8 });
    expect([r.error, r.message]).toEqual([P.NBD_EIO, 'TORUS_ERR_STORE_IO: disk on fire']);
    h.provider.disk('disk').interceptor = null;
    expect((await c.read(0, 8)).length).toBe(8);
    expect(h.broken).toEqual([]);
  });
});
