import { TorusError } from '../errors/torus-error.js';
import type { ClusterConfig, PeerRecord, RingRecord, VolumeLockRecord, VolumeRecord } from '../model/records.js';

/**
 * Decodes the JSON records kept in etcd, checking their shape: a record that
 * does not parse is reported (TORUS_ERR_METADATA_CORRUPT, naming the key),
 * never treated as absent.
 */

type Json = Record<string, unknown>;

function corrupt(key: string, why: string): TorusError {
  return new TorusError('TORUS_ERR_METADATA_CORRUPT', `etcd key "${key}" holds a bad record: ${why}`, { details: { key } });
}

function object(key: string, text: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw corrupt(key, 'not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw corrupt(key, 'not a JSON object');
  const o = v as Json;
  if (o['schema'] !== 1) throw corrupt(key, `unknown schema ${JSON.stringify(o['schema'])}`);
  return o;
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
  };
}

export function decodeRingRecord(key: string, text: string): RingRecord {
  const o = object(key, text);
  const members = o['members'];
  if (!Array.isArray(members)) throw corrupt(key, 'field "members" is not a list');
  return {
    schema: 1,
    version: int(key, o, 'version'),
    replication: int(key, o, 'replication'),
    members: members.map((m: unknown, i) => {
      if (typeof m !== 'object' || m === null) throw corrupt(key, `member ${i} is not an object`);
      const mo = m as Json;
      return { uuid: str(key, mo, 'uuid'), weight: num(key, mo, 'weight') };
    }),
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
  };
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
