import type { BlockRef } from './block-ref.js';
import { VERSION_ABSENT, type Version } from './version.js';

/**
 * What one replica knows of one block, from memory (no disk read): what
 * replicas compare (docs/replication.md, "Versions").
 *
 * - `data`: the block holds bytes (pages never written read as zeroes).
 * - `zero`: a tombstone left by a whole-block TRIM or WRITE_ZEROES; reads
 *   as zeroes, takes no data space, and keeps its version so that an older
 *   copy can never bring the trimmed bytes back.
 * - `absent`: nothing here. Only an owner known to be current may take that
 *   for "never written".
 */
export type BlockState = 'data' | 'zero' | 'absent';

export interface BlockMeta {
  readonly state: BlockState;
  /** VERSION_ABSENT exactly when state is 'absent'. */
  readonly version: Version;
  /**
   * The copy may not match its version: written before an unclean stop
   * (the dirty log names it), failed a checksum, or a change arrived that
   * did not build on it (a gap). Never read, never trusted, until a
   * coordinator confirms or replaces it.
   */
  readonly suspect: boolean;
  /**
   * CRC-32C over the block's table of per-4-KiB-page CRC-32Cs (each as a
   * big-endian u32): equal digests at equal block size mean equal bytes,
   * without reading them. 0 for zero and absent blocks.
   */
  readonly digest: number;
}

/**
 * A copy's state, version and suspect flag without its digest: what the
 * replica's rules look at on every change. The digest sums the block's whole
 * CRC table, which every write changes; summing it again per write cost
 * more than the rest of the store's bookkeeping together.
 */
export type BlockHead = Pick<BlockMeta, 'state' | 'version' | 'suspect'>;

export interface ListedBlock extends BlockMeta {
  readonly ref: BlockRef;
}

export const ABSENT_META: BlockMeta = Object.freeze({ state: 'absent', version: VERSION_ABSENT, suspect: false, digest: 0 });
const SUSPECT_ABSENT_META: BlockMeta = Object.freeze({ state: 'absent', version: VERSION_ABSENT, suspect: true, digest: 0 });

/** The meta of an absent block, suspect or not. */
export function absentMeta(suspect: boolean): BlockMeta {
  return suspect ? SUSPECT_ABSENT_META : ABSENT_META;
}

export const ABSENT_HEAD: BlockHead = Object.freeze({ state: 'absent', version: VERSION_ABSENT, suspect: false });
const SUSPECT_ABSENT_HEAD: BlockHead = Object.freeze({ state: 'absent', version: VERSION_ABSENT, suspect: true });

/** The head of an absent block, suspect or not. */
export function absentHead(suspect: boolean): BlockHead {
  return suspect ? SUSPECT_ABSENT_HEAD : ABSENT_HEAD;
}

/**
 * Orders two copies: which is newer. Versions first; at equal versions a
 * present copy is newer than an absent one (0.1.0 blocks are version 0).
 * Suspect copies are not ordered by this: callers exclude them.
 */
export function compareCopies(a: Pick<BlockMeta, 'state' | 'version'>, b: Pick<BlockMeta, 'state' | 'version'>): number {
  if (a.version !== b.version) return a.version < b.version ? -1 : 1;
  const pa = a.state === 'absent' ? 0 : 1;
  const pb = b.state === 'absent' ? 0 : 1;
  return pa - pb;
}
