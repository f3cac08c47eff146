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
