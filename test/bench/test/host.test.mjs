import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ext4HasJournal, hostPhrase, mountOf, offersFreePageReporting, warmFreePages } from '../lib/host.mjs';

const MOUNTINFO = [
  '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard',
  '23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw',
  '40 22 0:35 / /tmp/scratch rw,relatime shared:9 - tmpfs tmpfs rw,size=1024k',
  '41 22 7:0 / /mnt/with\\040space rw,relatime shared:10 - ext4 /dev/loop0 rw',
  '',
].join('\n');

describe('mountOf', () => {
  it('picks the longest mount point holding the path', () => {
    expect(mountOf(MOUNTINFO, '/tmp/scratch/run-1/fio')).toEqual({ mountPoint: '/tmp/scratch', fsType: 'tmpfs', source: 'tmpfs' });
    expect(mountOf(MOUNTINFO, '/tmp/scratch')).toEqual({ mountPoint: '/tmp/scratch', fsType: 'tmpfs', source: 'tmpfs' });
    expect(mountOf(MOUNTINFO, '/work/main')).toEqual({ mountPoint: '/', fsType: 'ext4', source: '/dev/vda' });
  });

  it('does not take a sibling whose name starts the same for a parent', () => {
    expect(mountOf(MOUNTINFO, '/tmp/scratchpad/x')?.mountPoint).toBe('/');
  });

  it('decodes octal escapes in mount points', () => {
    expect(mountOf(MOUNTINFO, '/mnt/with space/d')).toEqual({ mountPoint: '/mnt/with space', fsType: 'ext4', source: '/dev/loop0' });
  });

  it('finds nothing in text without mounts', () => {
    expect(mountOf('garbage\n', '/x')).toBeNull();
  });
});

describe('ext4HasJournal', () => {
  it('reads journal_task: a pid means a journal, <none> none', () => {
    expect(ext4HasJournal('18458\n')).toBe(true);
    expect(ext4HasJournal('<none>\n')).toBe(false);
    expect(ext4HasJournal('something else')).toBeNull();
  });
});

describe('offersFreePageReporting', () => {
  it('reads bit 5 of the features string', () => {
    expect(offersFreePageReporting('0110010100000000000000000000000010000000\n')).toBe(true);
    expect(offersFreePageReporting('0110000100000000000000000000000010000000\n')).toBe(false);
    expect(offersFreePageReporting('011')).toBe(false);
  });
});

describe('hostPhrase', () => {
  it('names the file system, its journal and page reporting', () => {
    expect(hostPhrase({ type: 'ext4', device: '/dev/vda', journal: false }, true)).toBe('run folder on ext4 without a journal (/dev/vda), free page reporting on');
    expect(hostPhrase({ type: 'ext4', device: '/dev/sda1', journal: true }, false)).toBe('run folder on ext4 with a journal (/dev/sda1), no free page reporting');
    expect(hostPhrase({ type: 'xfs', device: '/dev/nvme0n1', journal: null }, null)).toBe('run folder on xfs (/dev/nvme0n1), free page reporting unknown');
    expect(hostPhrase(null, false)).toBe('run folder on an unknown file system, no free page reporting');
  });
});

describe('warmFreePages', () => {
  it('writes the bytes asked for into a file and leaves nothing behind', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-warm-'));
    try {
      const seen = [];
      await warmFreePages(dir, 3 * 1024 * 1024 + 5, (bytes) => seen.push(bytes));
      expect(seen).toEqual([3 * 1024 * 1024 + 5]);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
