import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, readlink, rm, appendFile, open as fopen, stat, writeFile } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { blockRef } from '../../src/model/block-ref.js';
import { FileBlockStore, PREMARK_MAX } from '../../src/store/file-block-store.js';
import { makeVersion, VERSION_ABSENT, VERSION_LEGACY } from '../../src/model/version.js';
import { blockFileBytes, headerBytes } from '../../src/store/block-file.js';
import type { LocalBlockStore } from '../../src/store/local-store.js';
import { localStoreContract } from '../helpers/local-store-contract.js';
import { recordFileWrites } from '../helpers/file-writes.js';
import { openFlags } from '../helpers/fd-flags.js';
import { isTorusError } from '../../src/errors/torus-error.js';
import { crc32c, crc32cPages } from '../../src/util/crc32c.js';
import { fileURLToPath } from 'node:url';
import { encodeBlockMeta } from '../../src/peer/codec.js';
import { BLOCK_META_BYTES } from '../../src/peer/protocol.js';
import type { BlockRef } from '../../src/model/block-ref.js';

const log = pino({ level: 'silent' });
const BS = 64 * 1024;
const MiB = 2 ** 20;
const V = makeVersion(1, 1);
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'torus-store-'));
});
afterEach(async () => {
  vi.restoreAllMocks();
  await rm(dir, { recursive: true, force: true });
});

/** Records in a dirty-log file of the store ('TDL1' at the start of each 32-byte record). */
async function dirtyRecords(name: string): Promise<number> {
  const bytes = await readFile(path.join(dir, 'dirty', name));
  let records = 0;
  for (let at = 0; at + 32 <= bytes.length; at += 32) if (bytes.readUInt32BE(at) === 0x54444c31) records++;
  return records;
}

function open(extra: Partial<Parameters<typeof FileBlockStore.open>[0]> = {}) {
  return FileBlockStore.open({ dir, blockSize: BS, capacity: 64 * MiB, logger: log, checkpointIntervalMs: 3_600_000, ...extra });
}

describe('FileBlockStore', () => {
  it('gives the CRC of a read of whole pages from the table it was checked against, and none for other ranges', async () => {
    const s = await open();
    const r = blockRef(1, 1, 5);
    const a = randomBytes(BS);
    await s.write(r, 0, a, V, { fua: false });
    for (const [offset, length] of [[0, BS], [4096, 8192], [BS - 4096, 4096]] as const) {
      const got = await s.readSummed(r, offset, length);
      expect(got.data.equals(a.subarray(offset, offset + length))).toBe(true);
      expect(got.crc32c, `${offset}+${length}`).toBe(crc32c(a.subarray(offset, offset + length)));
    }
    for (const [offset, length] of [[1, 4096], [0, 100], [4096, 5000]] as const) {
      const got = await s.readSummed(r, offset, length);
      expect(got.data.equals(a.subarray(offset, offset + length))).toBe(true);
      expect(got.crc32c, `${offset}+${length}`).toBeNull();
    }
    expect((await s.readSummed(blockRef(1, 1, 6), 0, 4096)).crc32c, 'an absent block').toBeNull();
    await s.close();
  });

  it('reads zeroes for unwritten blocks and ranges, and what was written at odd offsets', async () => {
    const s = await open();
    const r = blockRef(1, 1, 3);
    expect((await s.read(r, 0, 100)).equals(Buffer.alloc(100))).toBe(true);
    const a = randomBytes(5000);
    await s.write(r, 777, a, V, { fua: false });
    const got = await s.read(r, 700, 6000);
    const want = Buffer.alloc(6000);
    a.copy(want, 77);
    expect(got.equals(want)).toBe(true);
    expect([s.meta(r).state, s.meta(blockRef(1, 1, 4)).state]).toEqual(['data', 'absent']);
    await s.close();
  });

  it('keeps data across close and open, with the dirty log emptied', async () => {
    let s = await open();
    const r = blockRef(2, 1, 0);
    const a = randomBytes(BS);
    await s.write(r, 0, a, V, { fua: false });
    await s.write(r, 4096 + 3, Buffer.from('hello'), V, { fua: false });
    a.write('hello', 4096 + 3);
    await s.close();
    expect(await readdir(path.join(dir, 'dirty'))).toEqual([]);
    s = await open();
    expect((await s.read(r, 0, BS)).equals(a)).toBe(true);
    expect(s.usage().blocks).toBe(1);
    await s.close();
  });

  it('keeps flushed writes across a crash', async () => {
    let s = await open();
    const refs = [blockRef(3, 1, 0), blockRef(3, 1, 1), blockRef(3, 1, 9)];
    const data = refs.map(() => randomBytes(BS));
    for (let i = 0; i < refs.length; i++) await s.write(refs[i]!, 0, data[i]!, V, { fua: false });
    await s.zero(refs[2]!, 100, 200, V, { punch: true, fua: false });
    data[2]!.fill(0, 100, 300);
    await s.write(refs[1]!, 10, Buffer.from('xyz'), V, { fua: true });
    data[1]!.write('xyz', 10);
    await s.flush();
    await s.abandonForTest();
    s = await open();
    for (let i = 0; i < refs.length; i++) expect((await s.read(refs[i]!, 0, BS)).equals(data[i]!)).toBe(true);
    await s.close();
  });

  // premark: a sequential writer's next blocks are named in the dirty log ahead of their writes.
  it('premark: a write to a premarked block adds no dirty-log record of its own; after a crash the premarked blocks are suspect, written or not', async () => {
    let s = await open();
    const held = blockRef(13, 1, 0);
    await s.write(held, 0, Buffer.alloc(BS, 1), V, { fua: false });
    await s.flush();
    await s.checkpoint();
    const ahead = [blockRef(13, 1, 1), blockRef(13, 1, 2), blockRef(13, 1, 3)];
    // A block the store holds is not named again.
    s.premark([held, ...ahead]);
    await s.write(ahead[0]!, 0, Buffer.alloc(BS, 2), V, { fua: false });
    await s.flush();
    const logs = await readdir(path.join(dir, 'dirty'));
    expect(logs.length).toBe(1);
    expect(await dirtyRecords(logs[0]!), 'three premarked blocks, and nothing more for the write to one of them').toBe(3);
    await s.abandonForTest();
    s = await open();
    expect(s.meta(held).suspect).toBe(false);
    expect(ahead.map((r) => [s.meta(r).state, s.meta(r).suspect])).toEqual([
      ['data', true],
      ['absent', true],
      ['absent', true],
    ]);
    expect((await s.read(ahead[0]!, 0, BS)).equals(Buffer.alloc(BS, 2))).toBe(true);
    await s.close();
  });

  it('premark: a hint is bounded (PREMARK_MAX unclaimed records per epoch), and a checkpoint forgets the unclaimed ones', async () => {
    let s = await open();
    s.premark(Array.from({ length: PREMARK_MAX + 44 }, (_, i) => blockRef(14, 1, i)));
    await s.write(blockRef(14, 1, 0), 0, Buffer.alloc(BS, 5), V, { fua: false });
    await s.flush();
    expect(await dirtyRecords('00000001.log'), 'the first PREMARK_MAX of the hint; block 0 claimed one').toBe(PREMARK_MAX);
    await s.checkpoint();
    expect(await readdir(path.join(dir, 'dirty'))).not.toContain('00000001.log');
    await s.write(blockRef(14, 1, 1), 0, Buffer.alloc(BS, 6), V, { fua: false });
    await s.abandonForTest();
    s = await open();
    // Only the block written after the checkpoint is suspect: its own record, not a forgotten premark.
    expect(s.suspects().map((r) => r.index)).toEqual([1]);
    await s.close();
  });

  it('after a crash, repairs the checksums of blocks written since the last checkpoint, whatever their pages hold', async () => {
    let s = await open();
    const clean = blockRef(12, 1, 1);
    const dirty = blockRef(12, 1, 2);
    await s.write(clean, 0, Buffer.alloc(BS, 3), V, { fua: false });
    await s.checkpoint();
    await s.write(dirty, 0, Buffer.alloc(BS, 4), V, { fua: false });
    await s.flush();
    await s.write(dirty, 8192, Buffer.from('never flushed'), V, { fua: false });
    await s.abandonForTest();
    // Power loss can leave an unflushed page torn: simulate it in the file.
    const file = path.join(dir, 'blocks', 'c', '1', '2');
    const { open: fopen } = await import('node:fs/promises');
    const fh = await fopen(file, 'r+');
    const st = await fh.stat();
    await fh.write(Buffer.from('TORN'), 0, 4, st.size - BS + 8192 + 2);
    await fh.close();
    s = await open();
    const got = await s.read(dirty, 0, BS);
    // Flushed pages are intact; the unflushed page holds whatever reached the disk.
    expect(got.subarray(0, 8192).equals(Buffer.alloc(8192, 4))).toBe(true);
    expect(got.subarray(12288).equals(Buffer.alloc(BS - 12288, 4))).toBe(true);
    expect((await s.read(clean, 0, BS)).equals(Buffer.alloc(BS, 3))).toBe(true);
    await s.close();
    expect(await readdir(path.join(dir, 'dirty'))).toEqual([]);
  });

  it('ignores a torn tail of the dirty log', async () => {
    let s = await open();
    const r = blockRef(4, 1, 0);
    await s.write(r, 0, Buffer.alloc(BS, 7), V, { fua: true });
    await s.abandonForTest();
    const logs = await readdir(path.join(dir, 'dirty'));
    expect(logs.length).toBe(1);
    await appendFile(path.join(dir, 'dirty', logs[0]!), randomBytes(20));
    s = await open();
    expect((await s.read(r, 0, BS)).equals(Buffer.alloc(BS, 7))).toBe(true);
    await s.close();
  });

  it('detects a corrupted page with TORUS_ERR_STORE_CRC_MISMATCH', async () => {
    let s = await open();
    const r = blockRef(5, 1, 0);
    await s.write(r, 0, Buffer.alloc(BS, 1), V, { fua: false });
    await s.close();
    const file = path.join(dir, 'blocks', '5', '1', '0');
    const { open: fopen } = await import('node:fs/promises');
    const fh = await fopen(file, 'r+');
    const st = await fh.stat();
    await fh.write(Buffer.from([0xee]), 0, 1, st.size - BS + 5000);
    await fh.close();
    let failures = 0;
    s = await open({ onCrcFailure: () => failures++ });
    const err = await s.read(r, 4096, 4096).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH')).toBe(true);
    expect(failures).toBe(1);
    expect((await s.read(r, 0, 4096)).equals(Buffer.alloc(4096, 1))).toBe(true);
    await s.close();
  });

  it('takes the page CRCs of a write from the caller when given for exactly the pages written, and sums them itself otherwise', async () => {
    const s = await open();
    const r = blockRef(6, 1, 0);
    const data = randomBytes(3 * 4096);
    const crcs = new Uint32Array(3);
    crc32cPages(data, 4096, crcs);
    await s.write(r, 4096, data, V, { fua: false, pageCrcs: crcs });
    expect((await s.read(r, 4096, data.length)).equals(data)).toBe(true);
    // Proof they are taken as given: a wrong one makes that page fail its check.
    const wrong = Uint32Array.from(crcs);
    wrong[1] = (wrong[1]! ^ 1) >>> 0;
    await s.write(r, 4096, data, makeVersion(1, 2), { fua: false, pageCrcs: wrong });
    const err = await s.read(r, 2 * 4096, 4096).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH')).toBe(true);
    // Not the pages written (a partial page: the edges are merged): summed afresh.
    const r2 = blockRef(6, 1, 1);
    await s.write(r2, 100, data, V, { fua: false, pageCrcs: wrong });
    expect((await s.read(r2, 100, data.length)).equals(data)).toBe(true);
    await s.close();
  });

  it('writes pages not cached yet in 64 KiB pieces (small folios), and later whole-block writes in one call', async () => {
    const s = await open({ blockSize: MiB });
    const hdr = headerBytes(MiB);
    // Data writes into block files: [length, file offset]. Header writes (at 0) are left out.
    const writes = recordFileWrites((_length, position) => position >= hdr);
    const pieces = (from: number, to: number): [number, number][] => {
      const out: [number, number][] = [];
      for (let p = from; p < to; p = Math.min(to, (Math.floor(p / 65536) + 1) * 65536)) out.push([Math.min(to, (Math.floor(p / 65536) + 1) * 65536) - p, p]);
      return out;
    };
    const r = blockRef(8, 1, 0);
    const a = randomBytes(MiB);
    await s.write(r, 0, a, V, { fua: false });
    expect(writes).toEqual(pieces(hdr, hdr + MiB));
    writes.length = 0;
    // Cached now: a whole-block write is one call, a small one too.
    await s.write(r, 0, a, makeVersion(1, 2), { fua: false });
    await s.write(r, 8192, a.subarray(0, 4096), makeVersion(1, 3), { fua: false });
    expect(writes).toEqual([[MiB, hdr], [4096, hdr + 8192]]);
    writes.length = 0;
    // A new block whose first write is partial stays in pieces until a whole-block write.
    const r2 = blockRef(8, 1, 1);
    await s.write(r2, 4096, a.subarray(0, 200_000), V, { fua: false });
    expect(writes).toEqual(pieces(hdr + 4096, hdr + 4096 + 200_000 + (4096 - (200_000 % 4096))));
    writes.length = 0;
    // An installed copy is written in pieces too.
    const r3 = blockRef(8, 1, 2);
    await s.install(r3, a, V, { fua: false });
    expect(writes).toEqual(pieces(hdr, hdr + MiB));
    expect((await s.read(r3, 0, MiB)).equals(a)).toBe(true);
    await s.close();
    // A process that starts has nothing cached: the first whole-block write is in pieces again.
    writes.length = 0;
    const s2 = await open({ blockSize: MiB });
    await s2.write(r, 0, a, makeVersion(1, 4), { fua: false });
    expect(writes).toEqual(pieces(hdr, hdr + MiB));
    expect((await s2.read(r, 0, MiB)).equals(a)).toBe(true);
    await s2.close();
  });

  it('keeps at most crcTablesMax CRC tables of blocks unchanged since the last checkpoint, and checks reads against tables read back from the headers', async () => {
    const s = await open({ crcTablesMax: 4 });
    const refs = Array.from({ length: 16 }, (_, i) => blockRef(5, 2, i));
    const data = refs.map(() => randomBytes(BS));
    for (let i = 0; i < refs.length; i++) await s.write(refs[i]!, 0, data[i]!, V, { fua: false });
    await s.write(refs[3]!, 4096 + 10, Buffer.from('partial'), V, { fua: false });
    data[3]!.write('partial', 4096 + 10);
    // Changed since the last checkpoint: the only current tables, all kept.
    expect(s.tablesHeld()).toBe(16);
    const digests = refs.map((r) => s.meta(r).digest);
    await s.checkpoint();
    expect(s.tablesHeld()).toBeLessThanOrEqual(4);
    // Digests answer from memory all the same, and reads check every page.
    expect(refs.map((r) => s.meta(r).digest)).toEqual(digests);
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < refs.length; i++) expect((await s.read(refs[i]!, 0, BS)).equals(data[i]!), `block ${i}`).toBe(true);
    }
    expect(s.tablesHeld()).toBeLessThanOrEqual(4);
    // A page that rots after its table left memory is caught by the table read back.
    const fh = await fopen(path.join(dir, 'blocks', '5', '2', 'a'), 'r+');
    await fh.write(Buffer.from([0xee]), 0, 1, headerBytes(BS) + 2 * 4096 + 7);
    await fh.close();
    const err = await s.read(refs[10]!, 2 * 4096, 4096).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_STORE_CRC_MISMATCH'), String(err)).toBe(true);
    // A partial write to a block whose table was dropped updates the table read back.
    await s.checkpoint();
    await s.write(refs[12]!, 100, Buffer.from('again'), V, { fua: false });
    data[12]!.write('again', 100);
    await s.checkpoint();
    for (const i of [0, 1, 2, 3]) await s.read(refs[i]!, 0, 4096);
    expect((await s.read(refs[12]!, 0, BS)).equals(data[12]!)).toBe(true);
    await s.close();
    const s2 = await open({ crcTablesMax: 4 });
    for (const i of [3, 12]) expect((await s2.read(refs[i]!, 0, BS)).equals(data[i]!), `block ${i} after a restart`).toBe(true);
    await s2.close();
  });

  it('keeps block files open without access-time updates (O_NOATIME)', async () => {
    const s = await open();
    const r = blockRef(1, 1, 5);
    await s.write(r, 0, randomBytes(8192), V, { fua: false });
    await s.read(r, 0, 4096);
    const blocks = path.join(dir, 'blocks');
    const held: number[] = [];
    for (const name of await readdir('/proc/self/fd')) {
      const target = await readlink(`/proc/self/fd/${name}`).catch(() => '');
      if (target.startsWith(blocks + path.sep)) held.push(Number(name));
    }
    expect(held.length).toBe(1);
    expect(openFlags(held[0]!) & fsConstants.O_NOATIME).toBe(fsConstants.O_NOATIME);
    await s.close();
  });

  it('refuses a write beyond the cap with TORUS_ERR_STORE_NO_SPACE and keeps earlier data', async () => {
    const s = await open({ capacity: 2 * MiB });
    const slots = s.capacityBlocks();
    expect(slots).toBeGreaterThan(0);
    for (let i = 0; i < slots; i++) await s.write(blockRef(6, 1, i), 0, Buffer.alloc(10, i + 1), V, { fua: false });
    const err = await s.write(blockRef(6, 1, slots), 0, Buffer.alloc(10, 9), V, { fua: false }).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_STORE_NO_SPACE')).toBe(true);
    // Writes to blocks that exist still work; trimming frees room.
    await s.write(blockRef(6, 1, 0), 20, Buffer.alloc(10, 5), V, { fua: false });
    await s.zero(blockRef(6, 1, 1), 0, BS, V, { punch: true, fua: false });
    await s.write(blockRef(6, 1, slots), 0, Buffer.alloc(10, 9), V, { fua: false });
    for (let i = 2; i < slots; i++) expect((await s.read(blockRef(6, 1, i), 0, 10)).equals(Buffer.alloc(10, i + 1))).toBe(true);
    await s.close();
  });

  it('frees blocks on whole-block trim and volume delete, also across restarts', async () => {
    let s = await open();
    for (let i = 0; i < 4; i++) await s.write(blockRef(7, 1, i), 0, Buffer.alloc(BS, 3), V, { fua: false });
    await s.write(blockRef(8, 1, 0), 0, Buffer.alloc(BS, 4), V, { fua: false });
    expect(s.usage().blocks).toBe(5);
    await s.zero(blockRef(7, 1, 0), 0, BS, V, { punch: true, fua: false });
    await s.deleteVolume(7);
    expect(s.usage().blocks).toBe(1);
    expect((await s.read(blockRef(7, 1, 2), 0, 10)).equals(Buffer.alloc(10))).toBe(true);
    await s.flush();
    await s.abandonForTest();
    s = await open();
    expect(s.usage().blocks).toBe(1);
    expect((await s.read(blockRef(8, 1, 0), 0, BS)).equals(Buffer.alloc(BS, 4))).toBe(true);
    await s.close();
    expect(await readdir(path.join(dir, 'blocks'))).toEqual(['8']);
  });

  it('zeroes with NO_HOLE keep the block allocated', async () => {
    const s = await open();
    const r = blockRef(9, 1, 0);
    await s.zero(r, 0, BS, V, { punch: false, fua: false });
    expect(s.meta(r).state).toBe('data');
    expect(s.usage().blocks).toBe(1);
    expect((await s.read(r, 0, BS)).equals(Buffer.alloc(BS))).toBe(true);
    await s.close();
  });

  it('survives many concurrent overlapping writes and reads with frequent checkpoints, matching a model', async () => {
    // Two CRC tables in memory at most: most reads and writes read theirs back from the header.
    const s = await open({ checkpointIntervalMs: 5, crcTablesMax: 2 });
    const model = new Map<number, Buffer>();
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 2000; i++) {
      const idx = rnd(8);
      const off = rnd(BS - 1);
      const len = 1 + rnd(Math.min(9000, BS - off));
      const buf = Buffer.alloc(len, rnd(256));
      const m = model.get(idx) ?? Buffer.alloc(BS);
      buf.copy(m, off);
      model.set(idx, m);
      ops.push(s.write(blockRef(11, 1, idx), off, buf, V, { fua: false }));
      if (i % 100 === 99) await Promise.all(ops.splice(0));
    }
    await Promise.all(ops);
    for (const [idx, m] of model) expect((await s.read(blockRef(11, 1, idx), 0, BS)).equals(m)).toBe(true);
    await s.flush();
    await s.abandonForTest();
    const s2 = await open();
    for (const [idx, m] of model) expect((await s2.read(blockRef(11, 1, idx), 0, BS)).equals(m)).toBe(true);
    await s2.close();
  });
});

const FIXTURE = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'upgrade-0.1.0', 'data-dir.tar.gz');

function blockFile(ref: { volumeId: number; generation: number; index: number }, root = dir): string {
  return path.join(root, 'blocks', ref.volumeId.toString(16), ref.generation.toString(16), ref.index.toString(16));
}

async function headerFormat(file: string): Promise<number> {
  const fh = await fopen(file, 'r');
  const b = Buffer.alloc(4);
  await fh.read(b, 0, 4, 8);
  await fh.close();
  return b.readUInt32BE(0);
}

describe('FileBlockStore: versions on disk', () => {
  it('reads a data dir written by 0.1.0: its blocks are data at VERSION_LEGACY, and are upgraded as they are written', async () => {
    execFileSync('tar', ['xzf', FIXTURE, '-C', dir]);
    const storeDir = path.join(dir, 'store');
    const bs = 64 * 1024;
    const openFixture = () => FileBlockStore.open({ dir: storeDir, blockSize: bs, capacity: 64 * MiB, logger: log, checkpointIntervalMs: 3_600_000 });
    let s = await openFixture();
    // What the fixture README says the volume holds.
    const want = Buffer.alloc(4 * MiB);
    want.fill(0x5a, 0, 307200);
    want.fill(0xc3, MiB, MiB + 64 * 1024);
    for (let i = 0; i < 64; i++) {
      const got = await s.read(blockRef(1, 1, i), 0, bs);
      expect(got.equals(want.subarray(i * bs, (i + 1) * bs)), `block ${i}`).toBe(true);
    }
    const held = [0, 1, 2, 3, 4, 0x10, 0x20, 0x21];
    expect(s.list({ limit: 100 }).map((b) => [b.ref.index, b.state, b.version, b.suspect])).toEqual(held.map((i) => [i, 'data', VERSION_LEGACY, false]));
    expect(s.usage().blocks).toBe(8);
    for (const b of s.list({ limit: 100 })) await s.verify(b.ref);
    expect(JSON.parse(await readFile(path.join(storeDir, 'store.json'), 'utf8'))).toMatchObject({ schema: 2, blockSize: bs });
    // Written blocks get the format-2 header at the next checkpoint; the others stay as they are.
    await s.write(blockRef(1, 1, 0), 0, Buffer.from('v2'), V, { fua: false });
    await s.checkpoint();
    expect(await headerFormat(blockFile(blockRef(1, 1, 0), storeDir))).toBe(2);
    expect(await headerFormat(blockFile(blockRef(1, 1, 1), storeDir))).toBe(1);
    await s.close();
    s = await openFixture();
    expect(s.meta(blockRef(1, 1, 0))).toMatchObject({ state: 'data', version: V, suspect: false });
    expect(s.meta(blockRef(1, 1, 1))).toMatchObject({ state: 'data', version: VERSION_LEGACY, suspect: false });
    expect((await s.read(blockRef(1, 1, 0), 0, 3)).toString('latin1')).toBe('v2Z');
    await s.close();
  });

  it('refuses a store.json of a newer schema with TORUS_ERR_DATA_DIR_NEWER, naming both', async () => {
    await writeFile(path.join(dir, 'store.json'), JSON.stringify({ schema: 3, blockSize: BS }));
    const err = await open().catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_DATA_DIR_NEWER')).toBe(true);
    expect((err as Error).message).toMatch(/schema 3.*up to 2/);
  });

  it('refuses an unparseable store.json with TORUS_ERR_STORE_CORRUPT', async () => {
    await writeFile(path.join(dir, 'store.json'), '{"schema":');
    expect(isTorusError(await open().catch((e: unknown) => e), 'TORUS_ERR_STORE_CORRUPT')).toBe(true);
  });

  it('keeps states and versions across a clean restart; a tombstone is a header-only file; drop deletes the file', async () => {
    let s = await open();
    const a = blockRef(1, 1, 0);
    const t = blockRef(1, 1, 1);
    const d = blockRef(1, 1, 2);
    await s.write(a, 0, Buffer.alloc(BS, 1), makeVersion(4, 2), { fua: false });
    await s.write(t, 0, Buffer.alloc(BS, 2), makeVersion(4, 1), { fua: false });
    await s.zero(t, 0, BS, makeVersion(4, 9), { punch: true, fua: false });
    await s.write(d, 0, Buffer.alloc(BS, 3), makeVersion(4, 1), { fua: false });
    await s.drop(d);
    expect((await stat(blockFile(t))).size).toBe(headerBytes(BS));
    await expect(stat(blockFile(d))).rejects.toThrow(/ENOENT/);
    const before = s.list({ limit: 10 });
    await s.close();
    s = await open();
    expect(s.list({ limit: 10 })).toEqual(before);
    expect(before.map((b) => [b.state, b.version])).toEqual([
      ['data', makeVersion(4, 2)],
      ['zero', makeVersion(4, 9)],
    ]);
    expect(s.usage().blocks).toBe(1);
    await s.close();
  });

  it('keeps suspect blocks suspect across clean restarts until they are confirmed, installed or dropped', async () => {
    let s = await open();
    const refs = [blockRef(1, 1, 0), blockRef(1, 1, 1), blockRef(1, 1, 2)];
    for (const r of refs) await s.write(r, 0, Buffer.alloc(BS, 1), V, { fua: false });
    await s.flush();
    await s.abandonForTest();
    s = await open();
    expect(s.suspects()).toEqual(refs);
    await s.close();
    s = await open();
    expect(s.suspects()).toEqual(refs);
    await s.confirm(refs[0]!, V);
    await s.install(refs[1]!, Buffer.alloc(BS, 2), makeVersion(1, 2), { fua: false });
    await s.close();
    s = await open();
    expect(s.suspects()).toEqual([refs[2]]);
    await s.drop(refs[2]!);
    // A crash before the checkpoint that would drop it from the list: it stays suspect (absent).
    await s.abandonForTest();
    s = await open();
    expect(s.meta(refs[2]!)).toEqual({ state: 'absent', version: VERSION_ABSENT, suspect: true, digest: 0 });
    expect(s.meta(refs[0]!)).toMatchObject({ version: V, suspect: false });
    await s.drop(refs[2]!);
    await s.close();
    s = await open();
    expect(s.suspects()).toEqual([]);
    await s.close();
  });

  it('a crash leaves blocks the dirty log names suspect at the version their header holds', async () => {
    let s = await open();
    const r = blockRef(1, 1, 0);
    await s.write(r, 0, Buffer.alloc(BS, 1), makeVersion(2, 1), { fua: false });
    await s.checkpoint();
    await s.write(r, 0, Buffer.alloc(BS, 2), makeVersion(2, 2), { fua: false });
    await s.flush();
    await s.abandonForTest();
    s = await open();
    expect(s.meta(r)).toMatchObject({ state: 'data', version: makeVersion(2, 1), suspect: true });
    expect((await s.read(r, 0, BS)).equals(Buffer.alloc(BS, 2))).toBe(true);
    await s.close();
  });

  it('a block whose header cannot be read comes back suspect, its checksums recomputed from its data', async () => {
    let s = await open();
    const r = blockRef(1, 1, 0);
    await s.write(r, 0, Buffer.alloc(BS, 7), V, { fua: false });
    await s.close();
    const fh = await fopen(blockFile(r), 'r+');
    await fh.write(Buffer.from('garbage!'), 0, 8, 0);
    await fh.close();
    s = await open();
    expect(s.meta(r)).toMatchObject({ state: 'data', version: VERSION_LEGACY, suspect: true });
    expect((await s.read(r, 0, BS)).equals(Buffer.alloc(BS, 7))).toBe(true);
    await s.close();
  });

  it('a block in its first write reads as absent to meta and list until its pages are in, as the peer codec requires', async () => {
    const s = await open();
    const r = blockRef(1, 1, 5);
    // meta() and list() take no lock; a peer's LIST can land while the
    // first write of a block waits for its pwrite. Look at that moment.
    const seen: string[] = [];
    const inner = s as unknown as { writePages: (e: { ref: BlockRef }, ...a: unknown[]) => Promise<void> };
    const writePages = inner.writePages.bind(s);
    inner.writePages = async (e, ...a) => {
      const now = [s.meta(e.ref), ...s.list({ volumeId: 1, after: null, limit: 10 }).filter((b) => b.ref.index === e.ref.index)];
      for (const m of now) encodeBlockMeta(m, Buffer.alloc(BLOCK_META_BYTES), 0);
      await writePages(e, ...a);
      seen.push(`${e.ref.index}: ${now.map((m) => m.state).join(' ')}`);
    };
    // A whole-block write, and a zero without punch: both make a data block.
    await s.write(r, 0, randomBytes(BS), V, { fua: false });
    await s.zero(blockRef(1, 1, 6), 4096, 4096, V, { punch: false, fua: false });
    // A later write to a block that has a version shows the version it had.
    await s.write(r, 0, randomBytes(100), makeVersion(1, 2), { fua: false });
    expect(seen).toEqual(['5: absent absent', '6: absent absent', '5: data data']);
    expect(s.meta(r)).toMatchObject({ state: 'data', version: makeVersion(1, 2) });
    await s.close();
  });

  it('an abandoned store refuses changes but still answers meta', async () => {
    const s = await open();
    const r = blockRef(1, 1, 0);
    await s.write(r, 0, Buffer.alloc(10, 1), V, { fua: false });
    await s.abandonForTest();
    expect(s.meta(r)).toMatchObject({ state: 'data', version: V });
    expect(isTorusError(await s.write(r, 0, Buffer.alloc(1), V, { fua: false }).catch((e: unknown) => e), 'TORUS_ERR_STORE_CLOSED')).toBe(true);
  });
});

localStoreContract('FileBlockStore', async () => {
  const blockSize = 16 * 1024;
  const root = await mkdtemp(path.join(os.tmpdir(), 'torus-store-contract-'));
  const where = new Map<LocalBlockStore, { dir: string; capacity: number }>();
  let n = 0;
  const openAt = async (at: { dir: string; capacity: number }) => {
    const s = await FileBlockStore.open({ dir: at.dir, blockSize, capacity: at.capacity, logger: log, checkpointIntervalMs: 3_600_000 });
    where.set(s, at);
    return s;
  };
  return {
    blockSize,
    open: (blocks) => openAt({ dir: path.join(root, String(n++)), capacity: blocks * blockFileBytes(blockSize) }),
    crash: async (store) => {
      await (store as FileBlockStore).abandonForTest();
      return openAt(where.get(store)!);
    },
    checkpoint: (store) => (store as FileBlockStore).checkpoint(),
    corrupt: async (store, ref, page) => {
      const file = path.join(where.get(store)!.dir, 'blocks', ref.volumeId.toString(16), ref.generation.toString(16), ref.index.toString(16));
      const fh = await fopen(file, 'r+');
      const at = headerBytes(blockSize) + page * 4096 + 17;
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      b[0] = b[0]! ^ 0xa5;
      await fh.write(b, 0, 1, at);
      await fh.close();
    },
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
});

describe('FileBlockStore against its in-memory twin', () => {
  it('ends in the same states, versions, digests and bytes after random changes, one chain per block, with checkpoints running', async () => {
    const { MemoryBlockStore } = await import('../../src/store/memory-block-store.js');
    const { SeededRandom } = await import('../../src/util/random.js');
    const bs = 16 * 1024;
    const blocks = 24;
    // Room for every block: which change of which block runs first differs
    // between the two stores (the twin applies at once, the file store
    // queues per block), so a full store would refuse different changes.
    const capacityBlocks = blocks;
    // Three CRC tables in memory at most: tables leave and are read back from the headers throughout.
    const openFile = (checkpointIntervalMs: number) =>
      FileBlockStore.open({ dir, blockSize: bs, capacity: capacityBlocks * blockFileBytes(bs), logger: log, checkpointIntervalMs, crcTablesMax: 3 });
    const file = await openFile(3);
    const mem = new MemoryBlockStore({ blockSize: bs, capacity: capacityBlocks * bs });
    const rnd = new SeededRandom(42);
    const chains = new Map<number, Promise<void>>();
    const failures: string[] = [];
    for (let i = 0; i < 1500; i++) {
      const idx = rnd.int(blocks);
      const ref = blockRef(1 + (idx % 3), 1, idx);
      const version = makeVersion(1, i + 1);
      const op = rnd.int(10);
      const off = rnd.int(bs);
      const len = rnd.int(bs - off + 1);
      const bytes = rnd.bytes(len);
      const fua = rnd.int(8) === 0;
      const punch = rnd.int(2) === 0;
      const whole = rnd.int(3) === 0 ? null : Buffer.alloc(bs, version & 0xff);
      const run = async (s: LocalBlockStore): Promise<void> => {
        if (op < 5) await s.write(ref, off, bytes, version, { fua });
        else if (op === 5) await s.zero(ref, 0, bs, version, { punch: true, fua });
        else if (op === 6) await s.zero(ref, off, len, version, { punch, fua });
        else if (op === 7) await s.install(ref, whole, version, { fua });
        else if (op === 8) await s.drop(ref);
        else s.markSuspect(ref);
      };
      await run(mem);
      // The same change, queued behind the block's previous one, as the
      // replica layer orders changes per block.
      const prev = chains.get(idx) ?? Promise.resolve();
      chains.set(idx, prev.then(() => run(file)).catch((err: unknown) => void failures.push(String(err))));
      if (i % 200 === 199) await Promise.all(chains.values());
    }
    await Promise.all(chains.values());
    expect(failures).toEqual([]);
    expect(file.list({ limit: 1000 })).toEqual(mem.list({ limit: 1000 }));
    expect(file.usage().blocks).toBe(mem.usage().blocks);
    for (const b of mem.list({ limit: 1000 })) expect((await file.read(b.ref, 0, bs)).equals(await mem.read(b.ref, 0, bs))).toBe(true);
    await file.flush();
    await file.abandonForTest();
    const again = await openFile(3_600_000);
    // Everything was flushed: each block keeps its state and bytes. Blocks the
    // dirty log names are suspect (a dropped one is absent and suspect) and
    // may show the version of their last checkpoint; the others show theirs.
    for (const b of mem.list({ limit: 1000 })) {
      if (b.state === 'absent') continue;
      expect(again.meta(b.ref), `block ${b.ref.index}`).toMatchObject({ state: b.state, digest: b.digest });
    }
    for (const b of again.list({ limit: 1000 })) {
      if (b.state === 'absent') expect(b.suspect && mem.meta(b.ref).state === 'absent').toBe(true);
      else if (!b.suspect) expect(b.version).toBe(mem.meta(b.ref).version);
      if (b.state === 'data') expect((await again.read(b.ref, 0, bs)).equals(await mem.read(b.ref, 0, bs))).toBe(true);
    }
    await again.close();
  });
});
