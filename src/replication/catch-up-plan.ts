import type { BlockMeta } from '../model/block-meta.js';
import { compareCopies } from '../model/block-meta.js';

/**
 * Which blocks a peer recorded stale for a whole volume may still lack
 * (docs/replication.md, "Catch-up"). Pure: the coordinator gathers the
 * listings and the trusted owners, this decides.
 *
 * A whole-volume record can only be cleared by one coordinator's complete
 * pass over every block; a volume whose writer changes every few seconds
 * (a client that reconnects) never gets one. Narrowing the record to the
 * blocks this plan returns lets every later pass clear block by block, so
 * progress outlives the coordinator that made it.
 *
 * A block is left out (caught up) only on evidence: the peer's listing and
 * the listing of every trusted owner of the block were read, at least one
 * trusted owner exists, and the peer's copy equals the newest trusted copy
 * (the same version and state, neither suspect; versions are never reused,
 * so one version is one content), or no one holds the block at all. Any
 * doubt (an owner not listed, a suspect copy, a copy newer or older than
 * the trusted ones) keeps the block in the plan, where the per-block pass
 * compares and copies it as before.
 */
export interface CatchUpPlanInput {
  /** Block indexes of the volume: 0 .. blockCount-1. */
  readonly blockCount: number;
  readonly peer: string;
  /** The peer's own copies by block index (a complete listing). */
  readonly peerCopies: ReadonlyMap<number, BlockMeta>;
  /** Complete listings of other peers by uuid; a peer missing here could not be listed. */
  readonly listings: ReadonlyMap<string, ReadonlyMap<number, BlockMeta>>;
  /** Owners of block `index` that include the stale peer (else null: not its block). */
  ownersOf(index: number): readonly string[] | null;
  /** Owners a read of block `index` may trust (stale records and the ring phase applied). */
  trustedOf(index: number): readonly string[];
}

export function planCatchUp(input: CatchUpPlanInput): number[] {
  const keep: number[] = [];
  for (let index = 0; index < input.blockCount; index++) {
    const owners = input.ownersOf(index);
    if (owners === null || !owners.includes(input.peer)) continue;
    if (!caughtUp(input, index)) keep.push(index);
  }
  return keep;
}

function caughtUp(input: CatchUpPlanInput, index: number): boolean {
  const trusted = input.trustedOf(index).filter((u) => u !== input.peer);
  if (trusted.length === 0) return false;
  let newest: BlockMeta | null = null;
  for (const u of trusted) {
    const listing = input.listings.get(u);
    if (listing === undefined) return false;
    const m = listing.get(index);
    if (m === undefined) continue;
    if (m.suspect) return false;
    if (newest === null || compareCopies(m, newest) > 0) newest = m;
  }
  const own = input.peerCopies.get(index);
  if (newest === null) return own === undefined;
  if (own === undefined || own.suspect) return false;
  if (compareCopies(own, newest) !== 0) return false;
  return own.state !== 'data' || newest.state !== 'data' || own.digest === newest.digest;
}
