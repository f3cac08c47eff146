import { isTorusError } from '../../src/errors/torus-error.js';
import type { ErrorCode } from '../../src/errors/codes.js';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import type { RingRecord } from '../../src/model/records.js';
import { formatVersion } from '../../src/model/version.js';
import { replicasOf } from '../../src/ring/placement.js';
import type { InspectedCopy, MemoryBlockStore } from '../../src/store/memory-block-store.js';
import { describe, type Candidate, type VolumeModel } from './model.js';
import { SECTOR_BYTES, decodeSector, sectorValueAt } from './sectors.js';
import type { StoreChange } from './store-watch.js';

/**
 * The invariant checkers (docs/replication.md, "The guarantees"). Each
 * check is called by the runner at the moment its guarantee must hold and
 * reports the first violation it finds; the runner stops the seed there.
 */

export type Guarantee = 'G1/G4' | 'G3' | 'G4' | 'G5' | 'G6' | 'liveness' | 'bug';

export interface Violation {
  readonly guarantee: Guarantee;
  readonly message: string;
  /** Blocks involved (volume id, index), for the failure report's dump. */
  readonly blocks?: readonly (readonly [number, number])[];
}

/** One peer's disk as the checkers see it: alive or not, it keeps what it holds. */
export interface StoreView {
  readonly uuid: string;
  /** Running now (a dead or removed peer's copies are not counted by G5). */
  readonly alive: boolean;
  readonly store: MemoryBlockStore;
}

/** Error codes a read or write may fail with while faults are active (never wrong bytes). */
export const FAULT_ERROR_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'TORUS_ERR_BLOCK_UNAVAILABLE',
  'TORUS_ERR_REPLICA_QUORUM',
  'TORUS_ERR_VOLUME_LOCK_LOST',
  'TORUS_ERR_VOLUME_FENCED',
  'TORUS_ERR_SESSION_LOST',
  'TORUS_ERR_ETCD_UNAVAILABLE',
  'TORUS_ERR_TIMEOUT',
  'TORUS_ERR_PEER_UNAVAILABLE',
  'TORUS_ERR_PEER_NOT_LIVE',
  'TORUS_ERR_STORE_NO_SPACE',
  'TORUS_ERR_VOLUME_IN_USE',
  'TORUS_ERR_RING_OUTDATED',
  'TORUS_ERR_REPLICA_STALE',
]);

/** What a failed operation's error says about the code under test: an operating error, or a bug. */
export function classifyError(err: unknown): { code: string; bug: boolean } {
  if (!isTorusError(err)) return { code: err instanceof Error ? `${err.name}: ${err.message}` : String(err), bug: true };
  return { code: err.code, bug: err.code === 'TORUS_ERR_ASSERTION' };
}

/** An error's code with its message and details, for a violation's line (what torusd said, not just which code). */
export function errorText(err: unknown): string {
  if (!isTorusError(err)) return classifyError(err).code;
  const details = err.details === undefined ? '' : ` ${JSON.stringify(err.details)}`;
  return `${err.code} (${err.message}${details})`;
}

export class Checker {
  constructor(
    private readonly blockSize: number,
    private readonly stores: () => readonly StoreView[],
  ) {}

  private get sectorsPerBlock(): number {
    return this.blockSize / SECTOR_BYTES;
  }

  // ------------------------------------------------------------ G1 + G4: every read

  /** Every sector of a successful read is one the model allows; the model then moves forward. */
  checkRead(model: VolumeModel, firstSector: number, data: Buffer): Violation | null {
    return this.eachSector(model, firstSector, data, 'read garbage', (s, v) => {
      const o = model.observe(s, v);
      return o.ok ? null : o.why;
    });
  }

  /**
   * A read through a read-only open (readers.ts): every sector decodes to
   * one of the values `allowed` gives it. The model moves no further: what
   * another process saw binds nothing the writer reads.
   */
  checkReaderRead(model: VolumeModel, firstSector: number, data: Buffer, allowed: (s: number) => ReadonlySet<number>): Violation | null {
    return this.eachSector(model, firstSector, data, 'a read-only open read garbage', (s, v) => {
      const ok = allowed(s);
      return ok.has(v) ? null : `a read-only open read sector ${s} as ${describe(v)}; allowed: ${[...ok].map(describe).join(', ')}`;
    });
  }

  /** Decodes every sector of a read and asks `judge` about each value (a reason when it is not allowed); the first garbage or refusal is the violation. */
  private eachSector(model: VolumeModel, firstSector: number, data: Buffer, garbage: string, judge: (s: number, value: number) => string | null): Violation | null {
    const n = data.length / SECTOR_BYTES;
    for (let i = 0; i < n; i++) {
      const s = firstSector + i;
      const v = sectorValueAt(data, i * SECTOR_BYTES, model.volumeId, s);
      if (v === null) {
        const d = decodeSector(data, i * SECTOR_BYTES, model.volumeId, s);
        return { guarantee: 'G1/G4', message: `volume ${model.name} sector ${s}: ${garbage} (${d.kind === 'garbage' ? d.why : ''})` };
      }
      const why = judge(s, v);
      if (why !== null) return { guarantee: 'G1/G4', message: `volume ${model.name}: ${why}` };
    }
    return null;
  }

  /** A failed operation: an operating error while faults are active; never an assertion, never while quiet (but for a loss the model confirms). */
  checkFailure(what: string, err: unknown, faultsActive: boolean, lostAcked = false): Violation | null {
    const { code, bug } = classifyError(err);
    if (bug) return { guarantee: 'bug', message: `${what} failed with a bug: ${code}` };
    // A flush (or close) after a crash took an acknowledged, unflushed
    // change of this writer from every store: it must fail, faults or not
    // (until the client attaches again). Without such a loss it is a
    // needless failure.
    if (code === 'TORUS_ERR_DATA_LOST') {
      return lostAcked ? null : { guarantee: 'liveness', message: `${what} failed with ${code} although no crash could have taken an acknowledged change of this writer` };
    }
    if (!faultsActive) return { guarantee: 'liveness', message: `${what} failed with ${errorText(err)} while no fault was active` };
    if (!FAULT_ERROR_CODES.has(code as ErrorCode)) return { guarantee: 'G1/G4', message: `${what} failed with ${code}, not an error a fault explains` };
    return null;
  }

  // ------------------------------------------------------------ G3: write levels

  /**
   * A write acknowledged at level `all` is in the visible state of at least
   * `minCopies` of the block's owners (one for the levels `one` and
   * `local`): counted per block it touched, as the sectors it wrote. The
   * owners are those of every ring seen lately, old and new placements.
   */
  checkWriteAck(model: VolumeModel, op: Candidate, firstSector: number, count: number, minCopies: number, owners: (ref: BlockRef) => ReadonlySet<string>): Violation | null {
    for (const [index, sectors] of this.blocksOf(firstSector, count)) {
      const ref = blockRef(model.volumeId, 1, index);
      const own = owners(ref);
      // A replica applies a change to a block whole (one store call), so the first sector it touched tells.
      sectors.length = 1;
      let copies = 0;
      const holders: string[] = [];
      for (const v of this.stores()) {
        if (!own.has(v.uuid)) continue;
        const c = v.store.inspect(ref).visible;
        if (this.copyHolds(c, model, index, sectors, (value) => value === op.value, this.wasCorrupted(v.uuid, model.volumeId, index))) {
          copies++;
          holders.push(v.uuid.slice(0, 8));
        }
      }
      if (copies < minCopies) {
        return {
          guarantee: 'G3',
          message: `volume ${model.name} block ${index}: ${op.value === 0 ? 'zero' : `write #${op.op}`} acknowledged with ${copies} copies in memory (${holders.join(', ') || 'none'}); at least ${minCopies} required`,
        };
      }
    }
    return null;
  }

  /**
   * G4's second half, at the acknowledgement of a write at level `all`
   * under a ring that stayed stable since it was issued: every owner of a
   * block it touched that does not hold it (its copy neither suspect nor
   * damaged by a fault, its peer not crashed meanwhile) is named stale for
   * the block in etcd, as a missed block (not merely unsure) or the whole
   * volume. Memory is not enough: a coordinator that took over next would
   * trust that owner's older copy. `recorded` reads etcd's records.
   */
  checkMissedRecorded(model: VolumeModel, op: Candidate, firstSector: number, count: number, owners: (ref: BlockRef) => readonly string[], recorded: (uuid: string, index: number) => boolean): Violation | null {
    for (const [index, sectors] of this.blocksOf(firstSector, count)) {
      const ref = blockRef(model.volumeId, 1, index);
      const own = owners(ref);
      sectors.length = 1;
      for (const v of this.stores()) {
        if (!own.includes(v.uuid) || this.wasCorrupted(v.uuid, model.volumeId, index)) continue;
        const seen = v.store.inspect(ref);
        if (seen.suspect || this.copyHolds(seen.visible, model, index, sectors, (value) => value === op.value)) continue;
        if (!recorded(v.uuid, index)) {
          return {
            guarantee: 'G4',
            message: `volume ${model.name} block ${index}: ${op.value === 0 ? 'zero' : `write #${op.op}`} acknowledged while owner ${v.uuid.slice(0, 8)} lacks it, and etcd names it stale for the block nowhere`,
          };
        }
      }
    }
    return null;
  }

  /**
   * A FLUSH was acknowledged: each sector whose durable base moved (the
   * candidate the model now counts as durable) is, at this instant, in the
   * durable state of at least `minCopies` stores, as that value or a newer
   * one. Newer is the rest of the sector's timeline, and also a change
   * still in flight on the sector (`pending`): the model learns of a change
   * only when it completes, but the flush makes durable whatever the
   * replicas took before it, and a write issued before the flush's
   * acknowledgement may be among it.
   */
  checkFlushAck(model: VolumeModel, moved: ReadonlyMap<number, Candidate>, minCopies: number, pending: (s: number, value: number) => boolean = () => false): Violation | null {
    const byBlock = new Map<number, number[]>();
    for (const s of moved.keys()) {
      const b = Math.floor(s / this.sectorsPerBlock);
      let arr = byBlock.get(b);
      if (arr === undefined) byBlock.set(b, (arr = []));
      arr.push(s);
    }
    for (const [index, sectors] of byBlock) {
      const ref = blockRef(model.volumeId, 1, index);
      sectors.length = 1; // as in checkWriteAck: changes land whole per block
      const copies = this.stores().filter((v) =>
        this.copyHolds(v.store.inspect(ref).durable, model, index, sectors, (value, s) => model.timeline(s).some((c) => c.value === value) || pending(s, value), this.wasCorrupted(v.uuid, model.volumeId, index)),
      ).length;
      if (copies < minCopies) {
        const s0 = sectors[0]!;
        const want = moved.get(s0);
        const seen = this.stores().map((v) => {
          const c = v.store.inspect(ref).durable;
          const value = c === null || c.state === 'zero' ? 0 : sectorValueAt(c.data!, (s0 - index * this.sectorsPerBlock) * SECTOR_BYTES, model.volumeId, s0);
          return `${v.uuid.slice(0, 8)}:${value === null ? 'garbage' : value === 0 ? 'zeroes' : `#${value}`}`;
        });
        return {
          guarantee: 'G3',
          message: `volume ${model.name} block ${index}: FLUSH acknowledged with ${copies} durable copies; at least ${minCopies} required (sector ${s0} must hold ${want?.value === 0 ? 'zeroes' : `#${want?.value}`} or newer; durable: ${seen.join(' ')})`,
          blocks: [[model.volumeId, index]],
        };
      }
    }
    return null;
  }

  // ------------------------------------------------------------ G6: fencing

  private readonly newestToken = new Map<number, number>();

  /**
   * A change carrying a coordinator's token was applied at some replica:
   * never after a change with a newer token was applied anywhere, except on
   * a replica etcd names stale for that block (a peer that could not learn
   * the newer token is recorded stale for the whole volume before the newer
   * coordinator writes; what it holds is not trusted until caught up), or
   * one outside the ring, which holds only leftovers (`recordedStale` says
   * either).
   */
  checkApplied(uuid: string, volumeId: number, token: number, what: string, recordedStale: () => boolean): Violation | null {
    if (token <= 0) return null; // a peer's own leftover drop: no coordinator
    const newest = this.newestToken.get(volumeId) ?? 0;
    if (token < newest && !recordedStale()) {
      return { guarantee: 'G6', message: `peer ${uuid.slice(0, 8)} applied ${what} of volume ${volumeId} with token ${token} after a change with token ${newest} was applied` };
    }
    if (token > newest) this.newestToken.set(volumeId, token);
    return null;
  }

  /**
   * A change about to reach a store never takes a copy back to an older
   * version: writes and zeroes build on older versions, an install replaces
   * only an older or suspect copy, a confirm relabels only a suspect one
   * (docs/replication.md, "Versions": "A copy can never overwrite a newer
   * write"). Checked at the store's boundary, before the change.
   */
  checkStoreChange(uuid: string, c: StoreChange): Violation | null {
    const b = c.before;
    if (b.suspect || b.state === 'absent' || c.version >= b.version) return null;
    return {
      guarantee: 'G1/G4',
      message: `peer ${uuid.slice(0, 8)}: a ${c.kind} at ${formatVersion(c.version)} reached a copy of volume ${c.ref.volumeId} block ${c.ref.index} at ${formatVersion(b.version)} (newer, not suspect): a copy overwrote a newer one`,
      blocks: [[c.ref.volumeId, c.ref.index]],
    };
  }

  // ------------------------------------------------------------ G5: placement at rest

  /**
   * Once the cluster is quiet: every block of every live volume has exactly
   * R copies, on exactly the owners of the final ring, none suspect, equal
   * versions and digests; no copy anywhere else (running peers only). Blocks
   * that no one holds are fine (never written, or trimmed where no owner
   * held them): the reads that follow check their content.
   */
  checkPlacement(ring: RingRecord, volumes: readonly { id: number; name: string; blocks: number }[]): Violation | null {
    if (ring.transition !== null) return { guarantee: 'G5', message: `ring version ${ring.version} is still in transition (${ring.transition.phase})` };
    const live = this.stores().filter((v) => v.alive);
    const liveIds = new Set(volumes.map((v) => v.id));
    for (const vol of volumes) {
      for (let index = 0; index < vol.blocks; index++) {
        const ref = blockRef(vol.id, 1, index);
        const owners = replicasOf(ring, ref);
        const metas = live.map((v) => ({ uuid: v.uuid, meta: v.store.meta(ref) }));
        const holders = metas.filter((m) => m.meta.state !== 'absent' || m.meta.suspect);
        if (holders.length === 0) continue;
        const where = `volume ${vol.name} block ${index}`;
        const suspect = holders.find((h) => h.meta.suspect);
        if (suspect) return { guarantee: 'G5', message: `${where}: the copy on ${suspect.uuid.slice(0, 8)} is still suspect` };
        const extra = holders.filter((h) => !owners.includes(h.uuid));
        if (extra.length > 0) return { guarantee: 'G5', message: `${where}: leftover copies on ${extra.map((h) => h.uuid.slice(0, 8)).join(', ')} (owners ${owners.map((o) => o.slice(0, 8)).join(', ')})` };
        const missing = owners.filter((o) => !holders.some((h) => h.uuid === o));
        if (missing.length > 0) return { guarantee: 'G5', message: `${where}: owners ${missing.map((o) => o.slice(0, 8)).join(', ')} hold no copy (${holders.length} of ${owners.length})` };
        const first = holders[0]!.meta;
        const differ = holders.find((h) => h.meta.version !== first.version || h.meta.digest !== first.digest || h.meta.state !== first.state);
        if (differ) {
          return { guarantee: 'G5', message: `${where}: copies differ (${holders.map((h) => `${h.uuid.slice(0, 8)}=${h.meta.state}@${h.meta.version}/${h.meta.digest}`).join(', ')})` };
        }
        // Byte for byte too: a copy rotted on the medium keeps its stored checksums, so only its bytes tell.
        if (first.state === 'data') {
          const bytes = holders.map((h) => live.find((v) => v.uuid === h.uuid)!.store.inspect(ref).visible!.data!);
          const odd = bytes.findIndex((b) => !b.equals(bytes[0]!));
          if (odd >= 0) return { guarantee: 'G5', message: `${where}: copies on ${holders[0]!.uuid.slice(0, 8)} and ${holders[odd]!.uuid.slice(0, 8)} have the same version and digest but different bytes` };
        }
      }
    }
    // No blocks of deleted volumes, and none beyond a volume's end, on running peers.
    for (const v of live) {
      for (const id of v.store.volumeIds()) {
        if (!liveIds.has(id)) return { guarantee: 'G5', message: `peer ${v.uuid.slice(0, 8)} still holds blocks of volume ${id}, which no longer exists` };
      }
    }
    return null;
  }

  /**
   * For the model after a crash: per sector, the values some store holds
   * (any peer, dead or alive, in the state a restart finds). A block a store
   * does not hold contributes nothing: absence is not a zero that survived;
   * nor does a suspect copy (see below), nor, given `owners`, a copy on a
   * peer that is not among them.
   */
  heldValues(model: VolumeModel, owners?: (ref: BlockRef) => ReadonlySet<string>): (s: number) => ReadonlySet<number> {
    const spb = this.sectorsPerBlock;
    const stores = this.stores();
    return (s) => {
      const held = new Set<number>();
      const index = Math.floor(s / spb);
      const ref = blockRef(model.volumeId, 1, index);
      const own = owners?.(ref);
      for (const v of stores) {
        // A copy on a peer the ring no longer counts on for the block (an
        // old owner once its move has settled) is garbage collection's to
        // drop: it keeps nothing alive (seed 2705: a leftover held the
        // only copy of an acknowledged, unflushed write after both owners
        // crashed, and was then collected).
        if (own !== undefined && !own.has(v.uuid)) continue;
        const seen = v.store.inspect(ref);
        // A suspect copy (its peer stopped uncleanly since it last made the
        // block durable) may hold unflushed data that reached its disk, or
        // not, or part of it: its version cannot tell, so nothing in it
        // counts as surviving the crash until a coordinator confirms it.
        if (seen.suspect) continue;
        const c = seen.visible;
        if (c === null) continue;
        const value = c.state === 'zero' ? 0 : sectorValueAt(c.data!, (s - index * spb) * SECTOR_BYTES, model.volumeId, s);
        if (value !== null) held.add(value);
      }
      return held;
    };
  }

  // ------------------------------------------------------------ helpers

  /** The blocks a sector range touches, with the sectors it touches in each. */
  private blocksOf(firstSector: number, count: number): Map<number, number[]> {
    const out = new Map<number, number[]>();
    for (let s = firstSector; s < firstSector + count; s++) {
      const b = Math.floor(s / this.sectorsPerBlock);
      let arr = out.get(b);
      if (arr === undefined) out.set(b, (arr = []));
      arr.push(s);
    }
    return out;
  }

  /**
   * Whether a copy of block `index` holds, at every sector listed, a value
   * `ok` accepts. A missing block reads as zeroes (a trim of a block no
   * owner held leaves nothing), so it holds the value 0 only.
   */
  private copyHolds(c: InspectedCopy | null, model: VolumeModel, index: number, sectors: readonly number[], ok: (value: number, sector: number) => boolean, corrupted = false): boolean {
    const base = index * this.sectorsPerBlock;
    for (const s of sectors) {
      let value: number | null;
      if (c === null || c.state === 'zero') value = 0;
      else value = sectorValueAt(c.data!, (s - base) * SECTOR_BYTES, model.volumeId, s);
      // A sector a fault flipped bits in tells nothing of what the copy
      // took: G3 is about what was acknowledged, bit rot after it is the
      // fault's (reads and scrubs are checked for it by G1/G4 and G5).
      if (value === null && corrupted) continue;
      if (value === null || !ok(value, s)) return false;
    }
    return true;
  }

  /** Blocks whose copy on a peer a fault corrupted (`uuid/volumeId/index`); G3 does not count the flipped sectors against the copy. */
  private readonly corruptedCopies = new Set<string>();

  corrupted(uuid: string, ref: BlockRef): void {
    this.corruptedCopies.add(`${uuid}/${ref.volumeId}/${ref.index}`);
  }

  private wasCorrupted(uuid: string, volumeId: number, index: number): boolean {
    return this.corruptedCopies.has(`${uuid}/${volumeId}/${index}`);
  }
}

export function refOf(volumeId: number, index: number): BlockRef {
  return blockRef(volumeId, 1, index);
}
