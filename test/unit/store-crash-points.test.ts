import { writeFileSync } from 'node:fs';
import nodePath from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { blockRef, blockRefKey, type BlockRef } from '../../src/model/block-ref.js';
import type { BlockHead } from '../../src/model/block-meta.js';
import { makeVersion, VERSION_ABSENT, VERSION_LEGACY, type Version } from '../../src/model/version.js';
import { isTorusError } from '../../src/errors/torus-error.js';
import { FileBlockStore } from '../../src/store/file-block-store.js';
import { SeededRandom, type Random } from '../../src/util/random.js';
import { CrashDisk, SECTOR_BYTES, type DiskImage } from '../helpers/crash-disk.js';
import { ManualClock } from '../helpers/metadata-contract.js';

/**
 * The disk store (FileBlockStore, its dirty log and suspect list) crashed
 * at every kind of point: it runs over a model disk (test/helpers/
 * crash-disk.ts) that finishes its calls in an order the seed draws and,
 * at the crash, keeps only what was synced plus a drawn share of the rest
 * (sectors torn from any value they held since their last sync, names in
 * a folder not fsync'd kept or lost). A seed draws a script of changes
 * (writes, zeroes and punches, installs, drops, confirms, volume deletes,
 * hints of blocks ahead), flushes, checkpoints, reads and scrubs beside
 * the changes (each must return what the block held when asked or what a
 * change made since, and never fail a checksum) and sometimes a clean
 * close, runs it once to count its disk calls, then again to crash at a
 * point drawn among them. Each seed also draws how often epochs end, how
 * few files stay open and how many operations run at once; in a third of
 * the seeds the disk fails calls while the script runs (a write with
 * ENOSPC after part of its bytes, a file's creation or growth with
 * ENOSPC, a sync or a read with EIO): an operation may then fail, with the store's
 * own error, and the block it changed holds what it held before or part
 * of the change (the test reads it back), suspect from then on. The store
 * then opens on what the crash left;
 * in a third of the seeds that open is crashed too, at a drawn point, and
 * the store opens once more. Checked after each open that finishes:
 * - it opens (whatever the crash left), and every block reads without a
 *   checksum error;
 * - a block not suspect holds exactly what one of its changes made, with
 *   that change's version and state, and none older than what a finished
 *   flush, FUA or close made durable: its version names its bytes;
 * - a suspect block's every sector holds what one of its changes since the
 *   last durable one made (never older data than was made durable), and
 *   it is absent only if one of those left it absent;
 * - after a clean close nothing is suspect;
 * - what is suspect stays suspect when the store crashes again right
 *   after opening (the suspect list is durable before the dirty log goes).
 *
 * What it found (2026-12-07), each fixed, each failing again with its fix
 * reverted, within the default seeds or at its seed in STORIES below:
 * - a FLUSH acknowledged while a checkpoint's sync still held the files it
 *   needed (the checkpoint synced on its own, outside flush's group
 *   commit; a flush that found the lists empty resolved at once: seed 2999);
 * - a clean close during a checkpoint skipped the epoch that checkpoint
 *   had opened: blocks failed their checksums on the next start;
 * - a flush or checkpoint asked for between one run's end and the queued
 *   run's start ran beside it (two checkpoints then waited forever);
 * - the dirty log's folder was made without syncing the store's folder:
 *   its records could vanish with it while the blocks they named stayed.
 * (util/group-run.ts, store/file-block-store.ts checkpoint(), dirty-log.ts.)
 * With disk faults (file-block-store.ts afterFailedChange, makeData,
 * installNow, close):
 * - a first write that failed part way left its block data without a
 *   version: the next checkpoint stopped the process on an assertion;
 * - a write that failed part way left the block trusted, at its old
 *   version, over part of the new bytes; an install that failed part way
 *   left the old CRC table over new bytes (checksum errors);
 * - a block made data again over a file an install had left part of its
 *   bytes in failed its checksums at the next write;
 * - an install that failed part way into a new block left a valid header
 *   over part of its data (checksum errors after a restart: seed 2474);
 * - a checkpoint or close that failed let a raw node error out (seed 1514);
 * - a close of a store that had already failed resolved as if all were
 *   durable (seed 3838);
 * - a read the disk failed (EIO) let a raw node error out, which a
 *   coordinator took for its whole peer failing rather than this block;
 * - a flush queued behind a sync that failed reported durable what the
 *   failed one had taken off its lists (seed 12439);
 * - a failed change whose block could not be read back left a CRC table
 *   that did not describe its pages (seed 13692): reads and scrubs now
 *   refuse it with TORUS_ERR_STORE_IO until its CRCs are taken again.
 *
 * Deterministic: a seed replays exactly. More seeds:
 * CRASH_SEEDS=20000 CRASH_FROM=1001 npx vitest run test/unit/store-crash-points.test.ts
 * (CRASH_DUMP=/path writes the failing seed's script as JSON; CRASH_TRACE=1
 * prints every disk call of the run and what each open found).
 */

const SEEDS = Number(process.env.CRASH_SEEDS ?? 1000);
const FROM = Number(process.env.CRASH_FROM ?? 1);
const BS = 16 * 1024;
const DIR = '/data/store';
const REFS: BlockRef[] = [1, 2].flatMap((v) => [0, 1, 2, 3, 4].map((i) => blockRef(v, 1, i)));
const OPS = 36;

/** How a seed's store is set up, drawn from the seed: how often epochs end, how few files stay open, how many operations run at once. */
interface Shape {
  readonly epochBlocksMax: number;
  readonly fdMax: number;
  readonly inFlightMax: number;
  /** The disk fails some calls while the script runs (ENOSPC, EIO): a third of the seeds. */
  readonly faults: boolean;
}

function shapeOf(seed: number): Shape {
  const r = new SeededRandom(seed ^ 0x5a9e);
  return { epochBlocksMax: [1, 2, 3, 8][r.int(4)]!, fdMax: [2, 4, 16][r.int(3)]!, inFlightMax: [1, 4, 8][r.int(3)]!, faults: r.int(3) === 0 };
}
const log = pino({ level: 'silent' });

type Op =
  | { kind: 'write'; b: number; offset: number; length: number; fua: boolean; fill: number }
  | { kind: 'zero'; b: number; offset: number; length: number; punch: boolean; fua: boolean }
  | { kind: 'install'; b: number; fill: number | null; fua: boolean }
  | { kind: 'drop' | 'confirm'; b: number }
  | { kind: 'flush' | 'checkpoint' | 'close' }
  | { kind: 'delete-volume'; volumeId: number }
  | { kind: 'premark'; bs: number[] }
  | { kind: 'read'; b: number; offset: number; length: number }
  | { kind: 'verify'; b: number };

/** A range inside one block: whole pages, a page's part, or across pages. */
function rangeOf(r: Random): { offset: number; length: number } {
  switch (r.int(4)) {
    case 0:
      return { offset: 0, length: BS };
    case 1: {
      const p0 = r.int(BS / 4096);
      const p1 = p0 + 1 + r.int(BS / 4096 - p0);
      return { offset: p0 * 4096, length: (p1 - p0) * 4096 };
    }
    default: {
      const offset = r.int(BS - 1);
      return { offset, length: 1 + r.int(Math.min(BS - offset, 6000)) };
    }
  }
}

function scriptOf(seed: number): Op[] {
  const r = new SeededRandom(seed);
  const ops: Op[] = [];
  const n = 8 + r.int(OPS);
  for (let k = 0; k < n; k++) {
    const b = r.int(REFS.length);
    const pick = r.int(100);
    if (pick < 40) ops.push({ kind: 'write', b, ...rangeOf(r), fua: r.int(6) === 0, fill: r.int(2 ** 30) });
    else if (pick < 50) ops.push({ kind: 'zero', b, ...rangeOf(r), punch: r.int(2) === 0, fua: r.int(6) === 0 });
    else if (pick < 56) ops.push({ kind: 'install', b, fill: r.int(4) === 0 ? null : r.int(2 ** 30), fua: r.int(4) === 0 });
    else if (pick < 61) ops.push({ kind: 'drop', b });
    else if (pick < 65) ops.push({ kind: 'confirm', b });
    else if (pick < 78) ops.push({ kind: 'flush' });
    else if (pick < 88) ops.push({ kind: 'checkpoint' });
    else if (pick < 89) ops.push({ kind: 'delete-volume', volumeId: 1 + r.int(2) });
    else ops.push({ kind: 'premark', bs: Array.from({ length: 1 + r.int(4) }, () => r.int(REFS.length)) });
  }
  // Reads and scrubs among the changes, from a stream of their own.
  const reads = new SeededRandom(seed ^ 0x2ead);
  for (let k = reads.int(12); k > 0; k--) {
    const b = reads.int(REFS.length);
    ops.splice(reads.int(ops.length + 1), 0, reads.int(4) === 0 ? { kind: 'verify', b } : { kind: 'read', b, ...rangeOf(reads) });
  }
  if (r.int(4) === 0) ops.push({ kind: 'close' });
  return ops;
}

interface State {
  readonly state: 'data' | 'zero' | 'absent';
  readonly version: Version;
  /** The block's bytes (null: zeroes). */
  readonly data: Buffer | null;
}

const ABSENT: State = { state: 'absent', version: VERSION_ABSENT, data: null };

interface BlockModel {
  readonly states: State[];
  /** The last state a change was asked for (it may have reached the disk, all or part). */
  started: number;
  acked: number;
  /** The last state a finished flush, FUA change or close made durable. */
  durable: number;
  /**
   * Before a change that failed (injected faults): the state the block held
   * then. A failed change may leave part of its bytes, so from here on each
   * sector holds what some state since made it, not one state whole.
   */
  taintedAt: number | null;
  /**
   * A failed change whose block could not be read back (the disk failed
   * that read too, and the store then refuses reads: TORUS_ERR_STORE_IO):
   * what it holds is not known, so its bytes are not judged from then on;
   * it must still open and read without checksum errors after a crash.
   */
  unknown: boolean;
  seq: number;
  chain: Promise<void>;
}

/** What a run told the test, and what it is left with. */
interface Run {
  readonly blocks: BlockModel[];
  readonly failures: string[];
  closed: boolean;
}

function newRun(): Run {
  return { blocks: REFS.map(() => ({ states: [ABSENT], started: 0, acked: 0, durable: 0, taintedAt: null, unknown: false, seq: 0, chain: Promise.resolve() })), failures: [], closed: false };
}

function openStore(disk: CrashDisk, shape: Shape): Promise<FileBlockStore> {
  return FileBlockStore.open({ dir: DIR, blockSize: BS, capacity: 64 * BS * 4, logger: log, clock: new ManualClock(), io: disk, epochBlocksMax: shape.epochBlocksMax, fdMax: shape.fdMax, checkpointIntervalMs: 3_600_000 });
}

/** The bytes a change leaves: what the block held (zeroes unless data), changed by `apply`. */
function contentOf(s: State, apply: (buf: Buffer) => void): Buffer {
  const buf = s.state === 'data' && s.data !== null ? Buffer.from(s.data) : Buffer.alloc(BS);
  apply(buf);
  return buf;
}

function bytesOf(fill: number, length: number): Buffer {
  return new SeededRandom(fill).bytes(length);
}

/** A whole block read back, again while the disk fails reads (EIO); any other error is the test's failure. */
async function readThroughFaults(store: FileBlockStore, ref: BlockRef): Promise<Buffer> {
  for (let tries = 1; ; tries++) {
    try {
      return Buffer.from(await store.read(ref, 0, BS));
    } catch (err) {
      if (tries >= 20 || !isTorusError(err, 'TORUS_ERR_STORE_IO')) throw err;
    }
  }
}

/** The client: the script's operations, at most `inFlightMax` at once, one change per block at a time. */
async function client(store: FileBlockStore, ops: Op[], run: Run, shape: Shape): Promise<void> {
  const inFlight = new Set<Promise<void>>();
  const start = (p: Promise<void>) => {
    const q = p
      .catch((err: unknown) => {
        // With faults, an operation may fail, with the store's own error for a full or failing disk.
        if (shape.faults && isTorusError(err) && (err.code === 'TORUS_ERR_STORE_NO_SPACE' || err.code === 'TORUS_ERR_STORE_IO')) return;
        run.failures.push(`an operation failed: ${(err as Error).message}`);
      })
      .finally(() => inFlight.delete(q));
    inFlight.add(q);
  };
  const change = (b: number, next: (m: BlockModel, version: Version) => { state: State; call: () => Promise<void>; fua: boolean } | null): void => {
    const m = run.blocks[b]!;
    const p = m.chain.then(async () => {
      const version = makeVersion(1, ++m.seq);
      const plan = next(m, version);
      if (plan === null) return;
      m.states.push(plan.state);
      const k = m.states.length - 1;
      m.started = k;
      try {
        await plan.call();
      } catch (err) {
        // What the block holds now (part of the change, or none of it) is
        // what the next changes build on: read it back as a state of its own.
        const h = store.head(REFS[b]!);
        let now: Buffer;
        try {
          now = await readThroughFaults(store, REFS[b]!);
        } catch (readErr) {
          if (!isTorusError(readErr, 'TORUS_ERR_STORE_IO')) throw readErr;
          if (!h.suspect) run.failures.push(`${blockRefKey(REFS[b]!)}: a change failed part way and its block cannot be read, yet it is trusted`);
          m.taintedAt ??= k - 1;
          m.unknown = true;
          throw err;
        }
        const prev = m.states[k - 1]!;
        const holds = (st: State) => !h.suspect && h.state === st.state && h.version === st.version && sameBytes(now, st, 0, BS);
        if (holds(prev)) {
          // Refused before it touched the block: as if never asked.
          m.states.pop();
          m.started = k - 1;
          throw err;
        }
        // Made whole, then the flush of a FUA change failed: made, not durable.
        if (holds(plan.state)) throw err;
        if (!h.suspect) run.failures.push(`${blockRefKey(REFS[b]!)}: a change that failed part way left the block trusted (${h.state} v${h.version}) over bytes or a state its version does not name`);
        m.taintedAt ??= k - 1;
        m.states.push({ state: h.state, version: h.version, data: h.state === 'data' ? now : null });
        m.started = m.states.length - 1;
        throw err;
      }
      m.acked = k;
      if (plan.fua) m.durable = Math.max(m.durable, k);
    });
    m.chain = p.catch(() => undefined);
    start(p);
  };
  const barrier = async () => {
    while (inFlight.size > 0) await Promise.race(inFlight);
  };
  for (const op of ops) {
    while (inFlight.size >= shape.inFlightMax) await Promise.race(inFlight);
    switch (op.kind) {
      case 'write':
        change(op.b, (m, version) => {
          const data = bytesOf(op.fill, op.length);
          const prev = m.states[m.states.length - 1]!;
          const state: State = { state: 'data', version, data: contentOf(prev, (buf) => data.copy(buf, op.offset)) };
          return { state, fua: op.fua, call: () => store.write(REFS[op.b]!, op.offset, data, version, { fua: op.fua }) };
        });
        break;
      case 'zero':
        change(op.b, (m, version) => {
          const prev = m.states[m.states.length - 1]!;
          const whole = op.offset === 0 && op.length === BS;
          const state: State = op.punch && (whole || prev.state !== 'data') ? { state: 'zero', version, data: null } : { state: 'data', version, data: contentOf(prev, (buf) => buf.fill(0, op.offset, op.offset + op.length)) };
          return { state, fua: op.fua, call: () => store.zero(REFS[op.b]!, op.offset, op.length, version, { punch: op.punch, fua: op.fua }) };
        });
        break;
      case 'install':
        change(op.b, (_m, version) => {
          const data = op.fill === null ? null : bytesOf(op.fill, BS);
          const state: State = data === null ? { state: 'zero', version, data: null } : { state: 'data', version, data: Buffer.from(data) };
          return { state, fua: op.fua, call: () => store.install(REFS[op.b]!, data, version, { fua: op.fua }) };
        });
        break;
      case 'drop':
        change(op.b, () => ({ state: ABSENT, fua: false, call: () => store.drop(REFS[op.b]!) }));
        break;
      case 'confirm':
        change(op.b, (m, version) => {
          const prev = m.states[m.states.length - 1]!;
          // A coordinator confirms a copy it has seen: never one the store holds none of.
          if (prev.state === 'absent' || store.head(REFS[op.b]!).state === 'absent') return null;
          return { state: { ...prev, version }, fua: false, call: () => store.confirm(REFS[op.b]!, version) };
        });
        break;
      case 'flush': {
        // Every change acknowledged before the call is durable once it resolves.
        const acked = run.blocks.map((m) => m.acked);
        start(store.flush().then(() => run.blocks.forEach((m, b) => (m.durable = Math.max(m.durable, acked[b]!)))));
        break;
      }
      case 'checkpoint':
        start(store.checkpoint());
        break;
      case 'read': {
        // Beside the block's changes, not behind them: what it returns is
        // what the block held when it was asked or what a change made after.
        const m = run.blocks[op.b]!;
        const from = m.acked;
        start(
          store.read(REFS[op.b]!, op.offset, op.length).then(async (got) => {
            // Judged once the change it may have met is settled: a change
            // that failed is read back into the model when it settles.
            got = Buffer.from(got);
            await m.chain;
            const whole = Buffer.alloc(BS);
            got.copy(whole, op.offset);
            const ok =
              m.unknown ||
              (m.taintedAt === null
                ? m.states.slice(from, m.started + 1).some((st) => sameBytes(whole, st, op.offset, op.offset + op.length))
                : sectorsFit(whole, m.states.slice(Math.min(from, m.taintedAt), m.started + 1), op.offset, op.offset + op.length));
            if (!ok) run.failures.push(`a read of ${blockRefKey(REFS[op.b]!)} at ${op.offset}+${op.length} returned bytes no state since state ${from} held`);
          }),
        );
        break;
      }
      case 'verify':
        start(store.verify(REFS[op.b]!).then(() => undefined));
        break;
      case 'premark':
        store.premark(op.bs.map((b) => REFS[b]!));
        break;
      case 'delete-volume': {
        await barrier();
        const mine = REFS.map((r, b) => (r.volumeId === op.volumeId ? b : -1)).filter((b) => b >= 0);
        for (const b of mine) {
          const m = run.blocks[b]!;
          m.states.push(ABSENT);
          m.started = m.states.length - 1;
        }
        start(
          store.deleteVolume(op.volumeId).then(
            () => {
              for (const b of mine) {
                const m = run.blocks[b]!;
                m.acked = m.durable = m.started;
              }
            },
            (err: unknown) => {
              // Refused (the store had failed): the blocks are as they were.
              // Failed later: they are absent, and the removal may not be durable.
              for (const b of mine) {
                const m = run.blocks[b]!;
                if (store.head(REFS[b]!).state !== 'absent') {
                  m.states.pop();
                  m.started = m.states.length - 1;
                }
              }
              throw err;
            },
          ),
        );
        await barrier();
        break;
      }
      case 'close':
        await barrier();
        try {
          await store.close();
        } catch (err) {
          start(Promise.reject(err));
          break;
        }
        run.closed = true;
        for (const m of run.blocks) m.durable = m.acked;
        break;
    }
  }
  await barrier();
}

/** The script run over a fresh disk until it ends or the disk has made `crashAt` calls. */
async function runScript(seed: number, ops: Op[], crashAt: number | null): Promise<{ disk: CrashDisk; run: Run; outcome: 'done' | 'crash' | 'stuck' }> {
  const shape = shapeOf(seed);
  // The data dir exists; the store makes its own folder in it.
  const disk = new CrashDisk({ dirs: new Set([nodePath.dirname(DIR)]), files: new Map() });
  if (process.env.CRASH_TRACE) disk.trace = [];
  const run = newRun();
  let finished = false;
  const work = (async () => {
    const store = await openStore(disk, shape);
    // Faults strike the script, not the store's first open.
    if (shape.faults) disk.faults = { random: new SeededRandom(seed ^ 0xfa17), noSpace: 0.03, io: 0.01 };
    await client(store, ops, run, shape);
  })()
    .catch((err: unknown) => void run.failures.push(`the run failed: ${(err as Error).stack ?? String(err)}`))
    .finally(() => (finished = true));
  void work;
  const outcome = await disk.runUntil(new SeededRandom(seed * 31 + 7), () => finished, crashAt);
  return { disk, run, outcome };
}

/** Opens the store on an image, crashing that open at `crashAt` calls when given. */
async function openOn(image: DiskImage, shape: Shape, order: number, crashAt: number | null): Promise<{ disk: CrashDisk; store: FileBlockStore | null; error: string | null; outcome: 'done' | 'crash' | 'stuck' }> {
  const disk = new CrashDisk(image);
  if (process.env.CRASH_TRACE) disk.trace = [];
  let store: FileBlockStore | null = null;
  let error: string | null = null;
  let finished = false;
  void openStore(disk, shape)
    .then((s) => (store = s), (err: unknown) => (error = (err as Error).stack ?? String(err)))
    .finally(() => (finished = true));
  const outcome = await disk.runUntil(new SeededRandom(order), () => finished, crashAt);
  if (disk.trace !== null) console.log(`--- open (crash at ${crashAt}):\n${disk.trace.join('\n')}`);
  return { disk, store, error, outcome };
}

/** What the open store says of every block, read through the model disk. */
async function readAll(disk: CrashDisk, store: FileBlockStore, order: Random): Promise<{ heads: BlockHead[]; data: (Buffer | string)[]; listed: string[] }> {
  const heads = REFS.map((r) => store.head(r));
  const data: (Buffer | string)[] = REFS.map(() => 'not read');
  let left = REFS.length;
  REFS.forEach((r, b) => {
    store.read(r, 0, BS).then(
      (buf) => (data[b] = Buffer.from(buf)),
      (err: unknown) => (data[b] = `read failed: ${(err as Error).message}`),
    ).finally(() => left--);
  });
  const outcome = await disk.runUntil(order, () => left === 0);
  if (outcome !== 'done') throw new Error(`reads did not finish (${outcome})`);
  return { heads, data, listed: store.list({ limit: 1000 }).map((l) => blockRefKey(l.ref)) };
}

/** Whether `got` (a whole block) holds state `s`'s bytes in [from, to). */
function sameBytes(got: Buffer, s: State, from: number, to: number): boolean {
  const x = got.subarray(from, to);
  return s.state === 'data' && s.data !== null ? x.equals(s.data.subarray(from, to)) : x.every((v) => v === 0);
}

/** Whether each sector of `got` (a whole block) that [from, to) touches holds, there, what one of `cands` held. */
function sectorsFit(got: Buffer, cands: readonly State[], from = 0, to = BS): boolean {
  for (let s = Math.floor(from / SECTOR_BYTES); s * SECTOR_BYTES < to; s++) {
    const a = Math.max(from, s * SECTOR_BYTES);
    const b = Math.min(to, (s + 1) * SECTOR_BYTES);
    if (!cands.some((c) => sameBytes(got, c, a, b))) return false;
  }
  return true;
}

/** The checks of the header comment, on one open store; returns what broke. */
function check(run: Run, seen: Awaited<ReturnType<typeof readAll>>, suspectsBefore: Set<string> | null): string[] {
  const broken: string[] = [];
  const known = new Set(REFS.map(blockRefKey));
  for (const key of seen.listed) if (!known.has(key)) broken.push(`lists ${key}, never written`);
  REFS.forEach((ref, b) => {
    const key = blockRefKey(ref);
    const m = run.blocks[b]!;
    const h = seen.heads[b]!;
    const got = seen.data[b]!;
    if (typeof got === 'string') {
      broken.push(`${key}: ${got}`);
      return;
    }
    // After a failed change the model's states are what the changes asked for, not what the
    // block holds: each sector holds what one of them made, from the state before that change on.
    const cands = m.states.slice(Math.min(m.durable, m.taintedAt ?? m.durable), m.started + 1);
    const says = `${key} (${h.state} v${h.version}${h.suspect ? ' suspect' : ''}; states ${m.states.map((s, i) => `${i}:${s.state}/v${s.version}`).join(' ')}; durable ${m.durable}, acked ${m.acked}, started ${m.started})`;
    if (suspectsBefore?.has(key) && !h.suspect) broken.push(`${says}: was suspect before the crash that followed the open, is not now`);
    // (A block a failed change left suspect stays so until a coordinator confirms or replaces it.)
    if (run.closed && h.suspect && m.taintedAt === null) broken.push(`${says}: suspect after a clean close`);
    if (m.unknown) return;
    if (!h.suspect && m.taintedAt === null) {
      const match = cands.some((s) => s.state === h.state && s.version === h.version && sameBytes(got, s, 0, BS));
      if (!match) broken.push(`${says}: not suspect, yet its state, version and bytes are not what a change since the last durable one made`);
      return;
    }
    if (h.state === 'absent' && !cands.some((s) => s.state === 'absent')) broken.push(`${says}: absent after a change that left data was made durable`);
    const versions = new Set([VERSION_LEGACY, VERSION_ABSENT, ...m.states.map((s) => s.version)]);
    if (!versions.has(h.version)) broken.push(`${says}: a version no change gave it`);
    if (!sectorsFit(got, cands)) broken.push(`${says}: a sector holds bytes no change since the last durable one wrote`);
  });
  return broken;
}

/** One seed: the script crashed at a drawn point, the store opened (crashed once more in a third of the seeds) and checked. */
async function runSeed(seed: number): Promise<string[]> {
  const ops = scriptOf(seed);
  const shape = shapeOf(seed);
  const r = new SeededRandom(seed ^ 0x5eed);
  const dry = await runScript(seed, ops, null);
  if (dry.outcome !== 'done') {
    if (dry.disk.trace !== null) console.log(dry.disk.trace.join('\n'));
    return [`the script did not finish without a crash (${dry.outcome})`, ...dry.run.failures];
  }
  if (dry.run.failures.length > 0) {
    if (dry.disk.trace !== null) console.log(dry.disk.trace.join('\n'));
    return dry.run.failures;
  }
  const crashAt = r.int(dry.disk.steps + 1);
  const wet = await runScript(seed, ops, crashAt);
  if (wet.outcome === 'stuck') return ['the script stopped moving before its crash point', ...wet.run.failures];
  if (wet.run.failures.length > 0) return wet.run.failures;
  let image = wet.disk.crash(r);
  if (wet.disk.trace !== null) console.log(wet.disk.trace.join('\n'));
  const run = wet.run;
  const failures: string[] = [];
  let story = `crash at call ${crashAt} of ${dry.disk.steps}`;
  if (r.int(3) === 0) {
    // The open after the crash crashes too, at a point drawn among its calls.
    const order = r.int(2 ** 30);
    const whole = await openOn(image, shape, order, null);
    if (whole.error !== null || whole.outcome !== 'done') return [`${story}: the store did not open: ${whole.error ?? whole.outcome}`];
    const at = r.int(whole.disk.steps + 1);
    const again = await openOn(image, shape, order, at);
    image = again.disk.crash(r);
    story += `, the open after it crashed at call ${at} of ${whole.disk.steps}`;
  }
  let suspectsBefore: Set<string> | null = null;
  for (let opens = 0; opens < 2; opens++) {
    const opened = await openOn(image, shape, r.int(2 ** 30), null);
    if (opened.error !== null || opened.store === null) return [`${story}: the store did not open: ${opened.error ?? opened.outcome}`];
    const seen = await readAll(opened.disk, opened.store, r);
    if (process.env.CRASH_TRACE) {
      console.log(`open ${opens}: files`, [...image.files].map(([p, d]) => `${p}:${d.length}`).join(' '));
      console.log(seen.heads.map((h, b) => `${blockRefKey(REFS[b]!)} ${h.state} v${h.version % 100}${h.suspect ? ' S' : ''}`).join(', '));
    }
    failures.push(...check(run, seen, suspectsBefore).map((f) => `${story}: ${f}`));
    if (failures.length > 0 || r.int(2) === 0) break;
    // Crash right after the open: what it found suspect must stay so.
    suspectsBefore = new Set(seen.heads.flatMap((h, b) => (h.suspect ? [blockRefKey(REFS[b]!)] : [])));
    image = opened.disk.crash(r);
    story += ', a crash right after the open that followed';
  }
  return failures;
}

/**
 * Seeds past the default run that once found a bug, each failing again
 * with its fix reverted (with the generator as it is now: a change to
 * how scripts are drawn makes these seeds other scripts).
 */
const STORIES: readonly { seed: number; what: string }[] = [
  { seed: 2999, what: 'a FLUSH acknowledged while a checkpoint\'s sync still held the folder it needed: a flushed block came back absent' },
  { seed: 1514, what: 'a close whose log could not be deleted (EIO) threw a raw node error instead of the store\'s own' },
  { seed: 13692, what: 'an install whose header write failed (ENOSPC), and whose block could not be read back (EIO), failed its checksums: its table did not describe its pages' },
  { seed: 12439, what: 'a FUA flush queued behind a sync that failed (EIO) reported the install durable; its file\'s name was lost in the crash' },
  { seed: 3838, what: 'a close of a store that had failed (EIO) resolved as if everything were durable' },
  { seed: 2474, what: 'an install that failed part way into a new block left a valid header over part of its data' },
];

function failSeed(seed: number, failures: string[]): never {
  if (process.env.CRASH_DUMP) writeFileSync(process.env.CRASH_DUMP, JSON.stringify({ seed, shape: shapeOf(seed), ops: scriptOf(seed), failures }, null, 2));
  expect.fail(`seed ${seed}:\n${failures.slice(0, 5).join('\n')}\nshape: ${JSON.stringify(shapeOf(seed))}\nscript: ${JSON.stringify(scriptOf(seed))}`);
}

describe('the disk store crashed at any point', () => {
  it(`opens, reads without checksum errors, and keeps what was durable (seeds ${FROM}-${FROM + SEEDS - 1})`, async () => {
    for (let seed = FROM; seed < FROM + SEEDS; seed++) {
      const failures = await runSeed(seed);
      if (failures.length > 0) failSeed(seed, failures);
    }
  }, 600_000);

  for (const story of STORIES) {
    it(`seed ${story.seed}: ${story.what}`, async () => {
      const failures = await runSeed(story.seed);
      if (failures.length > 0) failSeed(story.seed, failures);
    });
  }
});
