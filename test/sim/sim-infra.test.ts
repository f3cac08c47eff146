/**
 * The simulator's own machinery: virtual time with processes, and the
 * simulated network. A checker built on a broken clock or network proves
 * nothing, so these are tested on their own first.
 */
import { describe, expect, it } from 'vitest';
import { TorusError, isTorusError } from '../../src/errors/torus-error.js';
import type { ReplicaApi } from '../../src/model/replica-api.js';
import { SeededRandom } from '../../src/util/random.js';
import { SimClock, SimProcess, runUntil } from './sim-clock.js';
import { NO_FAULTS, SimNetwork } from './sim-network.js';

describe('SimClock', () => {
  it('runs timers in due order, ties in insertion order, and moves time to each', async () => {
    const clock = new SimClock();
    const p = new SimProcess('p', clock);
    const seen: string[] = [];
    clock.schedule(p, 20, () => seen.push(`b@${clock.monotonic()}`));
    clock.schedule(p, 10, () => seen.push(`a@${clock.monotonic()}`));
    clock.schedule(p, 20, () => seen.push(`c@${clock.monotonic()}`));
    const cancelled = clock.schedule(p, 15, () => seen.push('never'));
    cancelled.cancel();
    expect(await runUntil(clock, () => false, 1_000)).toBe('idle');
    expect(seen).toEqual(['a@10', 'b@20', 'c@20']);
  });

  it('lets microtasks settle between timers, so a continuation runs at the instant that caused it', async () => {
    const clock = new SimClock();
    const p = new SimProcess('p', clock);
    const c = clock.clockFor(p);
    const seen: number[] = [];
    const sleep = (ms: number) => new Promise<void>((r) => c.setTimeout(r, ms));
    void (async () => {
      await sleep(5);
      await Promise.resolve();
      await Promise.resolve();
      seen.push(c.monotonic());
    })();
    c.setTimeout(() => seen.push(c.monotonic()), 7);
    await runUntil(clock, () => false, 100);
    expect(seen).toEqual([5, 7]);
  });

  it('holds a frozen process\'s timers until the thaw, in order, and never runs a dead one\'s', async () => {
    const clock = new SimClock();
    const p = new SimProcess('p', clock);
    const q = new SimProcess('q', clock);
    const ops = new SimProcess('ops', clock);
    const seen: string[] = [];
    clock.schedule(p, 10, () => seen.push(`p1@${clock.monotonic()}`));
    const dropped = clock.schedule(p, 11, () => seen.push('cancelled while held'));
    clock.schedule(p, 12, () => seen.push(`p2@${clock.monotonic()}`));
    clock.schedule(q, 10, () => seen.push('q'));
    clock.schedule(ops, 1, () => {
      p.freeze();
      q.kill();
    });
    clock.schedule(ops, 11.5, () => dropped.cancel());
    clock.schedule(ops, 50, () => p.thaw());
    await runUntil(clock, () => false, 1_000);
    expect(seen).toEqual(['p1@50', 'p2@50']);
  });

  it('a suspended process (a paused VM) reads stopped clocks, takes held messages at the resume and runs its timers by its own clock', async () => {
    const clock = new SimClock();
    const p = new SimProcess('p', clock);
    const ops = new SimProcess('ops', clock);
    const c = clock.clockFor(p);
    const seen: string[] = [];
    c.setTimeout(() => seen.push(`held timer@${clock.monotonic()}/${c.monotonic()}`), 30);
    c.setTimeout(() => seen.push(`later timer@${clock.monotonic()}/${c.monotonic()}`), 200);
    clock.schedule(ops, 20, () => p.freeze({ suspend: true }));
    clock.schedule(ops, 40, () => p.fire(() => seen.push(`message@${clock.monotonic()}/${c.monotonic()}`)));
    clock.schedule(ops, 60, () => seen.push(`while suspended p reads ${c.monotonic()}`));
    clock.schedule(ops, 120, () => p.thaw());
    await runUntil(clock, () => false, 1_000);
    // 100 ms suspended: p's clocks read 100 less from then on; its timers fall due 100 later.
    expect(seen).toEqual(['while suspended p reads 20', 'message@120/20', 'held timer@130/30', 'later timer@300/200']);
    expect(c.now() - clock.now()).toBe(-100);
  });

  it('stops at a deadline with time moved to it', async () => {
    const clock = new SimClock();
    const p = new SimProcess('p', clock);
    clock.schedule(p, 500, () => undefined);
    expect(await runUntil(clock, () => false, 100)).toBe('deadline');
    expect(clock.monotonic()).toBe(100);
  });
});

/** A replica stand-in that records what it got and answers with what it was told. */
function echoReplica(log: string[], name: string): ReplicaApi {
  const api = {
    async write(_ctx: unknown, _ref: unknown, _off: number, data: Buffer) {
      log.push(`${name}:write:${data.toString()}`);
      data.fill(0x78); // a receiver scribbling on its buffer must not touch the sender's
    },
    async read() {
      return { meta: { state: 'data', version: 1, suspect: false, digest: 0 }, data: Buffer.from('hello') };
    },
    async flush() {
      throw new TorusError('TORUS_ERR_STORE_IO', 'disk on fire', { details: { why: 'test' } });
    },
    async hello() {
      return new Promise(() => undefined); // never answers
    },
    fence() {
      throw new TorusError('TORUS_ERR_PEER_NOT_LIVE', 'thrown synchronously');
    },
    async usage() {
      throw new Error('a bug');
    },
  };
  return api as unknown as ReplicaApi;
}

function makeNet(seed = 1) {
  const clock = new SimClock();
  const wire = new SimProcess('wire', clock);
  const bugs: string[] = [];
  const net = new SimNetwork(clock, wire, new SeededRandom(seed), { delayMinMs: 1, delayMaxMs: 3, reorderMaxMs: 20, onBug: (w) => bugs.push(w) });
  return { clock, net, bugs };
}

const CTX = { ringVersion: 1 };
const REF = { volumeId: 1, generation: 1, index: 0 };
const STAMP = { token: 1, version: 1, prev: -1 };

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return isTorusError(err) ? err.code : 'bug';
  }
}

describe('SimNetwork', () => {
  it('delivers in FIFO order per link, copies buffers both ways, and carries errors by code', async () => {
    const { clock, net, bugs } = makeNet();
    const log: string[] = [];
    const a = new SimProcess('a', clock);
    const b = new SimProcess('b', clock);
    net.attach('b', b, echoReplica(log, 'b'));
    const toB = net.transportFor('a', a).peer('b')!;
    expect(net.transportFor('a', a).peer('nobody')).toBeNull();
    const sent: Buffer[] = [];
    const results: Promise<unknown>[] = [];
    for (let i = 0; i < 20; i++) {
      const buf = Buffer.from(`m${i}`);
      sent.push(buf);
      results.push(toB.write(CTX, REF, 0, buf, STAMP, { fua: false }));
    }
    const read = toB.read(CTX, REF, 0, 5);
    const flush = outcome(toB.flush(CTX));
    const fence = outcome(toB.fence(CTX, 1, 1));
    const usage = outcome(toB.usage(CTX));
    await runUntil(clock, () => false, 10_000);
    await Promise.all(results);
    expect(log).toEqual(sent.map((_, i) => `b:write:m${i}`));
    expect(sent.map((s) => s.toString())).toEqual(sent.map((_, i) => `m${i}`));
    expect((await read).data.toString()).toBe('hello');
    expect(await flush).toBe('TORUS_ERR_STORE_IO');
    expect(await fence).toBe('TORUS_ERR_PEER_NOT_LIVE');
    expect(await usage).toBe('bug');
    expect(bugs).toEqual(['b.usage']);
    expect(net.linkStats().get('a>b')!.messages).toBe(24);
  });

  it('refuses calls to a peer that is down, resets calls held by one that dies, holds calls to a frozen one', async () => {
    const { clock, net } = makeNet();
    const log: string[] = [];
    const a = new SimProcess('a', clock);
    const b = new SimProcess('b', clock);
    const ops = new SimProcess('ops', clock);
    net.attach('b', b, echoReplica(log, 'b'));
    const toB = net.transportFor('a', a).peer('b')!;
    const hanging = outcome(toB.hello(CTX));
    clock.schedule(ops, 50, () => b.kill());
    await runUntil(clock, () => false, 100);
    expect(await hanging).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(await outcomeAfterRun(clock, toB.write(CTX, REF, 0, Buffer.from('x'), STAMP, { fua: false }))).toBe('TORUS_ERR_PEER_UNAVAILABLE');
    expect(log).toEqual([]);

    const b2 = new SimProcess('b2', clock);
    net.attach('b', b2, echoReplica(log, 'b2'));
    b2.freeze();
    let done = false;
    const w = toB.write(CTX, REF, 0, Buffer.from('y'), STAMP, { fua: false }).then(() => (done = true));
    await runUntil(clock, () => false, clock.monotonic() + 1_000);
    expect(done).toBe(false);
    expect(log).toEqual([]);
    b2.thaw();
    await runUntil(clock, () => false, clock.monotonic() + 1_000);
    await w;
    expect(log).toEqual(['b2:write:y']);
  });

  it('drops a request over a one-way partition but serves it when only the reply way is cut', async () => {
    const { clock, net } = makeNet();
    const log: string[] = [];
    const a = new SimProcess('a', clock);
    const b = new SimProcess('b', clock);
    net.attach('b', b, echoReplica(log, 'b'));
    const toB = net.transportFor('a', a).peer('b')!;
    let answered = 0;
    net.block('a', 'b');
    void toB.write(CTX, REF, 0, Buffer.from('1'), STAMP, { fua: false }).then(() => answered++);
    await runUntil(clock, () => false, 1_000);
    net.healAll();
    net.block('b', 'a');
    void toB.write(CTX, REF, 0, Buffer.from('2'), STAMP, { fua: false }).then(() => answered++);
    await runUntil(clock, () => false, 2_000);
    expect(log).toEqual(['b:write:2']);
    expect(answered).toBe(0);
  });

  it('duplicates and reorders as faults, and replays the same from the same seed', async () => {
    const trace = async (seed: number) => {
      const { clock, net } = makeNet(seed);
      const log: string[] = [];
      const a = new SimProcess('a', clock);
      net.attach('b', new SimProcess('b', clock), echoReplica(log, 'b'));
      net.setFaults({ ...NO_FAULTS, duplicate: 0.3, reorder: 0.3 });
      const toB = net.transportFor('a', a).peer('b')!;
      for (let i = 0; i < 40; i++) void toB.write(CTX, REF, 0, Buffer.from(`${i}`), STAMP, { fua: false });
      await runUntil(clock, () => false, 10_000);
      return log;
    };
    const one = await trace(7);
    expect(one.length).toBeGreaterThan(40);
    const order = one.map((s) => Number(s.split(':')[2]));
    expect(order.some((v, i) => i > 0 && v < order[i - 1]!)).toBe(true);
    expect(await trace(7)).toEqual(one);
    expect(await trace(8)).not.toEqual(one);
  });
});

async function outcomeAfterRun(clock: SimClock, p: Promise<unknown>): Promise<string> {
  const o = outcome(p);
  await runUntil(clock, () => false, clock.monotonic() + 1_000);
  return o;
}

describe('MemoryBlockStore.inspect (the checkers\' view of a copy)', () => {
  it('shows the visible and the durable state without touching either', async () => {
    const { MemoryBlockStore } = await import('../../src/store/memory-block-store.js');
    const store = new MemoryBlockStore({ blockSize: 4096, capacity: 1 << 20 });
    const ref = { volumeId: 1, generation: 1, index: 2 };
    expect(store.inspect(ref)).toEqual({ visible: null, durable: null, suspect: false });
    await store.write(ref, 0, Buffer.alloc(512, 1), 5, { fua: false });
    expect(store.inspect(ref).visible?.version).toBe(5);
    expect(store.inspect(ref).durable).toBeNull();
    await store.flush();
    await store.zero(ref, 0, 4096, 6, { punch: true, fua: false });
    const seen = store.inspect(ref);
    expect(seen.visible).toEqual({ state: 'zero', version: 6, data: null });
    expect(seen.durable?.version).toBe(5);
    expect(seen.durable?.data?.[0]).toBe(1);
  });
});
