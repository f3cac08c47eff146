import { describe, expect, it } from 'vitest';
import { stagingMountOptions } from '../../src/k8s/mount/filesystem.js';
import { interpretBlkid, mountAt, mountHolding, parseMountInfo } from '../../src/k8s/mount/mountinfo.js';
import { parseMountRequest, parseTargetDir } from '../../src/k8s/flex/options.js';
import {
  decodeReply,
  decodeRequest,
  encodeReply,
  encodeRequest,
  exitCodeFor,
  REPLY_BYTES_MAX,
  REQUEST_ARGS_MAX,
  REQUEST_BYTES_MAX,
} from '../../src/k8s/flex/protocol.js';

describe('driver <-> torusd wire format', () => {
  it('round-trips argv, JSON with every kind of character included', () => {
    const argv = ['mount', '/var/lib/kubelet/pods/x/volumes/coreos.com~torus/a b', JSON.stringify({ volume: 'pad', 'kubernetes.io/secret/k': 'YWJj\n"é"' })];
    const wire = encodeRequest(argv);
    expect(wire[wire.length - 1]).toBe(0);
    expect(decodeRequest(wire)).toEqual(argv);
  });

  it('refuses requests that are empty, unterminated, too long or with too many arguments', () => {
    expect(() => decodeRequest(Buffer.alloc(0))).toThrow(/empty/);
    expect(() => decodeRequest(Buffer.from('mount'))).toThrow(/must end with a NUL/);
    expect(() => decodeRequest(Buffer.alloc(REQUEST_BYTES_MAX + 1))).toThrow(/exceeds/);
    expect(() => decodeRequest(Buffer.from('a\0'.repeat(REQUEST_ARGS_MAX + 1)))).toThrow(/more than/);
    expect(() => encodeRequest(['mount', 'a\0b'])).toThrow(/NUL/);
    expect(() => encodeRequest([])).toThrow(/1 to/);
  });

  it('replies carry the exit code that matches the status', () => {
    expect(exitCodeFor('Success')).toBe(0);
    expect(exitCodeFor('Failure')).toBe(1);
    expect(exitCodeFor('Not supported')).toBe(1);
    expect(encodeReply({ status: 'Success' }).toString()).toBe('0\n{"status":"Success"}\n');
    expect(encodeReply({ status: 'Failure', message: 'x' }).toString()).toBe('1\n{"status":"Failure","message":"x"}\n');
    const r = decodeReply(encodeReply({ status: 'Failure', message: 'TORUS_ERR_X: y' }));
    expect(r).toEqual({ code: 1, json: '{"status":"Failure","message":"TORUS_ERR_X: y"}', result: { status: 'Failure', message: 'TORUS_ERR_X: y' } });
  });

  it('shortens a huge message instead of exceeding the reply bound', () => {
    const wire = encodeReply({ status: 'Failure', message: 'm'.repeat(REPLY_BYTES_MAX * 2) });
    expect(wire.length).toBeLessThanOrEqual(REPLY_BYTES_MAX);
    expect(decodeReply(wire).code).toBe(1);
  });

  it('refuses replies whose code and status disagree or that are not one JSON object', () => {
    expect(() => decodeReply(Buffer.from('0\n{"status":"Failure"}\n'))).toThrow(/exit code 0 with status Failure/);
    expect(() => decodeReply(Buffer.from('0\n{"status":"Maybe"}\n'))).toThrow(/known status/);
    expect(() => decodeReply(Buffer.from('{"status":"Success"}\n'))).toThrow(/malformed/);
    expect(() => decodeReply(Buffer.from('0\n{"status":\n"Success"}\n'))).toThrow(/malformed/);
    expect(() => decodeReply(Buffer.from(''))).toThrow(/malformed/);
  });
});

describe('kubelet mount options', () => {
  const dir = '/var/lib/kubelet/pods/u/volumes/coreos.com~torus/pad';

  it('reads the options kubelet sends and the walkthrough volume block', () => {
    const r = parseMountRequest(
      dir,
      JSON.stringify({
        'kubernetes.io/fsType': 'ext4',
        'kubernetes.io/readwrite': 'rw',
        'kubernetes.io/pvOrVolumeName': 'etherpad',
        'kubernetes.io/pod.name': 'etherpad-x',
        'kubernetes.io/pod.namespace': 'default',
        'kubernetes.io/pod.uid': 'u',
        'kubernetes.io/serviceAccount.name': 'default',
        'kubernetes.io/mounterArgs.FsGroup': '1000',
        'kubernetes.io/secret/token': 'c2VjcmV0',
        volume: 'pad',
        etcd: '10.3.0.100:2379',
        writeLevel: 'all',
      }),
    );
    expect(r).toEqual({ dir, volume: 'pad', etcd: ['10.3.0.100:2379'], fsType: 'ext4', readOnly: false, trim: false, pod: { namespace: 'default', name: 'etherpad-x', uid: 'u' } });
  });

  it('defaults: ext4, read-write, the local torusd etcd, no trim', () => {
    expect(parseMountRequest(dir, '{"volume":"pad","kubernetes.io/fsType":""}')).toMatchObject({ fsType: 'ext4', readOnly: false, etcd: null, trim: false });
    expect(parseMountRequest(dir, '{"volume":"pad","kubernetes.io/readwrite":"ro","trim":"true","etcd":"a:2379, http://b:2379"}')).toMatchObject({
      readOnly: true,
      trim: true,
      etcd: ['a:2379', 'http://b:2379'],
    });
  });

  it.each([
    ['{', /not valid JSON/],
    ['[]', /must be a JSON object/],
    ['null', /must be a JSON object/],
    ['{"volume":"pad","trim":true}', /option "trim" must be a string, not boolean/],
    ['{}', /"volume" option is missing/],
    ['{"volume":"../etc"}', /is not a torus volume name/],
    ['{"volume":"pad","etcd":"nohost"}', /expected host:port/],
    ['{"volume":"pad","kubernetes.io/readwrite":"rx"}', /expected "rw" or "ro"/],
    ['{"volume":"pad","trim":"perhaps"}', /expected "true" or "false"/],
    ['{"volume":"pad","kubernetes.io/fsType":"ntfs"}', /TORUS_ERR_FLEX_FS_TYPE_UNSUPPORTED|fsType "ntfs" is not supported/],
  ])('refuses %s', (json, re) => {
    expect(() => parseMountRequest(dir, json)).toThrow(re);
  });

  it('accepts only absolute, normalised target directories', () => {
    expect(parseTargetDir('/a/b/')).toBe('/a/b');
    for (const bad of ['', 'a/b', '/a/../b', '/a//b', '/a/./b', '/', '/a\0b']) expect(() => parseTargetDir(bad)).toThrow();
    expect(() => parseMountRequest(undefined, '{}')).toThrow(/target directory argument is missing/);
  });

  it('staging mount options: noatime, discard only when writable, ro without journal replay', () => {
    expect(stagingMountOptions('ext4', false, false)).toEqual(['noatime']);
    expect(stagingMountOptions('ext4', false, true)).toEqual(['noatime', 'discard']);
    expect(stagingMountOptions('ext4', true, true)).toEqual(['noatime', 'ro', 'noload']);
    expect(stagingMountOptions('ext3', true, false)).toEqual(['noatime', 'ro', 'noload']);
    expect(stagingMountOptions('xfs', true, false)).toEqual(['noatime', 'ro', 'norecovery']);
  });
});

describe('mountinfo and blkid', () => {
  const text = [
    '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
    '100 22 43:0 / /var/lib/kubelet/plugins/coreos.com~torus/mounts/pad rw,noatime shared:50 - ext4 /dev/nbd0 rw',
    '101 22 43:0 / /var/lib/kubelet/pods/a\\040b/volumes/coreos.com~torus/pad rw,noatime shared:50 - ext4 /dev/nbd0 rw',
    '102 22 0:5 / /tmp rw master:3 - tmpfs tmpfs rw',
    '103 22 0:6 / /tmp rw - tmpfs other rw',
    'garbage line',
    '',
  ].join('\n');

  it('parses entries, unescapes octal, and finds the visible mount at a path', () => {
    const entries = parseMountInfo(text);
    expect(entries).toHaveLength(5);
    expect(entries[2]).toEqual({
      dev: '43:0',
      root: '/',
      mountPoint: '/var/lib/kubelet/pods/a b/volumes/coreos.com~torus/pad',
      options: ['rw', 'noatime'],
      fsType: 'ext4',
      source: '/dev/nbd0',
      superOptions: ['rw'],
    });
    expect(mountAt(entries, '/tmp')!.source).toBe('other');
    expect(mountAt(entries, '/nope')).toBeNull();
  });

  it('finds the mount holding a path: the longest mount point above it, the last of stacked ones', () => {
    const entries = parseMountInfo(
      text + '\n104 22 8:2 / /var/lib/torus rw,relatime - ext4 /dev/sdb1 rw,nobarrier,data=writeback\n105 22 8:3 / /var/lib/tor rw - xfs /dev/sdc1 rw\n',
    );
    expect(mountHolding(entries, '/var/lib/torus/store')).toMatchObject({ source: '/dev/sdb1', superOptions: ['rw', 'nobarrier', 'data=writeback'] });
    expect(mountHolding(entries, '/var/lib/torus')!.source).toBe('/dev/sdb1');
    // A mount point that is only a prefix of the name is not above it.
    expect(mountHolding(entries, '/var/lib/torusd/x')!.source).toBe('/dev/sda1');
    expect(mountHolding(entries, '/tmp/a')!.source).toBe('other');
    expect(mountHolding(entries, '/etc')!.mountPoint).toBe('/');
    expect(mountHolding([], '/etc')).toBeNull();
  });

  it('only blkid exit 2 is empty; several signatures or none with a type are not', () => {
    expect(interpretBlkid(2, '', '')).toEqual({ kind: 'empty' });
    expect(interpretBlkid(0, 'DEVNAME=/dev/nbd0\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n', '')).toEqual({ kind: 'filesystem', type: 'ext4' });
    expect(interpretBlkid(0, 'DEVNAME=/dev/nbd0\nPTTYPE=gpt\n', '')).toMatchObject({ kind: 'ambiguous', detail: expect.stringContaining('gpt') });
    expect(interpretBlkid(8, '', 'ambivalent result')).toMatchObject({ kind: 'ambiguous' });
    expect(() => interpretBlkid(4, '', 'usage')).toThrow(/exited 4/);
    expect(() => interpretBlkid(null, '', '')).toThrow();
  });
});
