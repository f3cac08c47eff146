/**
 * kubelet's `mount <dir> <json>` arguments, validated. Pure: no I/O.
 *
 * The JSON is a flat object of strings: the pod's `flexVolume.options` (ours:
 * `volume`, `etcd`, `trim`, and Torus's `writeLevel`/`writeCacheSize`) plus
 * what kubelet adds (`kubernetes.io/fsType`, `kubernetes.io/readwrite`,
 * `kubernetes.io/pvOrVolumeName`, pod name/namespace/uid, service account,
 * `kubernetes.io/mounterArgs.FsGroup`, `kubernetes.io/secret/<key>`).
 * Unknown keys pass: kubelet adds new ones over time.
 */
import path from 'node:path';
import { TorusError } from '../../errors/torus-error.js';
import { DEFAULT_FS_TYPE, FS_TYPES, type FsType } from '../mount/filesystem.js';


const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const ETCD_ENDPOINT = /^(?:https?:\/\/)?[A-Za-z0-9.\-_[\]:]+:\d{1,5}$/;
const JSON_BYTES_MAX = 1024 * 1024;
/** Longer than any real mount path; PATH_MAX on Linux is 4096. */
const DIR_CHARS_MAX = 4000;

export interface MountRequest {
  /** The pod's volume directory kubelet wants mounted. */
  readonly dir: string;
  readonly volume: string;
  /** etcd of the cluster holding the volume; null means the local torusd's. */
  readonly etcd: readonly string[] | null;
  readonly fsType: FsType;
  readonly readOnly: boolean;
  /** Mount with `discard` so the filesystem's frees reach torus as TRIM. */
  readonly trim: boolean;
  /** For logs: which pod asked. */
  readonly pod: { readonly namespace: string | null; readonly name: string | null; readonly uid: string | null };
}

function invalid(message: string): TorusError {
  return new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', message);
}

/**
 * A target directory as kubelet passes it: absolute, normalised, no NUL.
 * Anything else is refused rather than resolved, so torusd never mounts over
 * a path other than the one it was named.
 */
export function parseTargetDir(dir: string | undefined): string {
  if (dir === undefined || dir === '') throw invalid('the target directory argument is missing');
  if (dir.length > DIR_CHARS_MAX) throw invalid(`the target directory is longer than ${DIR_CHARS_MAX} characters`);
  if (dir.includes('\0')) throw invalid('the target directory contains a NUL byte');
  if (!path.isAbsolute(dir)) throw invalid(`the target directory ${JSON.stringify(dir)} is not an absolute path`);
  const normal = path.posix.normalize(dir).replace(/(.)\/+$/, '$1');
  if (normal !== dir.replace(/(.)\/+$/, '$1') || dir.split('/').includes('..')) {
    throw invalid(`the target directory ${JSON.stringify(dir)} is not a normalised path`);
  }
  if (normal === '/') throw invalid('refusing to mount over /');
  return normal;
}

function parseBool(key: string, value: string | undefined, fallback: boolean): boolean {
  if (value === undefined || value === '') return fallback;
  if (/^(true|1|yes)$/i.test(value)) return true;
  if (/^(false|0|no)$/i.test(value)) return false;
  throw invalid(`option ${key}=${JSON.stringify(value)}: expected "true" or "false"`);
}

export function parseMountRequest(dirArg: string | undefined, jsonArg: string | undefined): MountRequest {
  const dir = parseTargetDir(dirArg);
  if (jsonArg === undefined || jsonArg === '') throw invalid('the JSON options argument is missing');
  if (jsonArg.length > JSON_BYTES_MAX) throw invalid(`the JSON options are longer than ${JSON_BYTES_MAX} characters`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(jsonArg);
  } catch (err) {
    throw invalid(`the options are not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw invalid('the options must be a JSON object');
  const opts: Record<string, string> = {};
  for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
    // kubelet marshals map[string]string: any other type is not from kubelet.
    if (typeof v !== 'string') throw invalid(`option ${JSON.stringify(k)} must be a string, not ${v === null ? 'null' : typeof v}`);
    opts[k] = v;
  }

  const volume = opts.volume;
  if (volume === undefined || volume === '') throw invalid('the "volume" option is missing: name the torus volume in flexVolume.options.volume');
  if (!VOLUME_NAME.test(volume)) {
    throw invalid(`volume ${JSON.stringify(volume)} is not a torus volume name (1 to 128 characters from [A-Za-z0-9._-], starting with a letter or digit)`);
  }

  let etcd: string[] | null = null;
  if (opts.etcd !== undefined && opts.etcd.trim() !== '') {
    etcd = opts.etcd.split(',').map((e) => e.trim());
    const bad = etcd.find((e) => !ETCD_ENDPOINT.test(e));
    if (bad !== undefined) throw invalid(`option etcd=${JSON.stringify(opts.etcd)}: expected host:port[,host:port...], e.g. 10.3.0.100:2379`);
  }

  const fsRaw = opts['kubernetes.io/fsType'] ?? '';
  // kubelet passes "" when the pod names no fsType.
  const fsType = (fsRaw === '' ? DEFAULT_FS_TYPE : fsRaw) as FsType;
  if (!FS_TYPES.includes(fsType)) {
    throw new TorusError('TORUS_ERR_FLEX_FS_TYPE_UNSUPPORTED', `fsType ${JSON.stringify(fsRaw)} is not supported: use one of ${FS_TYPES.join(', ')}`);
  }

  const rw = opts['kubernetes.io/readwrite'] ?? 'rw';
  if (rw !== 'rw' && rw !== 'ro') throw invalid(`kubernetes.io/readwrite=${JSON.stringify(rw)}: expected "rw" or "ro"`);

  return {
    dir,
    volume,
    etcd,
    fsType,
    readOnly: rw === 'ro',
    trim: parseBool('trim', opts.trim, false),
    pod: {
      namespace: opts['kubernetes.io/pod.namespace'] ?? null,
      name: opts['kubernetes.io/pod.name'] ?? null,
      uid: opts['kubernetes.io/pod.uid'] ?? null,
    },
  };
}
