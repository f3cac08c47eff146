import { mkdtempSync, rmSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { classifyDataDirFs } from '../../src/daemon/data-dir-fs.js';

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

  it("classifies this machine's temporary folder from a real statfs", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'torus-fs-'));
    try {
      const fs = classifyDataDirFs((await statfs(dir)).type);
      expect(fs.name).toMatch(/^(ext4|xfs|btrfs|tmpfs|overlayfs|zfs|f2fs|0x[0-9a-f]+)$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
