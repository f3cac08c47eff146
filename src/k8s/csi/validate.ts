/**
 * CSI requests checked and mapped onto torus's terms. Pure: no I/O, no
 * clock; every refusal is a TorusError whose code errors.ts turns into the
 * gRPC status the specification names.
 *
 * - volume ids: `<cluster id>/<volume id>`. Volume ids are never reused in
 *   a cluster, and the cluster id is new at every `torusctl init`, so an id
 *   names one volume forever: a late DeleteVolume or NodeStageVolume never
 *   reaches a volume that took the name since.
 * - names: a CSI name is any string of up to 128 bytes; a torus name is
 *   [A-Za-z0-9][A-Za-z0-9._-]{0,127}. Names that already fit are kept (so
 *   `torusctl volume list` shows `pvc-<uid>`); others are mapped, never
 *   refused: `csi-<the name's safe characters>-<12 hex digits of its
 *   SHA-256>`, the same every time, so CreateVolume stays idempotent.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { TorusError } from '../../errors/torus-error.js';
import { VOLUME_NAME_PATTERN } from '../../metadata/metadata-service.js';
import { VOLUME_SIZE_MAX_BYTES } from '../../metadata/validate.js';
import { OVERCOMMIT_DEFAULT, OVERCOMMIT_MAX } from '../../admin/volumes.js';
import { parseWriteLevel, type WriteLevel } from '../../replication/settings.js';
import { formatSize } from '../../util/size.js';
import { isFsType, type FsType } from '../mount/filesystem.js';
import { invalid } from './errors.js';
import type { CapacityRange, StringMap, VolumeCapability } from './types.js';

/** What the spec lets a CO send in one string field. */
export const CSI_STRING_BYTES_MAX = 128;
/** Paths are kubelet's (`/var/lib/kubelet/...`); PATH_MAX on Linux is 4096. */
export const PATH_CHARS_MAX = 4000;
/** The size of a volume whose CreateVolume names no capacity. */
export const DEFAULT_VOLUME_BYTES = 1024 ** 3;
const MOUNT_FLAGS_MAX = 32;
const MOUNT_FLAG = /^[A-Za-z0-9_][A-Za-z0-9_=.:,+/@-]{0,127}$/;
/** Flags that would make the staging mount something other than a mount of the volume. */
const MOUNT_FLAGS_REFUSED = new Set(['bind', 'rbind', 'move', 'remount', 'loop']);

// ------------------------------------------------------------------ fields

/** A REQUIRED string field: missing (the proto3 default, "") is INVALID_ARGUMENT. */
export function required(value: string | undefined, field: string): string {
  if (typeof value !== 'string' || value === '') throw invalid(`${field} is required`);
  return value;
}

/**
 * A node path from kubelet: absolute and normalised. Anything else is
 * refused rather than resolved, so the driver never mounts over a path
 * other than the one it was named.
 */
export function nodePath(value: string | undefined, field: string): string {
  const p = required(value, field);
  if (p.length > PATH_CHARS_MAX) throw invalid(`${field} is longer than ${PATH_CHARS_MAX} characters`);
  if (p.includes('\0')) throw invalid(`${field} contains a NUL byte`);
  if (!path.isAbsolute(p)) throw invalid(`${field} ${JSON.stringify(p)} is not an absolute path`);
  const trimmed = p.length > 1 ? p.replace(/\/+$/, '') : p;
  if (path.posix.normalize(trimmed) !== trimmed || trimmed.split('/').includes('..')) throw invalid(`${field} ${JSON.stringify(p)} is not a normalised path`);
  if (trimmed === '/') throw invalid(`${field} is /`);
  return trimmed;
}

// ------------------------------------------------------------------ volume ids and names

export interface VolumeRef {
  readonly clusterId: string;
  readonly id: number;
}

export function formatVolumeId(clusterId: string, id: number): string {
  return `${clusterId}/${id}`;
}

/** null for anything this driver did not hand out (the caller answers NOT_FOUND). */
export function parseVolumeId(volumeId: string): VolumeRef | null {
  const m = /^([A-Za-z0-9-]{1,64})\/([1-9][0-9]{0,9})$/.exec(volumeId);
  if (!m) return null;
  const id = Number(m[2]);
  return id <= 0xffffffff ? { clusterId: m[1]!, id } : null;
}

/** The torus volume name for a CSI name (see the file comment). */
export function torusNameFor(csiName: string): string {
  if (VOLUME_NAME_PATTERN.test(csiName) && !csiName.startsWith('csi-')) return csiName;
  // `csi-` names are mapped too, so no other name's mapping can equal one kept as it is.
  const safe = csiName
    .replace(/[^A-Za-z0-9._-]+/g, '-')
    .slice(0, 96)
    .replace(/^-+|-+$/g, '');
  const hash = createHash('sha256').update(csiName, 'utf8').digest('hex').slice(0, 12);
  return `csi-${safe}${safe === '' ? '' : '-'}${hash}`;
}

export function csiName(value: string | undefined): string {
  const name = required(value, 'name');
  if (Buffer.byteLength(name, 'utf8') > CSI_STRING_BYTES_MAX) throw invalid(`name is longer than ${CSI_STRING_BYTES_MAX} bytes`);
  return name;
}

// ------------------------------------------------------------------ capabilities

export type AccessMode = 'SINGLE_NODE_WRITER' | 'SINGLE_NODE_SINGLE_WRITER' | 'SINGLE_NODE_MULTI_WRITER' | 'MULTI_NODE_READER_ONLY';
const ACCESS_MODES: readonly AccessMode[] = ['SINGLE_NODE_WRITER', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER', 'MULTI_NODE_READER_ONLY'];

export interface Capability {
  readonly access: 'mount' | 'block';
  readonly mode: AccessMode;
  /** Only for mount; null when the CO names none. */
  readonly fsType: FsType | null;
  readonly mountFlags: readonly string[];
}

/** Readers attach read-only under a shared reader lock; the rest take the writer lock. */
export function isReader(mode: AccessMode): boolean {
  return mode === 'MULTI_NODE_READER_ONLY';
}

function unsupported(message: string): TorusError {
  return new TorusError('TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED', message);
}

/**
 * One volume capability. Served: a filesystem (ext4, ext3, xfs) or a raw
 * block device, on one node for writing (SINGLE_NODE_WRITER,
 * SINGLE_NODE_SINGLE_WRITER, SINGLE_NODE_MULTI_WRITER) or on many nodes
 * read-only (MULTI_NODE_READER_ONLY). Anything else is INVALID_ARGUMENT:
 * several nodes writing one ext4 would corrupt it, and a volume has one
 * writer at a time.
 */
export function parseCapability(cap: VolumeCapability | null | undefined, field = 'volume_capability'): Capability {
  if (cap === null || cap === undefined) throw invalid(`${field} is required`);
  const access = cap.access_type ?? (cap.mount ? 'mount' : cap.block ? 'block' : undefined);
  if (access === undefined) throw invalid(`${field} has neither mount nor block access type`);
  const modeName = cap.access_mode?.mode;
  if (modeName === undefined || modeName === null || modeName === 'UNKNOWN' || modeName === 0) throw invalid(`${field}.access_mode is required`);
  if (typeof modeName !== 'string' || !(ACCESS_MODES as readonly string[]).includes(modeName)) {
    throw unsupported(`access mode ${String(modeName)} is not served: use ${ACCESS_MODES.join(', ')} (several nodes cannot write one volume)`);
  }
  const mode = modeName as AccessMode;
  if (access === 'block') return { access, mode, fsType: null, mountFlags: [] };
  const fs = cap.mount?.fs_type ?? '';
  if (fs !== '' && !isFsType(fs)) throw unsupported(`fs_type ${JSON.stringify(fs)} is not served: use ext4, ext3 or xfs`);
  const flags = cap.mount?.mount_flags ?? [];
  if (flags.length > MOUNT_FLAGS_MAX) throw invalid(`more than ${MOUNT_FLAGS_MAX} mount_flags`);
  for (const f of flags) {
    if (!MOUNT_FLAG.test(f)) throw invalid(`mount flag ${JSON.stringify(f)} is not a mount option`);
    if (MOUNT_FLAGS_REFUSED.has(f)) throw invalid(`mount flag ${f} is not allowed on a volume's mount`);
    if (f === 'rw' && isReader(mode)) throw invalid('mount flag rw contradicts MULTI_NODE_READER_ONLY');
  }
  return { access, mode, fsType: fs === '' ? null : (fs as FsType), mountFlags: [...flags] };
}

/** A REQUIRED list of capabilities, each served. */
export function parseCapabilities(caps: readonly VolumeCapability[] | undefined, field = 'volume_capabilities'): Capability[] {
  if (!caps || caps.length === 0) throw invalid(`${field} is required`);
  return caps.map((c, i) => parseCapability(c, `${field}[${i}]`));
}

/** Two capabilities describe the same stage (the idempotency check of NodeStageVolume and NodePublishVolume). */
export function sameStage(a: Capability, b: Capability): boolean {
  return a.access === b.access && isReader(a.mode) === isReader(b.mode) && (a.fsType ?? 'ext4') === (b.fsType ?? 'ext4');
}

// ------------------------------------------------------------------ capacity

function int64(value: string | number | undefined, field: string): bigint {
  const text = String(value ?? '0');
  if (!/^-?[0-9]{1,20}$/.test(text)) throw invalid(`${field} ${JSON.stringify(text)} is not an integer`);
  const n = BigInt(text);
  if (n < 0n) throw invalid(`${field} is negative`);
  return n;
}

export interface SizeRange {
  readonly required: number;
  /** 0: no limit. */
  readonly limit: number;
}

/** The range as numbers; sizes beyond what torus can hold are OUT_OF_RANGE. */
export function parseRange(range: CapacityRange | null | undefined): SizeRange {
  const req = int64(range?.required_bytes, 'capacity_range.required_bytes');
  const lim = int64(range?.limit_bytes, 'capacity_range.limit_bytes');
  if (lim !== 0n && lim < req) throw invalid(`capacity_range.limit_bytes (${lim}) is below required_bytes (${req})`);
  const max = BigInt(VOLUME_SIZE_MAX_BYTES);
  if (req > max) throw new TorusError('TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE', `required_bytes ${req} is larger than the largest torus volume (${formatSize(VOLUME_SIZE_MAX_BYTES)})`);
  return { required: Number(req), limit: lim > max ? VOLUME_SIZE_MAX_BYTES : Number(lim) };
}

/**
 * The size a new volume gets: required_bytes rounded up to whole blocks, or
 * DEFAULT_VOLUME_BYTES (within the limit) when nothing is required.
 * OUT_OF_RANGE when rounding passes limit_bytes.
 */
export function sizeFor(range: SizeRange, blockSize: number): number {
  const roundUp = (n: number) => Math.ceil(n / blockSize) * blockSize;
  let size: number;
  if (range.required > 0) size = roundUp(range.required);
  else if (range.limit > 0) size = Math.min(DEFAULT_VOLUME_BYTES, Math.floor(range.limit / blockSize) * blockSize);
  else size = DEFAULT_VOLUME_BYTES;
  if (size === 0 || (range.limit > 0 && size > range.limit) || size > VOLUME_SIZE_MAX_BYTES) {
    throw new TorusError(
      'TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE',
      `no whole number of ${formatSize(blockSize)} blocks lies within required_bytes ${range.required} and limit_bytes ${range.limit}`,
    );
  }
  return size;
}

/** An existing volume answers a repeated CreateVolume only when its size lies in the new range. */
export function sizeFits(size: number, range: SizeRange): boolean {
  return size >= range.required && (range.limit === 0 || size <= range.limit);
}

// ------------------------------------------------------------------ parameters

/** StorageClass parameters torus reads (README, "Kubernetes with CSI"). */
export const PARAMETERS = ['fsType', 'writeLevel', 'replication', 'overcommit'] as const;

export interface Parameters {
  readonly fsType: FsType | null;
  readonly writeLevel: WriteLevel | null;
  /** Must equal the cluster's replication (checked by the caller, who knows it). */
  readonly replication: number | null;
  readonly overcommit: number;
}

function badParameter(message: string): TorusError {
  return new TorusError('TORUS_ERR_CSI_PARAMETER_INVALID', message);
}

/**
 * Unknown keys are refused (a misspelt `replicaton` must not pass
 * silently), except the `csi.storage.k8s.io/` keys the sidecars own.
 */
export function parseParameters(params: StringMap | undefined): Parameters {
  const p = params ?? {};
  for (const key of Object.keys(p)) {
    if (key.startsWith('csi.storage.k8s.io/')) continue;
    if (!(PARAMETERS as readonly string[]).includes(key)) throw badParameter(`unknown parameter ${JSON.stringify(key)}: torus reads ${PARAMETERS.join(', ')}`);
  }
  const fs = p['fsType'] ?? '';
  if (fs !== '' && !isFsType(fs)) throw badParameter(`fsType ${JSON.stringify(fs)} is not served: use ext4, ext3 or xfs`);
  const wl = p['writeLevel'] ?? '';
  const writeLevel = wl === '' ? null : parseWriteLevel(wl);
  if (wl !== '' && writeLevel === null) throw badParameter(`writeLevel ${JSON.stringify(wl)} is not all, one or local`);
  const r = p['replication'] ?? '';
  if (r !== '' && !/^[1-9][0-9]?$/.test(r)) throw badParameter(`replication ${JSON.stringify(r)} is not a whole number from 1`);
  const oc = p['overcommit'] ?? '';
  const overcommit = oc === '' ? OVERCOMMIT_DEFAULT : Number(oc);
  if (oc !== '' && (!/^[0-9]+(\.[0-9]+)?$/.test(oc) || !(overcommit > 0) || overcommit > OVERCOMMIT_MAX)) {
    throw badParameter(`overcommit ${JSON.stringify(oc)} is not a ratio above 0 and at most ${OVERCOMMIT_MAX} (1.0: no overcommit)`);
  }
  return { fsType: fs === '' ? null : (fs as FsType), writeLevel, replication: r === '' ? null : Number(r), overcommit };
}

/** Until replication is per volume, a StorageClass may only name the cluster's own. */
export function checkReplication(params: Parameters, clusterReplication: number): void {
  if (params.replication !== null && params.replication !== clusterReplication) {
    throw badParameter(`replication ${params.replication} differs from the cluster's replication ${clusterReplication}; replication is per cluster (torusctl ring set-replication), so leave it out or set ${clusterReplication}`);
  }
}

/** What CreateVolume hands the node (volume_context): the torus name and the parameters NodeStageVolume uses. */
export const CONTEXT_VOLUME = 'volume';

export function volumeContext(torusName: string, params: Parameters): StringMap {
  const ctx: StringMap = { [CONTEXT_VOLUME]: torusName };
  if (params.fsType) ctx['fsType'] = params.fsType;
  if (params.writeLevel) ctx['writeLevel'] = params.writeLevel;
  return ctx;
}

/** volume_context as NodeStageVolume reads it; a context from another driver version is checked, not trusted. */
export function contextSettings(ctx: StringMap | undefined): { fsType: FsType | null; writeLevel: WriteLevel | null } {
  const c = ctx ?? {};
  const fs = c['fsType'] ?? '';
  if (fs !== '' && !isFsType(fs)) throw invalid(`volume_context fsType ${JSON.stringify(fs)} is not ext4, ext3 or xfs`);
  const wl = c['writeLevel'] ?? '';
  const writeLevel = wl === '' ? null : parseWriteLevel(wl);
  if (wl !== '' && writeLevel === null) throw invalid(`volume_context writeLevel ${JSON.stringify(wl)} is not all, one or local`);
  return { fsType: fs === '' ? null : (fs as FsType), writeLevel };
}

// ------------------------------------------------------------------ paging

export interface Page {
  /** List volumes with ids above this. */
  readonly after: number;
  /** 0: all. */
  readonly max: number;
}

export function parsePage(maxEntries: number | undefined, startingToken: string | undefined): Page {
  const max = maxEntries ?? 0;
  if (!Number.isInteger(max) || max < 0) throw invalid('max_entries is negative');
  const token = startingToken ?? '';
  if (token === '') return { after: 0, max };
  // Tokens are the last volume id of the previous page.
  if (!/^[1-9][0-9]{0,9}$/.test(token)) throw new TorusError('TORUS_ERR_CSI_PAGE_TOKEN', `starting_token ${JSON.stringify(token.slice(0, 64))} was not handed out by this driver`);
  return { after: Number(token), max };
}
