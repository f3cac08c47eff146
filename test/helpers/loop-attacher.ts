/**
 * A test Attacher for hosts without a kernel nbd driver: the volume's NBD
 * export becomes a file through nbdfuse, and the file a block device through
 * a loop device. The device is real (mkfs, blkid, mount work on it) and its
 * bytes are the torus volume's, so the FlexVolume mount logic runs end to end
 * on this machine. Kernel attach (src/attach) replaces it on real nodes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { TorusError } from '../../src/errors/torus-error.js';
import type { Attacher, AttachOptions } from '../../src/k8s/flex/attacher.js';
import { run } from './nbd-exec.js';
import { requireTool } from './tools.js';
import { waitFor } from './wait.js';

interface Attached {
  readonly dir: string;
  readonly fuse: ChildProcess;
}

export class LoopAttacher implements Attacher {
  private readonly attached = new Map<string, Attached>();
  readonly calls: string[] = [];

  /** `uri(volume)` is the NBD URI the volume is served at. */
  constructor(private readonly uri: (volume: string) => string) {
    requireTool('nbdfuse', 'libnbd-bin');
    requireTool('losetup', 'mount');
    requireTool('fusermount3', 'fuse3');
  }

  async attach(volume: string, opts: AttachOptions): Promise<{ device: string }> {
    this.calls.push(`attach ${volume}${opts.readOnly ? ' ro' : ''}`);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'torus-loop-attach-'));
    const fuse = spawn('nbdfuse', [...(opts.readOnly ? ['--readonly'] : []), dir, this.uri(volume)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    fuse.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const file = path.join(dir, 'nbd');
    try {
      await waitFor(`nbdfuse to expose ${file}`, async () => existsSync(file) || fuse.exitCode !== null, 15_000);
      if (fuse.exitCode !== null) {
        // torus answers NBD_OPT_GO for a volume whose lock another writer
        // holds with NBD_REP_ERR_POLICY (src/nbd/errno.ts); libnbd reports
        // it as "server policy prevents NBD_OPT_GO". Anything else is not a
        // lock refusal.
        const what = `nbdfuse ${this.uri(volume)} exited ${fuse.exitCode}: ${stderr.trim()}`;
        if (/server policy prevents NBD_OPT_GO/.test(stderr)) throw new TorusError('TORUS_ERR_VOLUME_IN_USE', what);
        throw new Error(what);
      }
      const r = await run('losetup', ['--find', '--show', '--direct-io=on', ...(opts.readOnly ? ['--read-only'] : []), file]);
      if (r.code !== 0) throw new Error(`losetup failed: ${r.stderr}`);
      const device = r.stdout.trim();
      this.attached.set(device, { dir, fuse });
      return { device };
    } catch (err) {
      await this.stopFuse({ dir, fuse });
      throw err;
    }
  }

  async detach(device: string): Promise<void> {
    this.calls.push(`detach ${device}`);
    const a = this.attached.get(device);
    if (!a) return;
    const r = await run('losetup', ['-d', device]);
    if (r.code !== 0) throw new Error(`losetup -d ${device}: ${r.stderr}`);
    this.attached.delete(device);
    await this.stopFuse(a);
  }

  async detachAll(): Promise<void> {
    for (const device of [...this.attached.keys()]) await this.detach(device).catch(() => undefined);
  }

  private async stopFuse(a: Attached): Promise<void> {
    await run('fusermount3', ['-u', a.dir]).catch(() => undefined);
    if (a.fuse.exitCode === null) {
      a.fuse.kill('SIGTERM');
      await new Promise((r) => a.fuse.once('exit', r));
    }
    await rm(a.dir, { recursive: true, force: true });
  }
}
