import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bindDataDirToCluster, loadOrCreatePeerId } from '../../src/daemon/identity.js';
import { isTorusError } from '../../src/errors/torus-error.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'torus-id-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('data dir identity', () => {
  it('keeps the peer uuid across restarts', async () => {
    const a = await loadOrCreatePeerId(dir);
    const b = await loadOrCreatePeerId(dir);
    expect(a.created).toBe(true);
    expect(b).toEqual({ uuid: a.uuid, created: false });
  });

  it('refuses a data dir of another cluster with TORUS_ERR_DATA_DIR_FOREIGN', async () => {
    await bindDataDirToCluster(dir, 'cluster-a');
    await bindDataDirToCluster(dir, 'cluster-a');
    const err = await bindDataDirToCluster(dir, 'cluster-b').catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_DATA_DIR_FOREIGN')).toBe(true);
    expect(String((err as Error).message)).toContain('cluster-a');
  });
});

describe('data dir claim', () => {
  it('refuses a data dir held by a running torusd and takes over a stale one', async () => {
    const { claimDataDir, releaseDataDir } = await import('../../src/daemon/identity.js');
    const { spawn } = await import('node:child_process');
    const { writeFile } = await import('node:fs/promises');
    // A live process whose command line says torusd.
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)', 'torusd'], { stdio: 'ignore' });
    try {
      await writeFile(path.join(dir, 'torusd.pid'), `${child.pid}\n`);
      const err = await claimDataDir(dir).catch((e: unknown) => e);
      expect(isTorusError(err, 'TORUS_ERR_DATA_DIR_IN_USE')).toBe(true);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    // The same pid, now dead: a stale claim is taken over.
    await claimDataDir(dir);
    await releaseDataDir(dir);
  });
});
