import { randomBytes as cryptoRandomBytes, randomUUID } from 'node:crypto';

/**
 * Randomness, injected so that a simulation replays exactly from a seed.
 * Production code on the replication paths takes a Random; only the
 * defaults below touch the system's entropy.
 */
export interface Random {
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [0, n). */
  int(n: number): number;
  bytes(n: number): Buffer;
}

/** Fresh identifiers (peer incarnations, request nonces), injected for the same reason. */
export interface Ids {
  uuid(): string;
}

export const systemRandom: Random = {
  next: () => Math.random(),
  int: (n) => Math.floor(Math.random() * n),
  bytes: (n) => cryptoRandomBytes(n),
};

export const systemIds: Ids = { uuid: () => randomUUID() };

/**
 * A seeded generator (SplitMix32 state, Mulberry32 output): fast, good
 * enough spread for tests and simulations, and the same sequence for the
 * same seed on every machine.
 */
export class SeededRandom implements Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }

  private u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  next(): number {
    return this.u32() / 2 ** 32;
  }

  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      for (let k = 0; k < 4 && i + k < n; k++) b[i + k] = (v >>> (8 * k)) & 0xff;
    }
    return b;
  }
}

/** Uuid-shaped ids from a seeded generator. */
export class SeededIds implements Ids {
  constructor(private readonly random: Random) {}

  uuid(): string {
    const h = this.random.bytes(16).toString('hex');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
  }
}
