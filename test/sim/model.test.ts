/**
 * The model of acknowledged writes and the sector format: the checker's
 * verdicts rest on these, so each rule is shown to accept what it must and
 * to refuse what it must.
 */
import { describe, expect, it } from 'vitest';
import { VolumeModel } from './model.js';
import { SECTOR_BYTES, decodeSector, encodeSectors, sectorValue } from './sectors.js';

describe('sector format', () => {
  it('names the write and tells zeroes, misplaced and torn sectors apart', () => {
    const buf = encodeSectors(3, 77, 10, 4);
    expect(buf.length).toBe(4 * SECTOR_BYTES);
    expect(decodeSector(buf, SECTOR_BYTES, 3, 11)).toEqual({ kind: 'write', writeId: 77 });
    expect(sectorValue(decodeSector(Buffer.alloc(SECTOR_BYTES), 0, 3, 11))).toBe(0);
    expect(decodeSector(buf, 0, 3, 11).kind).toBe('garbage'); // sector 10's bytes read at 11
    expect(decodeSector(buf, 0, 4, 10).kind).toBe('garbage'); // another volume's bytes
    const torn = Buffer.from(buf);
    torn.fill(0, 300, 512);
    expect(decodeSector(torn, 0, 3, 10).kind).toBe('garbage');
    expect(sectorValue(decodeSector(torn, 0, 3, 10))).toBeNull();
  });
});

const at = (op: number, handle = 1, doneSeq = op) => ({ op, value: op, handle, doneSeq });
const zero = (op: number, handle = 1, doneSeq = op) => ({ op, value: 0, handle, doneSeq });

describe('VolumeModel', () => {
  it('an acknowledged write is the only value; older values are refused', () => {
    const m = new VolumeModel('v', 1, 8);
    expect(m.observe(0, 0).ok).toBe(true);
    m.acked(at(5), 0, 2);
    expect(m.observe(0, 5).ok).toBe(true);
    expect(m.observe(1, 0).ok).toBe(false);
    expect(m.observe(2, 0).ok).toBe(true);
    m.acked(zero(6), 1, 1);
    expect(m.observe(1, 5).ok).toBe(false);
    expect(m.observe(1, 0).ok).toBe(true);
  });

  it('a read through another process: at level all from the newest acknowledged value, at the early levels from the durable base', () => {
    const m = new VolumeModel('v', 1, 1);
    m.acked(at(1), 0, 1);
    expect(m.flushed(1, 2).size).toBe(1); // write 1 durable
    m.acked(at(3), 0, 1);
    m.uncertain(at(4), 0, 1);
    expect(m.readerAllows(0, true)).toEqual([3, 4]);
    expect(m.readerAllows(0, false)).toEqual([1, 3, 4]);
    // The writer saw the uncertain write land; another process may still see the acknowledged one.
    expect(m.observe(0, 4).ok).toBe(true);
    expect(m.readerAllows(0, true)).toEqual([3, 4]);
    // A crash that took write 3 and 4 from every store: back to the durable base, for readers too.
    m.crashed(() => new Set([1]));
    expect(m.readerAllows(0, true)).toEqual([1, 3, 4]);
  });

  it('a failed write may land later, but a read never goes back before what it saw', () => {
    const m = new VolumeModel('v', 1, 1);
    m.acked(at(1), 0, 1);
    m.uncertain(at(2), 0, 1);
    m.uncertain(at(3), 0, 1);
    expect(m.allowed(0).map((c) => c.value)).toEqual([1, 2, 3]);
    expect(m.observe(0, 1).ok).toBe(true);
    expect(m.observe(0, 3).ok).toBe(true); // forward: op 3 landed late
    expect(m.observe(0, 2).ok).toBe(false); // back before op 3
    expect(m.observe(0, 1).ok).toBe(false);
    expect(m.observe(0, 9).ok).toBe(false); // never written here
  });

  it('a crash widens back to the newest value some store still holds, never before a flush', () => {
    const m = new VolumeModel('v', 1, 1);
    m.acked(at(1, 1, 1), 0, 1);
    m.acked(at(2, 1, 2), 0, 1);
    m.flushed(1, 3); // op 2 is durable
    m.acked(at(4, 1, 4), 0, 1);
    m.acked(at(5, 1, 5), 0, 1);
    m.crashed(() => new Set([4])); // op 5 is gone everywhere, op 4 survives somewhere
    expect(m.allowed(0).map((c) => c.value)).toEqual([4, 5]);
    m.crashed(() => new Set()); // nothing held: back to the durable base at worst
    expect(m.allowed(0).map((c) => c.value)).toEqual([2, 4, 5]);
    expect(m.observe(0, 1).ok).toBe(false);
    expect(m.observe(0, 4).ok).toBe(true);
  });

  it('zeroes some store holds never narrow after a crash: they may be older than the durable base', () => {
    const m = new VolumeModel('v', 1, 1);
    m.acked(at(1, 1, 1), 0, 1);
    m.flushed(1, 2); // op 1 is the durable base
    m.acked(zero(3, 1, 3), 0, 1); // unflushed
    m.crashed(() => new Set([0])); // a store holds zeroes: an old tombstone, or op 3
    expect(m.allowed(0).map((c) => c.value)).toEqual([1, 0]);
    expect(m.observe(0, 1).ok).toBe(true);
  });

  it('a writer that lost its lock before flushing may have lost what it acknowledged since, and nothing older', () => {
    const m = new VolumeModel('v', 1, 2);
    m.acked(at(1, 1, 1), 0, 2);
    m.flushed(1, 2); // op 1 durable
    m.acked(at(3, 1, 3), 0, 1);
    expect(m.observe(0, 3).ok).toBe(true); // the writer read its own write back
    m.acked(at(4, 2, 4), 1, 1); // another handle's write is not widened
    m.writerLost(1);
    expect(m.allowed(0).map((c) => c.value)).toEqual([1, 3]);
    expect(m.allowed(1).map((c) => c.value)).toEqual([4]);
    expect(m.lostAcked(1)).toBe(true);
    expect(m.lostAcked(2)).toBe(false);
  });

  it("a lost writer's change widens back to every value possible before it, past a change that may never have landed", () => {
    const m = new VolumeModel('v', 1, 3);
    m.uncertain(at(1, 1), 0, 3); // refused (a lost lock): it may or may not have landed
    expect(m.observe(1, 1).ok).toBe(true); // sector 1 was seen with it: it landed there
    m.acked(at(2, 3, 2), 0, 3); // then a writer at level one acknowledges a change, unflushed
    m.writerLost(3); // and is paused and taken over
    expect(m.allowed(0).map((c) => c.value)).toEqual([0, 1, 2]); // seed 4470 read zeroes here
    expect(m.allowed(1).map((c) => c.value)).toEqual([1, 2]); // never before what a read saw
    expect(m.observe(0, 0).ok).toBe(true);
    expect(m.observe(1, 0).ok).toBe(false);
  });

  it('a flush makes durable only what its own handle completed before it was issued', () => {
    const m = new VolumeModel('v', 1, 2);
    m.acked(at(1, 1, 1), 0, 1);
    m.acked(at(2, 2, 2), 1, 1);
    const moved = m.flushed(1, 2);
    expect([...moved.keys()]).toEqual([0]);
    m.crashed(() => new Set());
    expect(m.allowed(0).map((c) => c.value)).toEqual([1]);
    expect(m.allowed(1).map((c) => c.value)).toEqual([0, 2]);
  });

  it('a flush acknowledged after a crash widened the candidates narrows them to its durable base (seed 69)', () => {
    // Seed 69: a trim of a block no one held (a no-op, no tombstone), a
    // crash that found nothing held and widened back to the initial
    // zeroes, then a flush of the trim's handle: the model kept the
    // initial value as a candidate while the timeline dropped it, and the
    // next crash asserted.
    const m = new VolumeModel('v', 1, 1);
    m.acked(zero(1, 7, 1), 0, 1);
    m.crashed(() => new Set());
    expect(m.allowed(0).map((c) => c.op)).toEqual([0, 1]);
    m.flushed(7, 2);
    expect(m.allowed(0).map((c) => c.op)).toEqual([1]);
    m.uncertain(at(3, 7, 3), 0, 1);
    m.crashed(() => new Set());
    expect(m.allowed(0).map((c) => c.op)).toEqual([1, 3]);
    // A write acknowledged, lost by a crash, then flushed: the flush says it survived.
    m.acked(at(4, 7, 4), 0, 1);
    m.crashed(() => new Set());
    expect(m.allowed(0).map((c) => c.value)).toEqual([0, 3, 4]);
    m.flushed(7, 5);
    expect(m.allowed(0).map((c) => c.value)).toEqual([4]);
    expect(m.observe(0, 0).ok).toBe(false);
    expect(m.observe(0, 3).ok).toBe(false);
    expect(m.observe(0, 4).ok).toBe(true);
  });
});
