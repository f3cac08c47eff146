import path from 'node:path';
import { TorusError } from '../errors/torus-error.js';
import { TOKEN_MAX } from '../model/version.js';
import { assert } from '../util/assert.js';
import type { Random } from '../util/random.js';
import { nodeStoreIo, writeFileDurably, type StoreIo } from './store-io.js';

/**
 * Where a peer keeps the newest fencing token per volume, so that a
 * restart never forgets one and lets an older writer back in
 * (docs/replication.md, "Fencing"). The rules (admit, learn, group the
 * saves) are the fence table's (src/replication/fence-table.ts); this is
 * only the storage under it.
 *
 * load() returns what the last save that resolved wrote (or a later one).
 * save() writes the whole table and resolves once it is durable.
 */
export interface FencePersistence {
  load(): Promise<Map<number, number>>;
  save(fences: ReadonlyMap<number, number>): Promise<void>;
}

/**
 * `<dir>/fences.json`: {"schema":1,"fences":[[volumeId, token], ...]},
 * ordered by volume id. Replaced whole on each save: a temp file,
 * fdatasync'd, renamed over the old one, the folder fsync'd. A crash
 * therefore leaves the old table or the new one, never a torn one, and a
 * save resolves only when the new one would survive power loss.
 *
 * The table stays small (one entry per volume this peer ever held, a few
 * bytes each), so writing it whole is cheaper than any log.
 */
const FILE = 'fences.json';
const SCHEMA = 1;

export class FileFencePersistence implements FencePersistence {
  readonly file: string;
  private dirReady = false;
  /** Saves run one at a time: they share the temp file. */
  private chain: Promise<void> = Promise.resolve();

  /** `io`: the file-system calls (store-io.ts); tests pass a model disk that loses what was not synced at a crash. */
  constructor(
    private readonly dir: string,
    private readonly io: StoreIo = nodeStoreIo,
  ) {
    this.file = path.join(dir, FILE);
  }

  async load(): Promise<Map<number, number>> {
    let text: string;
    try {
      text = (await this.io.readFile(this.file)).toString('utf8');
    } catch (err) {
      // Never saved: no token learnt yet. (A leftover temp file is a save
      // that did not resolve, so it promised nothing.)
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
      throw new TorusError('TORUS_ERR_STORE_IO', `cannot read ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    return decodeFences(text, this.file);
  }

  save(fences: ReadonlyMap<number, number>): Promise<void> {
    const text = encodeFences(fences);
    const run = this.chain
      .catch(() => undefined)
      .then(async () => {
        try {
          if (!this.dirReady) {
            await this.io.mkdirs(this.dir);
            // Its name too, or a crash could take the folder and every token in it.
            await this.io.fsyncDir(path.dirname(this.dir));
            this.dirReady = true;
          }
          await writeFileDurably(this.file, text, this.io);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException)?.code;
          const noSpace = code === 'ENOSPC' || code === 'EDQUOT';
          throw new TorusError(noSpace ? 'TORUS_ERR_STORE_NO_SPACE' : 'TORUS_ERR_STORE_IO', `cannot save fencing tokens to ${this.file}: ${(err as Error).message}`, { cause: err });
        }
      });
    this.chain = run;
    return run;
  }
}

export function encodeFences(fences: ReadonlyMap<number, number>): string {
  const list = [...fences].sort((a, b) => a[0] - b[0]);
  for (const [volumeId, token] of list) {
    assert(Number.isInteger(volumeId) && volumeId > 0 && volumeId <= 0xffffffff, 'a fenced volume id is a positive u32');
    assert(Number.isInteger(token) && token >= 0 && token <= TOKEN_MAX, 'a fencing token is within 0..TOKEN_MAX');
  }
  return JSON.stringify({ schema: SCHEMA, fences: list }) + '\n';
}

/** Parses fences.json; anything but a well-formed table is TORUS_ERR_STORE_CORRUPT (never an empty table: that would unfence). */
export function decodeFences(text: string, file: string): Map<number, number> {
  const bad = (why: string) => new TorusError('TORUS_ERR_STORE_CORRUPT', `${file}: ${why}; fencing tokens cannot be trusted (restore the file or re-read the fences from etcd by hand)`, { details: { file } });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  const rec = parsed as { schema?: unknown; fences?: unknown };
  if (typeof rec !== 'object' || rec === null || !Array.isArray(rec.fences)) throw bad('not a fence table');
  if (rec.schema !== SCHEMA) throw bad(`unknown schema ${JSON.stringify(rec.schema)}`);
  const out = new Map<number, number>();
  for (const item of rec.fences as unknown[]) {
    if (!Array.isArray(item) || item.length !== 2) throw bad('an entry is not [volumeId, token]');
    const [volumeId, token] = item as [unknown, unknown];
    if (!Number.isInteger(volumeId) || (volumeId as number) <= 0 || (volumeId as number) > 0xffffffff) throw bad(`volume id ${JSON.stringify(volumeId)} is not a positive u32`);
    if (!Number.isInteger(token) || (token as number) < 0 || (token as number) > TOKEN_MAX) throw bad(`token ${JSON.stringify(token)} of volume ${String(volumeId)} is out of range`);
    if (out.has(volumeId as number)) throw bad(`volume ${String(volumeId)} appears twice`);
    out.set(volumeId as number, token as number);
  }
  return out;
}

/**
 * The in-memory twin, with a crash model for the simulation. A save is
 * durable when it resolves. By default it resolves at once; after hold(),
 * saves wait (a slow disk) until release(), so that a crash can fall
 * between a save's start and its end: crash() then keeps, in order, some
 * prefix of the saves in flight (each is a whole table renamed into place,
 * so the survivor is the last one of that prefix, or the old table), and
 * the saves in flight never resolve (their process is gone).
 */
export class MemoryFencePersistence implements FencePersistence {
  private durableTable = new Map<number, number>();
  private inflight: { readonly fences: Map<number, number>; readonly resolve: () => void }[] = [];
  private held = false;
  private failing: TorusError | null = null;
  private corrupted = false;

  async load(): Promise<Map<number, number>> {
    if (this.corrupted) throw new TorusError('TORUS_ERR_STORE_CORRUPT', 'fences.json (memory twin): corrupted by the test');
    return new Map(this.durableTable);
  }

  save(fences: ReadonlyMap<number, number>): Promise<void> {
    encodeFences(fences); // the same invariants as the file
    if (this.failing !== null) return Promise.reject(this.failing);
    const copy = new Map(fences);
    if (!this.held) {
      this.land(copy);
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.inflight.push({ fences: copy, resolve }));
  }

  /** Saves from now on wait for release(). */
  hold(): void {
    this.held = true;
  }

  /** Completes the saves in flight, in order, and lets later ones complete at once. */
  release(): void {
    this.held = false;
    for (const s of this.inflight.splice(0)) {
      this.land(s.fences);
      s.resolve();
    }
  }

  /** Saves in flight now (held). */
  pendingSaves(): number {
    return this.inflight.length;
  }

  /** Power loss: a seeded prefix of the held saves landed; none of them resolves. */
  crash(random: Random): void {
    const landed = random.int(this.inflight.length + 1);
    if (landed > 0) this.land(this.inflight[landed - 1]!.fences);
    this.inflight = [];
  }

  /** Saves fail with TORUS_ERR_STORE_IO while on (a failing disk); nothing is written. */
  setFailing(on: boolean): void {
    this.failing = on ? new TorusError('TORUS_ERR_STORE_IO', 'cannot save fencing tokens (memory twin): the disk fails') : null;
  }

  /** The next loads fail with TORUS_ERR_STORE_CORRUPT (a damaged file), until a save replaces it. */
  corrupt(): void {
    this.corrupted = true;
    this.durableTable = new Map();
  }

  private land(fences: Map<number, number>): void {
    this.durableTable = fences;
    this.corrupted = false;
  }

  /** What survives a crash now (for checkers). */
  durable(): ReadonlyMap<number, number> {
    return new Map(this.durableTable);
  }
}
