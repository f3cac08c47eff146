/**
 * Seeded NBD fuzzing shared by the in-process server test (nbd-fuzz) and the
 * end-to-end torusd test (e2e-bad-input): a deterministic RNG, generators for
 * garbage, truncated handshakes, random options and garbled requests, and
 * connections that send them. Everything derives from one seed, so a failure
 * is reproduced by running again with the seed it printed.
 */
import net from 'node:net';
import { encodeInfoRequest, encodeOptionHeader } from '../../src/nbd/codec.js';
import * as P from '../../src/nbd/protocol.js';

const MiB = 1024 * 1024;

/** mulberry32: small, fast, deterministic. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  int(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      for (let j = 0; j < 4 && i + j < n; j++) b[i + j] = (v >>> (8 * j)) & 0xff;
    }
    return b;
  }
}

/**
 * The seed from `envVar` when set (to reproduce a failure), else a random one.
 * The test must print it when it fails, or the run cannot be repeated.
 */
export function fuzzSeed(envVar: string): number {
  const v = process.env[envVar];
  return v !== undefined ? Number(v) : Math.floor(Math.random() * 0xffffffff);
}

/** What the fuzzer aims at. */
export interface FuzzTarget {
  /** The export that handshakes ask for, so that requests reach transmission. */
  readonly exportName: string;
  /** The export's size: request offsets fall below it or just past its end. */
  readonly offsetMax: number;
  /** Sometimes ask for a missing, empty, path-like or overlong name instead of `exportName`. */
  readonly badExportNames?: boolean;
}

function u32be(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
}

function option(opt: number, data: Buffer): Buffer {
  return Buffer.concat([encodeOptionHeader(opt, data.length), data]);
}

/** A handshake that reaches transmission on the target's export (or, with `badExportNames`, sometimes fails on a name). */
function handshake(rng: Rng, target: FuzzTarget): Buffer {
  const name = target.badExportNames && rng.chance(0.1) ? rng.pick(['', 'nope', 'good/..', 'x'.repeat(5000)]) : target.exportName;
  const parts = [u32be(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)];
  // Without structured replies, and through the old EXPORT_NAME option, the server takes other paths.
  if (rng.chance(0.7)) parts.push(option(P.OPT_STRUCTURED_REPLY, Buffer.alloc(0)));
  parts.push(rng.chance(0.8) ? option(P.OPT_GO, encodeInfoRequest(name, [P.INFO_BLOCK_SIZE])) : option(P.OPT_EXPORT_NAME, Buffer.from(name)));
  return Buffer.concat(parts);
}

/** One option, mostly with a known code and a good header, with a payload that may be garbage or lie about its length. */
function randomOption(rng: Rng, target: FuzzTarget): Buffer {
  const h = Buffer.alloc(16);
  if (rng.chance(0.9)) {
    h.writeUInt32BE(P.IHAVEOPT_HI, 0);
    h.writeUInt32BE(P.IHAVEOPT_LO, 4);
  } else {
    rng.bytes(8).copy(h, 0);
  }
  h.writeUInt32BE(rng.chance(0.8) ? rng.int(12) : rng.u32(), 8);
  const data = rng.chance(0.5) ? rng.bytes(rng.int(300)) : Buffer.from(encodeInfoRequest(rng.pick([target.exportName, 'nope', '']), [rng.int(5)]));
  h.writeUInt32BE(rng.chance(0.1) ? rng.u32() : data.length, 12);
  return Buffer.concat([h, data]);
}

/** One request header, mostly sane, sometimes garbled, with whatever payload it claims (or less, or none). */
function randomRequest(rng: Rng, target: FuzzTarget): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(rng.chance(0.9) ? P.REQUEST_MAGIC : rng.u32(), 0);
  h.writeUInt16BE(rng.chance(0.8) ? rng.pick([0, P.CMD_FLAG_FUA, P.CMD_FLAG_NO_HOLE, P.CMD_FLAG_DF, P.CMD_FLAG_REQ_ONE, P.CMD_FLAG_FAST_ZERO]) : rng.int(0x10000), 4);
  const type = rng.chance(0.9) ? rng.pick([P.CMD_READ, P.CMD_WRITE, P.CMD_FLUSH, P.CMD_TRIM, P.CMD_CACHE, P.CMD_WRITE_ZEROES, P.CMD_BLOCK_STATUS]) : rng.int(0x10000);
  h.writeUInt16BE(type, 6);
  h.writeUInt32BE(rng.u32(), 8);
  h.writeUInt32BE(rng.u32(), 12);
  const wild = rng.chance(0.1);
  h.writeUInt32BE(wild ? rng.u32() : 0, 16);
  // Mostly inside the export, a few just past its end.
  h.writeUInt32BE(wild ? rng.u32() : rng.int(target.offsetMax + 8192), 20);
  const r = rng.int(20);
  // The large lengths sit just above the payload limit, the in-flight byte limit and the discard limit.
  const length = r === 0 ? 0 : r === 1 ? rng.pick([0xffffffff, 33 * MiB, 64 * MiB + 1, 200 * MiB, rng.u32()]) : 1 + rng.int(65536);
  h.writeUInt32BE(length, 24);
  if (type !== P.CMD_WRITE || length > 65536) return h;
  return Buffer.concat([h, rng.bytes(rng.chance(0.9) ? length : rng.int(length))]);
}

/** The bytes one fuzzing connection sends, as separate writes. */
function scenario(rng: Rng, target: FuzzTarget): Buffer[] {
  // Half the connections get through the handshake: the request path has the most to break.
  switch (rng.int(6)) {
    case 0:
      return [rng.bytes(rng.int(300))];
    case 1: {
      // truncated handshake
      const hs = handshake(rng, target);
      return [hs.subarray(0, rng.int(hs.length))];
    }
    case 2: {
      const parts = [u32be(rng.chance(0.8) ? P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES : rng.u32())];
      const n = 1 + rng.int(6);
      for (let i = 0; i < n; i++) parts.push(randomOption(rng, target));
      return parts;
    }
    default: {
      const parts = [handshake(rng, target)];
      const n = 1 + rng.int(12);
      for (let i = 0; i < n; i++) {
        const req = randomRequest(rng, target);
        // sometimes cut the last request short
        parts.push(i === n - 1 && rng.chance(0.3) ? req.subarray(0, rng.int(req.length)) : req);
      }
      if (rng.chance(0.2)) parts.push(rng.bytes(rng.int(64)));
      return parts;
    }
  }
}

/** Sends `chunks` on a new connection to `port`, then hangs up (or waits for the server to). */
async function fuzzConnection(port: number, chunks: Buffer[], rng: Rng): Promise<void> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  socket.on('error', () => {
    // resets are expected
  });
  socket.on('data', () => {
    // replies are not checked: surviving is
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve) => {
    socket.once('connect', () => resolve());
    socket.once('close', () => resolve());
  });
  for (const c of chunks) {
    if (socket.destroyed) break;
    socket.write(c);
  }
  if (rng.chance(0.5)) socket.end();
  // Give the server a bounded chance to answer or hang up, then hang up ourselves.
  const timer = setTimeout(() => socket.destroy(), 20 + rng.int(150));
  await closed;
  clearTimeout(timer);
}

export interface FuzzRun {
  /** Stop starting connections after this (Date.now() time). */
  readonly deadline: number;
  /** Stop after this many connections. */
  readonly connectionsMax: number;
  /** Connections open at once. */
  readonly concurrency: number;
}

/**
 * Runs fuzzing connections against `port` until the deadline or the maximum
 * count; returns how many were started. Each connection draws its own Rng
 * from `rng` when it starts, so the n-th connection's bytes depend only on
 * the seed, whatever order the concurrent connections finish in.
 */
export async function fuzzPort(port: number, rng: Rng, target: FuzzTarget, run: FuzzRun): Promise<number> {
  let started = 0;
  const worker = async () => {
    while (started < run.connectionsMax && Date.now() < run.deadline) {
      const local = new Rng(rng.u32());
      started++;
      await fuzzConnection(port, scenario(local, target), local);
    }
  };
  await Promise.all(Array.from({ length: run.concurrency }, () => worker()));
  return started;
}
