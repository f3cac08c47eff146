import { assert } from '../../src/util/assert.js';

/**
 * What a read of each sector of a volume may return, from the history of
 * operations the workload issued (docs/replication.md, guarantees 1 and 4).
 *
 * Every sector keeps an ordered list of candidates: the value the newest
 * settled state gave it, then every operation on it whose outcome is not
 * known (failed, timed out, abandoned: it may or may not have landed), in
 * the order they were issued. Writes on overlapping sectors are never in
 * flight together (the workload sees to it), so this order is the order of
 * their versions.
 *
 * - An acknowledged write, trim or zero leaves exactly its value.
 * - An operation that failed appends its value: it may land, later than
 *   everything before it.
 * - A read that returns a candidate drops every candidate before it: the
 *   sector can never go back in time, only forward to an operation issued
 *   later whose outcome is unknown.
 * - A crash may lose what was not durable: the list widens back to the
 *   newest operation that some store still holds (never further back than
 *   what a FLUSH made durable).
 *
 * A value is 0 for zeroes (trim, write-zeroes, never written), else the id
 * of the write that produced it.
 */
export interface Candidate {
  /** The operation id (0: the volume's initial zeroes). */
  readonly op: number;
  readonly value: number;
  readonly acked: boolean;
  /** The writer handle that carried the operation (-1 for the initial state). */
  readonly handle: number;
  /** Model sequence at completion: orders completions against FLUSH issues. */
  readonly doneSeq: number;
}

const INITIAL: Candidate = Object.freeze({ op: 0, value: 0, acked: true, handle: -1, doneSeq: 0 });

/**
 * Candidates per sector before the model refuses to widen any further: far
 * beyond what a seed produces (the workload flushes often), a guard against
 * a runaway list.
 */
const TIMELINE_MAX = 4096;

class SectorTrack {
  /** What a read may return now; first entry is the settled base. */
  cands: Candidate[] = [INITIAL];
  /**
   * Everything completed on this sector since its durable base (first
   * entry), in order: what a crash may widen the candidates back to.
   */
  timeline: Candidate[] = [INITIAL];
  /**
   * For each acknowledged change on this sector: the first candidate that
   * was possible just before it (what writerLost may widen back to).
   */
  readonly before = new WeakMap<Candidate, Candidate>();
}

export type Observation = { ok: true } | { ok: false; why: string };

export class VolumeModel {
  private readonly sectors: SectorTrack[];
  /** Sectors with history since their durable base: the only ones a crash can change. */
  private readonly unsettled = new Set<number>();
  /** Per writer handle, the sectors with an acknowledged change of its since their durable base: the only ones its flush can move. */
  private readonly byHandle = new Map<number, Set<number>>();
  /** Writer handles with an acknowledged, unflushed change when a store crashed: their flushes may fail with TORUS_ERR_DATA_LOST. */
  private readonly lostBy = new Set<number>();
  private crashCount = 0;

  /** Crashes so far (whole-volume calls of crashed()). */
  get crashes(): number {
    return this.crashCount;
  }

  constructor(
    readonly name: string,
    readonly volumeId: number,
    readonly sectorCount: number,
  ) {
    this.sectors = Array.from({ length: sectorCount }, () => new SectorTrack());
  }

  /** An operation's outcome is known: it was acknowledged. */
  acked(c: Omit<Candidate, 'acked'>, first: number, count: number): void {
    const cand: Candidate = { ...c, acked: true };
    let mine = this.byHandle.get(c.handle);
    if (mine === undefined) this.byHandle.set(c.handle, (mine = new Set()));
    for (let s = first; s < first + count; s++) {
      const t = this.track(s);
      t.before.set(cand, t.cands[0]!);
      t.cands = [cand];
      this.append(s, t, cand);
      mine.add(s);
    }
  }

  /** An operation failed, timed out or was abandoned: it may still land. */
  uncertain(c: Omit<Candidate, 'acked'>, first: number, count: number): void {
    const cand: Candidate = { ...c, acked: false };
    for (let s = first; s < first + count; s++) {
      const t = this.track(s);
      t.cands.push(cand);
      this.append(s, t, cand);
    }
  }

  /** A read returned `value` for sector `s`: allowed, and the sector can no longer go back before it. */
  observe(s: number, value: number): Observation {
    const t = this.track(s);
    const i = t.cands.findIndex((c) => c.value === value);
    if (i < 0) {
      return { ok: false, why: `sector ${s} read ${describe(value)}; allowed: ${t.cands.map((c) => describe(c.value)).join(', ')}` };
    }
    if (i > 0) t.cands = t.cands.slice(i);
    return { ok: true };
  }

  /** What sector s may read as now. */
  allowed(s: number): readonly Candidate[] {
    return this.track(s).cands;
  }

  /**
   * What a read through another process (a read-only open) may return for
   * sector s now. It sees no more than the writer promises others (README,
   * "Write levels"): at level all, an acknowledged change at once, so the
   * newest acknowledged value or anything after it (back as far as a
   * crash widened the writer's candidates); at levels one and local, only
   * what a FLUSH made durable, so anything since the durable base. Its
   * reads never narrow the writer's candidates: another process may see an
   * unacknowledged change land before the writer does, or not at all.
   */
  readerAllows(s: number, ackedVisible: boolean): number[] {
    const t = this.track(s);
    let from = 0;
    if (ackedVisible) {
      for (let i = t.timeline.length - 1; i > 0; i--) {
        if (t.timeline[i]!.acked) {
          from = i;
          break;
        }
      }
      const firstNow = t.timeline.indexOf(t.cands[0]!);
      assert(firstNow >= 0, 'the candidates start on the sector\'s timeline');
      from = Math.min(from, firstNow);
    }
    return t.timeline.slice(from).map((c) => c.value);
  }

  /** The single value sector s must read as, or null while more than one is possible. */
  exact(s: number): number | null {
    const c = this.track(s).cands;
    return c.length === 1 ? c[0]!.value : null;
  }

  /**
   * A FLUSH issued at model sequence `issueSeq` through `handle` was
   * acknowledged: the newest write that handle completed before it is
   * durable, so no crash can take a sector back before it. Returns, per
   * sector that moved, the candidate now durable (for the durability check).
   */
  flushed(handle: number, issueSeq: number): Map<number, Candidate> {
    const moved = new Map<number, Candidate>();
    const mine = this.byHandle.get(handle);
    if (mine === undefined) return moved;
    for (const s of [...mine]) {
      const t = this.sectors[s]!;
      let base = -1;
      for (let i = t.timeline.length - 1; i > 0; i--) {
        const c = t.timeline[i]!;
        if (c.acked && c.handle === handle && c.doneSeq < issueSeq) {
          base = i;
          break;
        }
      }
      if (base > 0) {
        t.timeline = t.timeline.slice(base);
        // A crash before this flush's acknowledgement may have widened the
        // candidates back past the new durable base; the acknowledgement
        // says the base survived it (checkFlushAck holds the stores to
        // that), so nothing older may be read any more. The candidates are
        // a suffix of the sector's history, so an older start means the
        // base is among them.
        const k = t.cands.indexOf(t.timeline[0]!);
        if (k > 0) t.cands = t.cands.slice(k);
        moved.set(s, t.timeline[0]!);
        if (t.timeline.length === 1) this.unsettled.delete(s);
      }
      // Still listed only while a later acknowledged change of this handle waits for its flush.
      if (!t.timeline.some((c, i) => i > 0 && c.acked && c.handle === handle)) mine.delete(s);
    }
    return moved;
  }

  /**
   * A store lost what it had not made durable. `held(s)` lists the values
   * some store (any peer, in the state a restart finds) still holds for
   * sector s: the sector may now read as any candidate from the newest one
   * still held (at worst its durable base) onwards. With a sector range,
   * only those sectors (a change in flight across a crash, acknowledged
   * after it) and the crash is not counted again.
   */
  crashed(held: (s: number) => ReadonlySet<number>, first = 0, count = this.sectorCount): void {
    if (first === 0 && count === this.sectorCount) this.crashCount++;
    for (const s of this.unsettled) {
      if (s < first || s >= first + count) continue;
      const t = this.sectors[s]!;
      const values = held(s);
      // The newest candidate some store still holds. Zeroes are one value
      // for every zeroing change, and a store holding zeroes may hold ones
      // older than the durable base (a tombstone left from before it): they
      // tell nothing, so they never narrow what the sector may read.
      let from = 0;
      for (let i = t.timeline.length - 1; i > 0; i--) {
        const value = t.timeline[i]!.value;
        if (value !== 0 && values.has(value)) {
          from = i;
          break;
        }
      }
      // The base of the candidates is the newest acknowledged or observed
      // value, never older than the durable base, so it is on the timeline.
      const firstNow = t.timeline.indexOf(t.cands[0]!);
      assert(firstNow >= 0, 'the candidates start on the sector\'s timeline');
      // Candidates only widen: a crash never makes something impossible.
      t.cands = t.timeline.slice(Math.min(from, firstNow));
      // Whatever was acknowledged and not yet flushed may be gone as far as
      // the writer can tell: a surviving copy of it may be the crashed
      // peer's own (suspect, its version unknown), which the coordinator
      // cannot tell from an older one.
      for (let i = 1; i < t.timeline.length; i++) {
        const c = t.timeline[i]!;
        if (c.acked) this.lostBy.add(c.handle);
      }
    }
  }

  /**
   * A writer at write level `one` or `local` lost its lock (paused past its
   * lease and taken over) before flushing: what it acknowledged since its
   * last flush may have reached only its own node, which is not trusted
   * until caught up, so it may be lost (README, "Write levels"). Each
   * sector it changed may read as it was before its first such change, or
   * anything since.
   */
  writerLost(handle: number): void {
    for (const s of this.unsettled) {
      const t = this.sectors[s]!;
      const first = t.timeline.findIndex((c, i) => i > 0 && c.acked && c.handle === handle);
      if (first < 0) continue;
      const firstNow = t.timeline.indexOf(t.cands[0]!);
      assert(firstNow >= 0, 'the candidates start on the sector\'s timeline');
      // Back to what the sector could read as just before that change: not
      // only the entry before it, which may be a change whose outcome is
      // unknown (failed, never landed) with older values still possible
      // (seed 4470: a write refused for a lost lock, then one acknowledged
      // by a writer paused and taken over; the read found the zeroes from
      // before both). An entry from before the durable base is the base.
      const start = Math.max(0, t.timeline.indexOf(t.before.get(t.timeline[first]!) ?? INITIAL));
      assert(start < first, 'what a sector could read before a change precedes it');
      t.cands = t.timeline.slice(Math.min(start, firstNow));
      this.lostBy.add(handle);
    }
  }

  /** Whether a crash may have taken an acknowledged change of this writer handle. */
  lostAcked(handle: number): boolean {
    return this.lostBy.has(handle);
  }

  /** Timeline entries of sector s (tests and failure reports). */
  timeline(s: number): readonly Candidate[] {
    return this.track(s).timeline;
  }

  private track(s: number): SectorTrack {
    const t = this.sectors[s];
    assert(t !== undefined, `sector ${s} lies within volume ${this.name}`);
    return t;
  }

  private append(s: number, t: SectorTrack, c: Candidate): void {
    t.timeline.push(c);
    this.unsettled.add(s);
    assert(t.timeline.length <= TIMELINE_MAX, 'a sector\'s unflushed history stays bounded (the workload flushes)');
  }
}

/** A sector value as the checkers' messages name it. */
export function describe(value: number): string {
  return value === 0 ? 'zeroes' : `write #${value}`;
}
