/**
 * attachments.json in the data dir: what a restarted torusd needs to take its
 * kernel devices back (device, volume, mode, the lease and lock token that
 * keep the volume ours, the kernel timeouts). Written atomically (temp file,
 * fsync, rename, fsync of the folder) on every change, so a kill -9 at any
 * point leaves either the old or the new list.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { TorusError } from '../errors/torus-error.js';
import { writeFileDurably } from '../store/store-io.js';

export const STATE_FILE_NAME = 'attachments.json';
const SCHEMA = 1;

export interface RecordedAttachment {
  readonly index: number;
  readonly volume: string;
  readonly mode: 'rw' | 'ro';
  /** Fencing token of the volume lock, for rw. */
  readonly token: number | null;
  /** A read-only attachment holding a reader lock on the lease (absent in older files: false). */
  readonly readerLock?: boolean;
  /** The volume's id (absent in older files). */
  readonly volumeId?: number;
  /** The write level asked for at attach (absent: torusd's own). */
  readonly writeLevel?: 'all' | 'one' | 'local';
  readonly sizeBytes: number;
  readonly timeoutSeconds: number;
  readonly deadConnTimeoutSeconds: number;
  /** What the kernel shows in /sys/block/nbdN/backend: proves the device is still ours. */
  readonly backend: string;
  readonly attachedAt: string;
}

export interface AttachState {
  /** The etcd lease the rw attachments' locks and the reader locks live on (null without either). */
  readonly leaseId: string | null;
  readonly attachments: RecordedAttachment[];
}

export function emptyState(): AttachState {
  return { leaseId: null, attachments: [] };
}

function corrupt(file: string, why: string): TorusError {
  return new TorusError('TORUS_ERR_ATTACH_STATE_CORRUPT', `${file}: ${why}; move it away to start without its attachments (their devices then fail with EIO)`);
}

/** Validates a parsed state document; throws TORUS_ERR_ATTACH_STATE_CORRUPT. Pure. */
export function parseState(text: string, file = STATE_FILE_NAME): AttachState {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw corrupt(file, `not JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null) throw corrupt(file, 'not an object');
  const d = doc as Record<string, unknown>;
  if (d.schema !== SCHEMA) throw corrupt(file, `schema ${String(d.schema)} is not ${SCHEMA}`);
  if (d.leaseId !== null && (typeof d.leaseId !== 'string' || !/^[0-9]+$/.test(d.leaseId))) throw corrupt(file, 'leaseId is not a decimal string or null');
  if (!Array.isArray(d.attachments)) throw corrupt(file, 'attachments is not a list');
  const seen = new Set<number>();
  const attachments = d.attachments.map((a: unknown, i: number): RecordedAttachment => {
    const r = a as Record<string, unknown>;
    const where = `attachments[${i}]`;
    const int = (k: string, min: number) => {
      const v = r[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw corrupt(file, `${where}.${k} is not an integer >= ${min}`);
      return v;
    };
    if (typeof r !== 'object' || r === null) throw corrupt(file, `${where} is not an object`);
    const index = int('index', 0);
    if (seen.has(index)) throw corrupt(file, `device nbd${index} is listed twice`);
    seen.add(index);
    if (typeof r.volume !== 'string' || r.volume.length === 0) throw corrupt(file, `${where}.volume is not a name`);
    if (r.mode !== 'rw' && r.mode !== 'ro') throw corrupt(file, `${where}.mode is not rw or ro`);
    const token = r.token === null ? null : int('token', 1);
    if (r.mode === 'rw' && token === null) throw corrupt(file, `${where} is read-write without a lock token`);
    if (r.readerLock !== undefined && (typeof r.readerLock !== 'boolean' || (r.readerLock && r.mode !== 'ro'))) throw corrupt(file, `${where}.readerLock is not a boolean on a read-only attachment`);
    if (r.writeLevel !== undefined && r.writeLevel !== 'all' && r.writeLevel !== 'one' && r.writeLevel !== 'local') throw corrupt(file, `${where}.writeLevel is not all, one or local`);
    if (typeof r.backend !== 'string' || typeof r.attachedAt !== 'string') throw corrupt(file, `${where} lacks backend or attachedAt`);
    return {
      index,
      volume: r.volume,
      mode: r.mode,
      token,
      ...(r.readerLock === true ? { readerLock: true } : {}),
      ...(r.writeLevel !== undefined ? { writeLevel: r.writeLevel as 'all' | 'one' | 'local' } : {}),
      ...(r.volumeId !== undefined ? { volumeId: int('volumeId', 1) } : {}),
      sizeBytes: int('sizeBytes', 0),
      timeoutSeconds: int('timeoutSeconds', 1),
      deadConnTimeoutSeconds: int('deadConnTimeoutSeconds', 1),
      backend: r.backend,
      attachedAt: r.attachedAt,
    };
  });
  if (attachments.some((a) => a.mode === 'rw' || a.readerLock === true) && d.leaseId === null) throw corrupt(file, 'read-write or reader-locked attachments without a lease id');
  return { leaseId: d.leaseId as string | null, attachments };
}

export function formatState(state: AttachState): string {
  return JSON.stringify({ schema: SCHEMA, leaseId: state.leaseId, attachments: state.attachments }, null, 2) + '\n';
}

export async function readState(dataDir: string): Promise<AttachState> {
  const file = path.join(dataDir, STATE_FILE_NAME);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
    throw new TorusError('TORUS_ERR_ATTACH_STATE_CORRUPT', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseState(text, file);
}

export async function writeState(dataDir: string, state: AttachState): Promise<void> {
  await writeFileDurably(path.join(dataDir, STATE_FILE_NAME), formatState(state));
}
