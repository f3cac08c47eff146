import { mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { classifyDataDirFs, mountHazards } from '../../src/daemon/data-dir-fs.js';
import { mountHolding, parseMountInfo } from '../../src/k8s/mount/mountinfo.js';

describe('the data dir file system', () => {
  it('names the file systems the power-loss suite runs on as tested', () => {
    expect(classifyDataDirFs(0xef53)).toEqual({ name: 'ext4', verdict: 'tested' });
    expect(classifyDataDirFs(0x58465342)).toEqual({ name: 'xfs', verdict: 'tested' });
    expect(classifyDataDirFs(0x9123683en)).toMatchObject({ name: 'btrfs', verdict: 'local' });
  });

  it('says why tmpfs and overlayfs lose data, and why network file systems are not vouched for', () => {
    expect(classifyDataDirFs(0x01021994)).toMatchObject({ name: 'tmpfs', verdict: 'ephemeral', why: expect.stringMatching(/reboot/) });
    expect(classifyDataDirFs(0x794c7630)).toMatchObject({ name: 'overlayfs', verdict: 'ephemeral', why: expect.stringMatching(/hostPath/) });
    expect(classifyDataDirFs(0x6969)).toMatchObject({ name: 'nfs', verdict: 'remote', why: expect.stringMatching(/fsync/) });
  });

  it('takes a negative f_type as the unsigned magic, and names an unknown one by its number', () => {
    // Some platforms hand f_type over as a signed 32-bit value.
    expect(classifyDataDirFs(0x9123683e | 0)).toMatchObject({ name: 'btrfs' });
    expect(classifyDataDirFs(0x12345678)).toEqual({ name: '0x12345678', verdict: 'unknown' });
  });

  it("names a real folder's file system as the kernel's mount table does", async () => {
    const byMountType: Record<string, string> = { ext2: 'ext4', ext3: 'ext4', ext4: 'ext4', xfs: 'xfs', btrfs: 'btrfs', tmpfs: 'tmpfs', overlay: 'overlayfs' };
    const mounts = parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'));
    for (const base of [tmpdir(), '/dev/shm', process.cwd()]) {
      const dir = realpathSync(mkdtempSync(path.join(base, 'torus-fs-')));
      try {
        const fs = classifyDataDirFs((await statfs(dir)).type);
        const m = mountHolding(mounts, dir);
        expect(m, dir).not.toBeNull();
        expect(fs.name, `${dir} on ${m!.fsType}`).toBe(byMountType[m!.fsType] ?? fs.name);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });
});

describe('mount options of the data dir', () => {
  const mount = (fsType: string, superOptions: string[], options = ['rw', 'relatime']) => ({ dev: '8:1', root: '/', mountPoint: '/var/lib/torus', options, fsType, source: '/dev/sdb1', superOptions });

  it('says nothing of the defaults', () => {
    expect(mountHazards(mount('ext4', ['rw', 'errors=remount-ro']))).toEqual([]);
    expect(mountHazards(mount('xfs', ['rw', 'attr2', 'inode64', 'logbufs=8', 'logbsize=32k', 'noquota']))).toEqual([]);
  });

  it('warns when write barriers are off, on any file system, and of ext4 data=writeback', () => {
    expect(mountHazards(mount('ext4', ['rw', 'nobarrier']))).toEqual([expect.stringMatching(/barriers are off.*power cut/)]);
    expect(mountHazards(mount('ext4', ['rw', 'barrier=0']))).toHaveLength(1);
    expect(mountHazards(mount('xfs', ['rw', 'nobarrier']))).toHaveLength(1);
    const both = mountHazards(mount('ext4', ['rw', 'nobarrier', 'data=writeback']));
    expect(both).toHaveLength(2);
    expect(both[1]).toMatch(/data=writeback.*other files/);
    // data=writeback means something else, or nothing, elsewhere.
    expect(mountHazards(mount('btrfs', ['rw', 'data=writeback']))).toEqual([]);
  });
});
