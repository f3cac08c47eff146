import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadOrCreatePeerId } from '../../src/daemon/identity.js';
import { isTorusError } from '../../src/errors/torus-error.js';
import { waitFor } from '../helpers/wait.js';

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
  // The binding to one cluster (cluster.json): test/unit/daemon-cluster-copies.test.ts.
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

  it('takes over a claim from before a reboot, or one naming a thread, even when that pid runs a torusd now', async () => {
    const { claimDataDir, parsePidFile, releaseDataDir } = await import('../../src/daemon/identity.js');
    const { spawn } = await import('node:child_process');
    const { readFile, readdir, writeFile } = await import('node:fs/promises');
    const file = path.join(dir, 'torusd.pid');
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)', 'torusd'], { stdio: 'ignore' });
    try {
      // Written in another boot (a power loss since): the pid means nothing now.
      await writeFile(file, `${child.pid} 00000000-0000-4000-8000-000000000000\n`);
      await claimDataDir(dir, process.pid, '11111111-1111-4111-8111-111111111111');
      expect(parsePidFile(await readFile(file, 'utf8'))).toEqual({ pid: process.pid, bootId: '11111111-1111-4111-8111-111111111111' });
      // The same boot: refused, as before.
      await writeFile(file, `${child.pid} 11111111-1111-4111-8111-111111111111\n`);
      const err = await claimDataDir(dir, process.pid, '11111111-1111-4111-8111-111111111111').catch((e: unknown) => e);
      expect(isTorusError(err, 'TORUS_ERR_DATA_DIR_IN_USE')).toBe(true);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    // A thread id: after a reboot the old pid may be a thread of a process
    // whose command line says torusd (the new torusd's own, as the power-loss
    // suite saw). A pid file names a process, never a thread: taken over.
    const threaded = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)', 'torusd'], { stdio: 'ignore' });
    try {
      const tids = await waitFor('the child\'s threads', async () => {
        const t = (await readdir(`/proc/${threaded.pid}/task`)).map(Number).filter((x) => x !== threaded.pid);
        return t.length > 0 ? t : null;
      }, 10_000);
      await writeFile(file, `${tids[0]}\n`);
      await claimDataDir(dir);
    } finally {
      threaded.kill('SIGKILL');
      await new Promise((r) => threaded.once('exit', r));
    }
    await releaseDataDir(dir);
    expect(parsePidFile('123\n')).toEqual({ pid: 123, bootId: null });
    expect(parsePidFile('garbage')).toBeNull();
  });
});
