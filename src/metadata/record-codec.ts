import { TorusError } from '../errors/torus-error.js';
import { isSortedDisjoint, normalizeRanges, type BlockRange } from '../model/ranges.js';
import type {
  ClusterConfig,
  PeerRecord,
  Placement,
  RingAck,
  RingMember,
  RingRecord,
  RingTransition,
  StaleRecord,
  VolumeHealthRecord,
  VolumeLockRecord,
  VolumeMoveRecord,
  VolumeRecord,
} from '../model/records.js';
import { CARRIED_PLACEMENTS_MAX, minReplicasDefault } from '../ring/transition.js';

/**
 * Decodes the JSON records kept in etcd, checking their shape: a record that
 * does not parse is reported (TORUS_ERR_METADATA_CORRUPT, naming the key),
 * never treated as absent.
 */

type Json = Record<string, unknown>;

function corrupt(key: string, why: string): TorusError {
  return new TorusError('TORUS_ERR_METADATA_CORRUPT', `etcd key "${key}" holds a bad record: ${why}`, { details: { key } });
}

/** The JSON object in `text`, whose `schema` must be one of `schemas`. */
function object(key: string, text: string, schemas: readonly number[] = [1]): Json {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw corrupt(key, 'not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw corrupt(key, 'not a JSON object');
  const o = v as Json;
  if (!schemas.includes(o['schema'] as number)) throw corrupt(key, `unknown schema ${JSON.stringify(o['schema'])}`);
  return o;
}

function sub(key: string, o: Json, field: string): Json {
  const v = o[field];
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw corrupt(key, `field "${field}" is not an object`);
  return v as Json;
}

function bool(key: string, o: Json, field: string): boolean {
  const v = o[field];
  if (typeof v !== 'boolean') throw corrupt(key, `field "${field}" is not true or false`);
  return v;
}

/** A non-negative integer (counts, versions, ids). */
function count(key: string, o: Json, field: string): number {
  const v = int(key, o, field);
  if (v < 0) throw corrupt(key, `field "${field}" is negative`);
  return v;
}

function int(key: string, o: Json, field: string): number {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw corrupt(key, `field "${field}" is not an integer`);
  return v;
}

function num(key: string, o: Json, field: string): number {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw corrupt(key, `field "${field}" is not a number`);
  return v;
}

function str(key: string, o: Json, field: string): string {
  const v = o[field];
  if (typeof v !== 'string') throw corrupt(key, `field "${field}" is not a string`);
  return v;
}

function strOrNull(key: string, o: Json, field: string): string | null {
  const v = o[field];
  if (v === null || v === undefined) return null;
  if (typeof v !== 'string') throw corrupt(key, `field "${field}" is not a string or null`);
  return v;
}

export function decodeClusterConfig(key: string, text: string): ClusterConfig {
  const o = object(key, text);
  return { schema: 1, id: str(key, o, 'id'), blockSize: int(key, o, 'blockSize'), replication: int(key, o, 'replication'), createdAt: str(key, o, 'createdAt') };
}

export function decodeVolumeRecord(key: string, text: string): VolumeRecord {
  const o = object(key, text);
  if (o['type'] !== 'block') throw corrupt(key, `unknown volume type ${JSON.stringify(o['type'])}`);
  return {
    schema: 1,
    id: int(key, o, 'id'),
    name: str(key, o, 'name'),
    type: 'block',
    size: int(key, o, 'size'),
    blockSize: int(key, o, 'blockSize'),
    generation: int(key, o, 'generation'),
    createdAt: str(key, o, 'createdAt'),
  };
}

export function decodePeerRecord(key: string, text: string): PeerRecord {
  const o = object(key, text);
  return {
    schema: 1,
    uuid: str(key, o, 'uuid'),
    address: str(key, o, 'address'),
    nbdAddress: strOrNull(key, o, 'nbdAddress'),
    httpAddress: strOrNull(key, o, 'httpAddress'),
    capacity: int(key, o, 'capacity'),
    used: int(key, o, 'used'),
    updatedAt: str(key, o, 'updatedAt'),
    hostname: str(key, o, 'hostname'),
    pid: int(key, o, 'pid'),
    version: str(key, o, 'version'),
    // Absent from 0.1.0 records: left out rather than invented.
    ...(o['incarnation'] === undefined ? {} : { incarnation: str(key, o, 'incarnation') }),
    ...(o['rebalanceBytesPerSec'] === undefined ? {} : { rebalanceBytesPerSec: num(key, o, 'rebalanceBytesPerSec') }),
    ...(o['suspectVolumes'] === undefined ? {} : { suspectVolumes: intList(key, o, 'suspectVolumes') }),
  };
}

function intList(key: string, o: Json, field: string): number[] {
  const v = o[field];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x))) throw corrupt(key, `field "${field}" is not a list of integers`);
  return v as number[];
}

function members(key: string, o: Json, where: string): RingMember[] {
  const list = o['members'];
  if (!Array.isArray(list)) throw corrupt(key, `${where}field "members" is not a list`);
  const seen = new Set<string>();
  return list.map((m: unknown, i) => {
    if (typeof m !== 'object' || m === null) throw corrupt(key, `${where}member ${i} is not an object`);
    const mo = m as Json;
    const member = { uuid: str(key, mo, 'uuid'), weight: num(key, mo, 'weight') };
    if (seen.has(member.uuid)) throw corrupt(key, `${where}member ${member.uuid} appears twice`);
    seen.add(member.uuid);
    return member;
  });
}

function placement(key: string, o: Json, where = 'transition.from'): Placement {
  const replication = int(key, o, 'replication');
  if (replication < 1) throw corrupt(key, `${where} has replication below 1`);
  return { members: members(key, o, `${where}: `), replication };
}

/** Absent from records written before carried placements existed. */
function carriedPlacements(key: string, t: Json): { carried?: Placement[] } {
  const v = t['carried'];
  if (v === undefined) return {};
  if (!Array.isArray(v) || v.length === 0 || v.length > CARRIED_PLACEMENTS_MAX) throw corrupt(key, `transition.carried is not a list of 1 to ${CARRIED_PLACEMENTS_MAX} placements`);
  return {
    carried: v.map((p: unknown, i) => {
      if (typeof p !== 'object' || p === null || Array.isArray(p)) throw corrupt(key, `transition.carried ${i} is not an object`);
      return placement(key, p as Json, `transition.carried ${i}`);
    }),
  };
}

function transition(key: string, o: Json, version: number): RingTransition | null {
  const v = o['transition'];
  if (v === null || v === undefined) return null;
  const t = sub(key, o, 'transition');
  const phase = t['phase'];
  if (phase !== 'moving' && phase !== 'settled') throw corrupt(key, `transition phase ${JSON.stringify(phase)} is not moving or settled`);
  const startedVersion = int(key, t, 'startedVersion');
  if (startedVersion < 1 || startedVersion > version) throw corrupt(key, `transition started at version ${startedVersion}, outside 1..${version}`);
  return { from: placement(key, sub(key, t, 'from')), ...carriedPlacements(key, t), phase, startedVersion, startedAt: str(key, t, 'startedAt'), reason: str(key, t, 'reason') };
}

/**
 * Schema 1 (0.1.0) reads as schema 2: the default minReplicas for its
 * replication, and stable (no transition). Nothing is written back: the
 * next ring change writes schema 2.
 */
export function decodeRingRecord(key: string, text: string): RingRecord {
  const o = object(key, text, [1, 2]);
  const version = int(key, o, 'version');
  const replication = int(key, o, 'replication');
  if (replication < 1) throw corrupt(key, `replication ${replication} is below 1`);
  const ms = members(key, o, '');
  if (o['schema'] === 1) return { schema: 2, version, replication, minReplicas: minReplicasDefault(replication), members: ms, transition: null };
  const minReplicas = int(key, o, 'minReplicas');
  if (minReplicas < 1 || minReplicas > replication) throw corrupt(key, `minReplicas ${minReplicas} is outside 1..${replication}`);
  return { schema: 2, version, replication, minReplicas, members: ms, transition: transition(key, o, version) };
}

function ranges(key: string, o: Json, field = 'ranges'): BlockRange[] {
  const v = o[field];
  if (!Array.isArray(v) || !isSortedDisjoint(v as BlockRange[])) throw corrupt(key, `field "${field}" is not a sorted list of disjoint [start, end) block ranges`);
  return normalizeRanges(v as BlockRange[]);
}

export function decodeStaleRecord(key: string, text: string): StaleRecord {
  const o = object(key, text);
  const all = bool(key, o, 'all');
  return {
    schema: 1,
    volumeId: count(key, o, 'volumeId'),
    peer: str(key, o, 'peer'),
    all,
    // `all` absorbs ranges; a record that has both reads as `all`.
    ranges: all ? [] : ranges(key, o),
    ...(!all && o['unsure'] !== undefined ? { unsure: ranges(key, o, 'unsure') } : {}),
    updatedAt: str(key, o, 'updatedAt'),
  };
}

export function decodeRingAck(key: string, text: string): RingAck {
  const o = object(key, text);
  const kind = o['kind'];
  if (kind !== 'peer' && kind !== 'client') throw corrupt(key, `kind ${JSON.stringify(kind)} is not peer or client`);
  return {
    schema: 1,
    lease: str(key, o, 'lease'),
    peer: strOrNull(key, o, 'peer'),
    kind,
    ringVersion: count(key, o, 'ringVersion'),
    fenceRevision: count(key, o, 'fenceRevision'),
    updatedAt: str(key, o, 'updatedAt'),
  };
}

export function decodeVolumeMoveRecord(key: string, text: string): VolumeMoveRecord {
  const o = object(key, text);
  return {
    schema: 1,
    ringVersion: count(key, o, 'ringVersion'),
    volumeId: count(key, o, 'volumeId'),
    done: bool(key, o, 'done'),
    scanned: count(key, o, 'scanned'),
    copied: count(key, o, 'copied'),
    unavailable: count(key, o, 'unavailable'),
    ...(o['reached'] === undefined ? {} : { reached: count(key, o, 'reached') }),
    updatedAt: str(key, o, 'updatedAt'),
  };
}

export function decodeVolumeHealthRecord(key: string, text: string): VolumeHealthRecord {
  const o = object(key, text);
  return {
    schema: 1,
    volumeId: count(key, o, 'volumeId'),
    ringVersion: count(key, o, 'ringVersion'),
    blocks: count(key, o, 'blocks'),
    short: count(key, o, 'short'),
    repaired: count(key, o, 'repaired'),
    divergent: count(key, o, 'divergent'),
    checkedAt: str(key, o, 'checkedAt'),
  };
}

export function decodeVolumeLockRecord(key: string, text: string): VolumeLockRecord {
  const o = object(key, text);
  return {
    schema: 1,
    volumeId: int(key, o, 'volumeId'),
    holder: str(key, o, 'holder'),
    token: int(key, o, 'token'),
    acquiredAt: str(key, o, 'acquiredAt'),
    kind: lockKind(key, o),
  };
}

/** 0.1.0 lock records have no kind: only writers existed. */
function lockKind(key: string, o: Json): 'writer' | 'maintainer' | 'reader' {
  const v = o['kind'];
  if (v === undefined || v === 'writer') return 'writer';
  if (v === 'maintainer' || v === 'reader') return v;
  throw corrupt(key, `lock kind ${JSON.stringify(v)} is not writer, maintainer or reader`);
}

/** The cluster secret: 32 bytes as 64 lowercase hex digits. */
export function decodeClusterSecret(key: string, text: string): string {
  if (!/^[0-9a-f]{64}$/.test(text)) throw corrupt(key, 'the cluster secret is not 64 hex digits');
  return text;
}

/** Counters (volume id, fence) are decimal strings; absent reads as 0. */
export function decodeCounter(key: string, text: string | null): number {
  if (text === null) return 0;
  if (!/^\d{1,15}$/.test(text)) throw corrupt(key, `counter "${text.slice(0, 32)}" is not a decimal number`);
  return Number(text);
}

export function encodeRecord(record: object): string {
  return JSON.stringify(record);
}
