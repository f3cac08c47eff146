/**
 * The node's record of its FlexVolume attachments: which volume is attached
 * at which device, mounted where. Kept in a JSON file beside the staging
 * mounts (on the host, under kubelet's plugin folder), so a restarted torusd
 * container still knows what it attached and which pod directories use it.
 * Whether a directory is *mounted* is always read from the kernel's mount
 * table; this file only says which mounts are ours.
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { TorusError } from '../../errors/torus-error.js';
import { FS_TYPES, type FsType } from '../mount/filesystem.js';

export interface Attachment {
  /** Volume name; with another cluster's etcd, the key below also names the cluster. */
  readonly volume: string;
  readonly etcd: readonly string[] | null;
  readonly device: string;
  readonly readOnly: boolean;
  readonly fsType: FsType;
  /** The volume's own mount; pod directories are bind mounts of it. */
  readonly staging: string;
  /** Pod directories bound to the staging mount. */
  readonly targets: readonly string[];
}

export interface StateStore {
  load(): Promise<Map<string, Attachment>>;
  save(all: ReadonlyMap<string, Attachment>): Promise<void>;
}

const SCHEMA = 1;
const STATE_BYTES_MAX = 16 * 1024 * 1024;

function corrupt(file: string, why: string): TorusError {
  return new TorusError('TORUS_ERR_FLEX_STATE', `${file}: ${why}; move it aside only once no torus volume is mounted on this node`);
}

function decodeAttachment(file: string, key: string, v: unknown): Attachment {
  const a = v as Partial<Attachment> | null;
  const ok =
    a !== null &&
    typeof a === 'object' &&
    typeof a.volume === 'string' &&
    typeof a.device === 'string' &&
    typeof a.readOnly === 'boolean' &&
    typeof a.fsType === 'string' &&
    (FS_TYPES as readonly string[]).includes(a.fsType) &&
    typeof a.staging === 'string' &&
    Array.isArray(a.targets) &&
    a.targets.every((t) => typeof t === 'string') &&
    (a.etcd === null || (Array.isArray(a.etcd) && a.etcd.every((e) => typeof e === 'string')));
  if (!ok) throw corrupt(file, `entry ${JSON.stringify(key)} is malformed`);
  return { volume: a.volume!, etcd: a.etcd ?? null, device: a.device!, readOnly: a.readOnly!, fsType: a.fsType!, staging: a.staging!, targets: [...a.targets!] };
}

export class FileStateStore implements StateStore {
  readonly file: string;

  constructor(dir: string) {
    this.file = path.join(dir, 'attachments.json');
  }

  async load(): Promise<Map<string, Attachment>> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
      throw new TorusError('TORUS_ERR_FLEX_STATE', `cannot read ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    if (text.length > STATE_BYTES_MAX) throw corrupt(this.file, `larger than ${STATE_BYTES_MAX} bytes`);
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      throw corrupt(this.file, 'not JSON');
    }
    const d = doc as { schema?: unknown; attachments?: unknown };
    if (d === null || typeof d !== 'object' || d.schema !== SCHEMA || typeof d.attachments !== 'object' || d.attachments === null) {
      throw corrupt(this.file, `not a schema ${SCHEMA} attachments document`);
    }
    const out = new Map<string, Attachment>();
    for (const [k, v] of Object.entries(d.attachments as Record<string, unknown>)) out.set(k, decodeAttachment(this.file, k, v));
    return out;
  }

  /** Write to a temporary file, fsync, rename, fsync the folder: never a torn record. */
  async save(all: ReadonlyMap<string, Attachment>): Promise<void> {
    const dir = path.dirname(this.file);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.tmp`;
    const body = JSON.stringify({ schema: SCHEMA, attachments: Object.fromEntries(all) }, null, 2) + '\n';
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(body, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.file);
    const dh = await open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }
}

export class MemoryStateStore implements StateStore {
  private data = new Map<string, Attachment>();
  async load(): Promise<Map<string, Attachment>> {
    return new Map([...this.data].map(([k, v]) => [k, { ...v, targets: [...v.targets] }]));
  }
  async save(all: ReadonlyMap<string, Attachment>): Promise<void> {
    this.data = new Map([...all].map(([k, v]) => [k, { ...v, targets: [...v.targets] }]));
  }
}
