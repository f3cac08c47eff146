import { assert } from '../util/assert.js';

/**
 * Block versions (docs/replication.md, "Versions"). A version is assigned by
 * a volume's coordinator, never by a replica:
 *
 *   version = token * 2^32 + seq
 *
 * `token` is the coordinator's fencing token, `seq` counts that
 * coordinator's changes to the block (1, 2, ...). Versions of one block only
 * grow, and two copies at the same version hold the same bytes. Pure maths.
 *
 * Versions are plain numbers (safe integers): tokens stay below 2^21, far
 * beyond any volume's lock history, so comparisons stay cheap on the data
 * path.
 */
export type Version = number;

/** The version of a block that is not there at all. */
export const VERSION_ABSENT: Version = -1;
/** Blocks written by 0.1.0 (before versions) count as version 0. */
export const VERSION_LEGACY: Version = 0;

const TWO_32 = 2 ** 32;
/** Tokens above this cannot be packed into a safe-integer version. */
export const TOKEN_MAX = 2 ** 21 - 1;
export const SEQ_MAX = TWO_32 - 1;

export function makeVersion(token: number, seq: number): Version {
  assert(Number.isInteger(token) && token >= 1 && token <= TOKEN_MAX, 'token is within 1..TOKEN_MAX');
  assert(Number.isInteger(seq) && seq >= 1 && seq <= SEQ_MAX, 'seq is within 1..SEQ_MAX');
  return token * TWO_32 + seq;
}

/** The token that made a version (0 for legacy and absent). */
export function versionToken(v: Version): number {
  return v <= 0 ? 0 : Math.floor(v / TWO_32);
}

export function versionSeq(v: Version): number {
  return v <= 0 ? 0 : v % TWO_32;
}

/**
 * The version a coordinator holding `token` gives its next change of a block
 * now at `prev`. Null when the block's seq under this token is exhausted
 * (2^32 - 1 changes of one block by one coordinator): the coordinator must
 * take a newer token before it changes the block again.
 */
export function nextVersion(prev: Version, token: number): Version | null {
  const t = versionToken(prev);
  assert(token >= t, 'a coordinator never holds a token older than a version it builds on');
  if (t < token) return makeVersion(token, 1);
  const seq = versionSeq(prev);
  return seq >= SEQ_MAX ? null : prev + 1;
}

export function isVersion(v: unknown): v is Version {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= VERSION_ABSENT;
}

/** `t3.17`, `legacy`, `absent`: for logs and errors. */
export function formatVersion(v: Version): string {
  if (v === VERSION_ABSENT) return 'absent';
  if (v === VERSION_LEGACY) return 'legacy';
  return `t${versionToken(v)}.${versionSeq(v)}`;
}

/**
 * Whether a copy at this version may be a change that reached only some
 * owners with no stale record naming the others: written under a token no
 * newer than `expiredToken` (the newest whose lock ended without a clean
 * release), or, for a holder of `ownToken`, under a token newer than it (a
 * holder after us). A holder's own changes, and those of holders that let
 * go cleanly, recorded every owner they missed.
 */
export function mayBeHalfWay(version: Version, expiredToken: number, ownToken?: number): boolean {
  const t = versionToken(version);
  if (ownToken !== undefined && t === ownToken) return false;
  if (ownToken !== undefined && t > ownToken) return true;
  return expiredToken > 0 && t <= expiredToken;
}
