import { describe, expect, it } from 'vitest';
import { status } from '@grpc/grpc-js';
import { TorusError } from '../../src/errors/torus-error.js';
import { ERROR_CODES, type ErrorCode } from '../../src/errors/codes.js';
import { grpcStatusFor, toServiceError } from '../../src/k8s/csi/errors.js';
import {
  checkReplication,
  contextSettings,
  DEFAULT_VOLUME_BYTES,
  formatVolumeId,
  nodePath,
  parseCapabilities,
  parseCapability,
  parsePage,
  parseParameters,
  parseRange,
  parseVolumeId,
  sameStage,
  sizeFits,
  sizeFor,
  torusNameFor,
  volumeContext,
} from '../../src/k8s/csi/validate.js';
import { VOLUME_NAME_PATTERN } from '../../src/metadata/metadata-service.js';

const MiB = 1024 * 1024;

function codeOf(fn: () => unknown): ErrorCode | 'OK' {
  try {
    fn();
    return 'OK';
  } catch (err) {
    if (err instanceof TorusError) return err.code;
    throw err;
  }
}

const mount = (mode: string | number, fs_type = 'ext4', mount_flags: string[] = []) => ({ mount: { fs_type, mount_flags, volume_mount_group: '' }, block: null, access_mode: { mode }, access_type: 'mount' as const });
const block = (mode: string) => ({ block: {}, mount: null, access_mode: { mode }, access_type: 'block' as const });

describe('CSI volume ids and names', () => {
  it('volume ids are <cluster id>/<volume id>; anything else is not ours', () => {
    const id = formatVolumeId('4df36544-1200-46ed-ba7c-dbe0aef39c9e', 7);
    expect(id).toBe('4df36544-1200-46ed-ba7c-dbe0aef39c9e/7');
    expect(parseVolumeId(id)).toEqual({ clusterId: '4df36544-1200-46ed-ba7c-dbe0aef39c9e', id: 7 });
    for (const bad of ['', '7', 'c/0', 'c/07', 'c/-1', 'c/4294967296', '/7', 'c/7/8', 'c d/7', 'some-vol-id']) expect(parseVolumeId(bad), bad).toBeNull();
    expect(id.length).toBeLessThanOrEqual(128);
  });

  it('keeps names torus takes, maps the others deterministically into the name rule', () => {
    expect(torusNameFor('pvc-3f1c2a9e-0b7d-4c55-9f1e-1a2b3c4d5e6f')).toBe('pvc-3f1c2a9e-0b7d-4c55-9f1e-1a2b3c4d5e6f');
    for (const name of ['a/b', 'with space', 'ü', '_x', '-x', 'x'.repeat(128) + 'y', 'csi-x', '..', 'PVC:Ä/ß']) {
      const mapped = torusNameFor(name);
      expect(mapped, name).toMatch(VOLUME_NAME_PATTERN);
      expect(mapped.startsWith('csi-'), name).toBe(true);
      expect(torusNameFor(name)).toBe(mapped);
    }
    // Different names never share a mapping (the hash of the whole name is in it).
    expect(torusNameFor('a/b')).not.toBe(torusNameFor('a b'));
    // A kept name never equals a mapping: kept names do not start with csi-.
    expect(torusNameFor(torusNameFor('a/b'))).not.toBe(torusNameFor('a/b'));
  });

  it('paths must be absolute and normalised', () => {
    expect(nodePath('/var/lib/kubelet/pods/x/volumes/y/', 'target_path')).toBe('/var/lib/kubelet/pods/x/volumes/y');
    for (const bad of ['', 'relative/p', '/a/../b', '/a//b', '/', '/a/./b', '/a\0b']) expect(codeOf(() => nodePath(bad, 'p')), bad).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
  });
});

describe('CSI volume capabilities', () => {
  it('serves filesystems and raw block on one node for writing, and on many nodes read-only', () => {
    for (const m of ['SINGLE_NODE_WRITER', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER', 'MULTI_NODE_READER_ONLY']) {
      expect(parseCapability(mount(m)).mode).toBe(m);
      expect(parseCapability(block(m))).toMatchObject({ access: 'block', mode: m, fsType: null });
    }
    expect(parseCapability(mount('SINGLE_NODE_WRITER', ''))).toMatchObject({ access: 'mount', fsType: null });
    expect(parseCapability(mount('SINGLE_NODE_WRITER', 'xfs', ['discard']))).toMatchObject({ fsType: 'xfs', mountFlags: ['discard'] });
  });

  it('refuses every other access mode, unknown numbers and filesystems, with INVALID_ARGUMENT', () => {
    for (const m of ['SINGLE_NODE_READER_ONLY', 'MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER', 99]) {
      expect(codeOf(() => parseCapability(mount(m))), String(m)).toBe('TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED');
    }
    expect(codeOf(() => parseCapability(mount('SINGLE_NODE_WRITER', 'btrfs')))).toBe('TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED');
    expect(grpcStatusFor('TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED')).toBe(status.INVALID_ARGUMENT);
  });

  it('a capability needs an access type and a mode; a list needs one capability at least', () => {
    expect(codeOf(() => parseCapability(null))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(codeOf(() => parseCapability({ block: null, mount: null, access_mode: { mode: 'SINGLE_NODE_WRITER' } }))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(codeOf(() => parseCapability({ ...mount('SINGLE_NODE_WRITER'), access_mode: null }))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(codeOf(() => parseCapability(mount('UNKNOWN')))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(codeOf(() => parseCapabilities([]))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(parseCapabilities([mount('SINGLE_NODE_WRITER'), block('MULTI_NODE_READER_ONLY')])).toHaveLength(2);
  });

  it('mount flags are mount options, never ones that change what is mounted', () => {
    for (const f of ['bind', 'remount', 'a b', '', 'x;rm']) expect(codeOf(() => parseCapability(mount('SINGLE_NODE_WRITER', 'ext4', [f]))), f).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(codeOf(() => parseCapability(mount('MULTI_NODE_READER_ONLY', 'ext4', ['rw'])))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(codeOf(() => parseCapability(mount('SINGLE_NODE_WRITER', 'ext4', ['discard', 'commit=30', 'data=ordered'])))).toBe('OK');
  });

  it('a stage is the same when access type, reader-ness and filesystem agree', () => {
    const a = parseCapability(mount('SINGLE_NODE_WRITER', ''));
    expect(sameStage(a, parseCapability(mount('SINGLE_NODE_MULTI_WRITER', 'ext4')))).toBe(true);
    expect(sameStage(a, parseCapability(mount('MULTI_NODE_READER_ONLY')))).toBe(false);
    expect(sameStage(a, parseCapability(block('SINGLE_NODE_WRITER')))).toBe(false);
    expect(sameStage(a, parseCapability(mount('SINGLE_NODE_WRITER', 'xfs')))).toBe(false);
  });
});

describe('CSI capacity ranges', () => {
  it('rounds required_bytes up to whole blocks and honours limit_bytes', () => {
    expect(sizeFor(parseRange({ required_bytes: '1', limit_bytes: '0' }), MiB)).toBe(MiB);
    expect(sizeFor(parseRange({ required_bytes: String(3 * MiB + 1), limit_bytes: '0' }), MiB)).toBe(4 * MiB);
    expect(sizeFor(parseRange({ required_bytes: String(4 * MiB), limit_bytes: String(4 * MiB) }), MiB)).toBe(4 * MiB);
    expect(sizeFor(parseRange(null), MiB)).toBe(DEFAULT_VOLUME_BYTES);
    expect(sizeFor(parseRange({ required_bytes: '0', limit_bytes: String(5 * MiB + 7) }), MiB)).toBe(5 * MiB);
  });

  it('OUT_OF_RANGE when rounding passes the limit or the size is beyond torus; INVALID_ARGUMENT for a malformed range', () => {
    expect(codeOf(() => sizeFor(parseRange({ required_bytes: String(3 * MiB + 1), limit_bytes: String(3 * MiB + 100) }), MiB))).toBe('TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE');
    expect(codeOf(() => sizeFor(parseRange({ required_bytes: '0', limit_bytes: '4096' }), MiB))).toBe('TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE');
    expect(codeOf(() => parseRange({ required_bytes: '9223372036854775807', limit_bytes: '0' }))).toBe('TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE');
    expect(codeOf(() => parseRange({ required_bytes: '-1', limit_bytes: '0' }))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(codeOf(() => parseRange({ required_bytes: '10', limit_bytes: '5' }))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(grpcStatusFor('TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE')).toBe(status.OUT_OF_RANGE);
  });

  it('an existing volume fits a repeated request when its size lies in the range', () => {
    expect(sizeFits(4 * MiB, { required: 3 * MiB, limit: 0 })).toBe(true);
    expect(sizeFits(4 * MiB, { required: 3 * MiB, limit: 4 * MiB })).toBe(true);
    expect(sizeFits(4 * MiB, { required: 5 * MiB, limit: 0 })).toBe(false);
    expect(sizeFits(4 * MiB, { required: 0, limit: 2 * MiB })).toBe(false);
  });
});

describe('StorageClass parameters', () => {
  it('reads fsType, writeLevel, replication and overcommit; passes the sidecars\' own keys', () => {
    expect(parseParameters({})).toEqual({ fsType: null, writeLevel: null, replication: null, overcommit: 1 });
    expect(parseParameters({ fsType: 'xfs', writeLevel: 'one', replication: '2', overcommit: '1.5', 'csi.storage.k8s.io/pvc/name': 'x' })).toEqual({ fsType: 'xfs', writeLevel: 'one', replication: 2, overcommit: 1.5 });
  });

  it('refuses unknown keys and bad values', () => {
    const bad: Record<string, string>[] = [{ replicaton: '2' }, { fsType: 'btrfs' }, { writeLevel: 'most' }, { replication: '0' }, { replication: 'two' }, { overcommit: '0' }, { overcommit: '-1' }, { overcommit: '1e9' }, { overcommit: 'lots' }];
    for (const p of bad) {
      expect(codeOf(() => parseParameters(p)), JSON.stringify(p)).toBe('TORUS_ERR_CSI_PARAMETER_INVALID');
    }
    expect(grpcStatusFor('TORUS_ERR_CSI_PARAMETER_INVALID')).toBe(status.INVALID_ARGUMENT);
  });

  it('replication must be the cluster\'s until replication is per volume', () => {
    expect(codeOf(() => checkReplication(parseParameters({ replication: '3' }), 2))).toBe('TORUS_ERR_CSI_PARAMETER_INVALID');
    expect(codeOf(() => checkReplication(parseParameters({ replication: '2' }), 2))).toBe('OK');
    expect(codeOf(() => checkReplication(parseParameters({}), 2))).toBe('OK');
  });

  it('the volume context carries the torus name and what the node needs, and is checked when read back', () => {
    const ctx = volumeContext('pvc-1', parseParameters({ fsType: 'xfs', writeLevel: 'local', overcommit: '2' }));
    expect(ctx).toEqual({ volume: 'pvc-1', fsType: 'xfs', writeLevel: 'local' });
    expect(contextSettings(ctx)).toEqual({ fsType: 'xfs', writeLevel: 'local' });
    expect(codeOf(() => contextSettings({ fsType: 'ntfs' }))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
  });
});

describe('ListVolumes paging', () => {
  it('tokens are volume ids handed out; others are ABORTED, negative max_entries INVALID_ARGUMENT', () => {
    expect(parsePage(0, '')).toEqual({ after: 0, max: 0 });
    expect(parsePage(3, '17')).toEqual({ after: 17, max: 3 });
    for (const t of ['x', '0', '-1', '1.5', '99999999999']) expect(codeOf(() => parsePage(0, t)), t).toBe('TORUS_ERR_CSI_PAGE_TOKEN');
    expect(codeOf(() => parsePage(-1, ''))).toBe('TORUS_ERR_CSI_REQUEST_INVALID');
    expect(grpcStatusFor('TORUS_ERR_CSI_PAGE_TOKEN')).toBe(status.ABORTED);
  });
});

describe('gRPC status mapping', () => {
  it('maps every code to a status, the spec\'s for the named cases', () => {
    const expected: [ErrorCode, keyof typeof status][] = [
      ['TORUS_ERR_CSI_REQUEST_INVALID', 'INVALID_ARGUMENT'],
      ['TORUS_ERR_VOLUME_NOT_FOUND', 'NOT_FOUND'],
      ['TORUS_ERR_CSI_VOLUME_INCOMPATIBLE', 'ALREADY_EXISTS'],
      ['TORUS_ERR_CAPACITY_EXHAUSTED', 'RESOURCE_EXHAUSTED'],
      ['TORUS_ERR_VOLUME_IN_USE', 'FAILED_PRECONDITION'],
      ['TORUS_ERR_CSI_NOT_STAGED', 'FAILED_PRECONDITION'],
      ['TORUS_ERR_CSI_BUSY', 'ABORTED'],
      ['TORUS_ERR_ETCD_UNAVAILABLE', 'UNAVAILABLE'],
      ['TORUS_ERR_ATTACH_DAEMON_UNREACHABLE', 'UNAVAILABLE'],
      ['TORUS_ERR_CSI_MOUNT_FAILED', 'INTERNAL'],
    ];
    for (const [code, s] of expected) expect(status[grpcStatusFor(code)], code).toBe(s);
    for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) expect(grpcStatusFor(code)).not.toBe(status.OK);
    const e = toServiceError(new TorusError('TORUS_ERR_VOLUME_IN_USE', 'volume "x" is in use by torusd u on node-b (pid 7)'));
    expect(e).toEqual({ code: status.FAILED_PRECONDITION, details: 'TORUS_ERR_VOLUME_IN_USE: volume "x" is in use by torusd u on node-b (pid 7)', torusCode: 'TORUS_ERR_VOLUME_IN_USE' });
    expect(toServiceError(new Error('boom')).code).toBe(status.INTERNAL);
  });
});
