/**
 * The node side of `mount <dir> <json>` and `unmount <dir>`: attach, prove
 * the device empty before any mkfs, mount the volume once per node (the
 * "staging" mount) and bind it into each pod directory, and undo all of it
 * when the last pod directory goes.
 *
 * Every step is idempotent under kubelet's retries: the kernel's mount table
 * says what is mounted, the state file (state.ts) says which of those mounts
 * are ours. Calls run one at a time: kubelet may call for several pods at
 * once, and two attaches of one volume must not race.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Logger } from 'pino';
import { TorusError, isTorusError } from '../../errors/torus-error.js';
import type { Attacher } from './attacher.js';
import { FLEX_MOUNT_CODES, prepareFilesystem, stagingMountOptions } from '../mount/filesystem.js';
import type { FormatMarks } from '../mount/format-marks.js';
import { mountAt, type MountEntry } from '../mount/mountinfo.js';
import type { MountSystem } from '../mount/system.js';
import type { MountRequest } from './options.js';
import type { Attachment, StateStore } from './state.js';

export { PROBE_BYTES } from '../mount/filesystem.js';

export interface FlexMounterOptions {
  readonly attacher: Attacher;
  readonly system: MountSystem;
  readonly marks: FormatMarks;
  readonly state: StateStore;
  /** Parent of the per-volume staging mounts; on the host, under kubelet's plugin folder. */
  readonly stagingRoot: string;
  readonly logger: Logger;
}

/** One attachment per volume and cluster: the same name in another cluster's etcd is another volume. */
export function attachmentKey(volume: string, etcd: readonly string[] | null): string {
  if (etcd === null) return volume;
  return `${volume}@${createHash('sha256').update(etcd.join(',')).digest('hex').slice(0, 12)}`;
}

function mountFailed(message: string, cause?: unknown): TorusError {
  return new TorusError('TORUS_ERR_FLEX_MOUNT_FAILED', message, cause === undefined ? undefined : { cause });
}

function reason(err: unknown): string {
  return err instanceof TorusError ? err.toLine() : err instanceof Error ? err.message : String(err);
}

const GONE_DEVICE_ERRNOS = new Set(['ENOENT', 'ENXIO', 'ENODEV']);

export class FlexMounter {
  private readonly o: FlexMounterOptions;
  private readonly log: Logger;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: FlexMounterOptions) {
    this.o = opts;
    this.log = opts.logger.child({ module: 'flex' });
  }

  mount(req: MountRequest): Promise<void> {
    return this.serial(() => this.mountNow(req));
  }

  unmount(dir: string): Promise<void> {
    return this.serial(() => this.unmountNow(dir));
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  // ------------------------------------------------------------------ mount

  private async mountNow(req: MountRequest): Promise<void> {
    const { system: sys, state } = this.o;
    const log = this.log.child({ volume: req.volume, dir: req.dir, readOnly: req.readOnly, pod: req.pod.uid });
    const key = attachmentKey(req.volume, req.etcd);
    const all = await state.load();
    const table = await sys.mountTable();
    let att = all.get(key) ?? null;
    const staging = att ? mountAt(table, att.staging) : null;
    const atDir = mountAt(table, req.dir);

    if (atDir !== null) {
      // kubelet retried a mount that worked (or that worked before a crash
      // kept us from recording it): the directory is already this volume.
      if (att !== null && staging !== null && atDir.dev === staging.dev) {
        if (!att.targets.includes(req.dir)) {
          all.set(key, { ...att, targets: [...att.targets, req.dir] });
          await state.save(all);
        }
        log.info({}, 'already mounted');
        return;
      }
      throw mountFailed(`${req.dir} is already a mount point (${atDir.source}, ${atDir.fsType}); refusing to mount volume ${req.volume} over it`);
    }

    // A directory another record still lists (its unmount never came) is
    // not mounted any more: forget it there.
    for (const [k, other] of all) {
      if (k !== key && other.targets.includes(req.dir)) all.set(k, { ...other, targets: other.targets.filter((t) => t !== req.dir) });
    }

    if (att !== null && staging !== null) {
      // A second pod on this node: share the device through another bind mount.
      if (att.readOnly && !req.readOnly) {
        throw new TorusError(
          'TORUS_ERR_FLEX_MODE_CONFLICT',
          `volume ${req.volume} is attached read-only on this node (for ${att.targets.join(', ') || 'another pod'}); a read-write mount needs every read-only user gone first`,
        );
      }
      if (att.fsType !== req.fsType) {
        throw new TorusError('TORUS_ERR_FLEX_FS_MISMATCH', `volume ${req.volume} is mounted on this node as ${att.fsType}, not ${req.fsType}`);
      }
      await sys.mkdirp(req.dir);
      await sys.bind(att.staging, req.dir, req.readOnly);
      all.set(key, { ...att, targets: [...att.targets.filter((t) => t !== req.dir), req.dir] });
      await state.save(all);
      log.info({ device: att.device, users: att.targets.length + 1 }, 'volume shared with another pod on this node');
      return;
    }

    if (att !== null) {
      // A record whose staging mount is gone: a teardown that stopped half
      // way, or a node reboot. Finish it before attaching again.
      await this.releaseStale(att, table, log);
      all.delete(key);
      await state.save(all);
      att = null;
    }

    const stagingDir = path.join(this.o.stagingRoot, key);
    const { device } = await this.o.attacher.attach(req.volume, { readOnly: req.readOnly, etcd: req.etcd });
    log.info({ device }, 'attached');
    const record: Attachment = { volume: req.volume, etcd: req.etcd, device, readOnly: req.readOnly, fsType: req.fsType, staging: stagingDir, targets: [] };
    let stagingMounted = false;
    try {
      // Recorded before anything is mounted, so a crash from here on leaves
      // a record that the next call can finish or undo.
      all.set(key, record);
      await state.save(all);
      await this.prepareFilesystem(device, req, log);
      await sys.mkdirp(stagingDir);
      await sys.mount(device, stagingDir, req.fsType, stagingMountOptions(req.fsType, req.readOnly, req.trim));
      stagingMounted = true;
      await sys.mkdirp(req.dir);
      await sys.bind(stagingDir, req.dir, req.readOnly);
      all.set(key, { ...record, targets: [req.dir] });
      await state.save(all);
      log.info({ device, fsType: req.fsType, trim: req.trim }, 'mounted');
    } catch (err) {
      log.warn({ err, device }, 'mount failed; undoing');
      if (stagingMounted) await sys.unmount(stagingDir).catch((e: unknown) => log.error({ err: e }, 'undo: unmount of the staging mount failed'));
      try {
        await this.o.attacher.detach(device);
        all.delete(key);
        await state.save(all);
      } catch (e) {
        // The record stays: the next mount or unmount finishes the detach.
        log.error({ err: e, device }, 'undo: detach failed');
      }
      throw err;
    }
  }

  /** mkfs only when the device is provably empty (see prepareFilesystem). */
  private async prepareFilesystem(device: string, req: MountRequest, log: Logger): Promise<void> {
    await prepareFilesystem({ system: this.o.system, marks: this.o.marks, codes: FLEX_MOUNT_CODES }, device, req, log);
  }

  /** Finishes the teardown of an attachment whose staging mount is gone. */
  private async releaseStale(att: Attachment, table: readonly MountEntry[], log: Logger): Promise<void> {
    // After a node reboot the device name may belong to another attachment
    // by now: leave a device alone while anything is mounted from it.
    if (table.some((m) => m.source === att.device)) {
      throw mountFailed(`volume ${att.volume}'s previous device ${att.device} is still mounted somewhere; unmount it first`);
    }
    for (const t of att.targets) {
      if (mountAt(table, t) !== null) await this.o.system.unmount(t);
    }
    await this.o.attacher.detach(att.device);
    log.info({ device: att.device }, 'released a stale attachment');
  }

  // ---------------------------------------------------------------- unmount

  private async unmountNow(dir: string): Promise<void> {
    const { system: sys, state } = this.o;
    const all = await state.load();
    let table = await sys.mountTable();
    const atDir = mountAt(table, dir);
    let key: string | null = null;
    for (const [k, a] of all) if (a.targets.includes(dir)) key = k;
    if (key === null && atDir !== null) {
      // Bound but not yet recorded (a crash between the two): match by device.
      for (const [k, a] of all) {
        const s = mountAt(table, a.staging);
        if (s !== null && s.dev === atDir.dev) key = k;
      }
    }
    if (key === null) {
      if (atDir === null) {
        this.log.info({ dir }, 'unmount: not mounted (already unmounted)');
        return;
      }
      throw new TorusError('TORUS_ERR_FLEX_NOT_TORUS_MOUNT', `${dir} is a mount of ${atDir.source} (${atDir.fsType}) that torus did not make; not unmounting it`);
    }
    const att = all.get(key)!;
    const log = this.log.child({ volume: att.volume, dir, device: att.device });
    let staging = mountAt(table, att.staging);
    if (atDir !== null) {
      if (staging !== null && atDir.dev !== staging.dev) {
        throw new TorusError('TORUS_ERR_FLEX_NOT_TORUS_MOUNT', `${dir} is now a mount of ${atDir.source}, not of volume ${att.volume}; not unmounting it`);
      }
      await sys.unmount(dir);
      table = await sys.mountTable();
      staging = mountAt(table, att.staging);
    }
    const others = att.targets.filter((t) => {
      if (t === dir) return false;
      const m = mountAt(table, t);
      return m !== null && staging !== null && m.dev === staging.dev;
    });
    if (others.length > 0) {
      all.set(key, { ...att, targets: others });
      await state.save(all);
      log.info({ users: others.length }, 'unmounted; the volume stays for the other pods on this node');
      return;
    }
    // The last user: unmount the volume, flush the device, detach. Each step
    // can be repeated, so a failed teardown is finished by kubelet's retry.
    if (staging === null && table.some((m) => m.source === att.device)) {
      // Our volume's mount is gone (a node reboot) and something else is
      // mounted from that device name now: it is not ours to detach.
      all.delete(key);
      await state.save(all);
      log.warn({}, 'the device now carries another mount; forgot the stale attachment without detaching');
      return;
    }
    if (staging !== null) await sys.unmount(att.staging);
    try {
      await sys.flush(att.device);
    } catch (err) {
      if (!GONE_DEVICE_ERRNOS.has((err as NodeJS.ErrnoException).code ?? '')) {
        throw mountFailed(`flushing ${att.device} (volume ${att.volume}) failed; the device stays attached: ${reason(err)}`, err);
      }
    }
    try {
      await this.o.attacher.detach(att.device);
    } catch (err) {
      if (isTorusError(err)) throw err;
      throw mountFailed(`detaching ${att.device} (volume ${att.volume}) failed: ${reason(err)}`, err);
    }
    all.delete(key);
    await state.save(all);
    log.info({}, 'unmounted, flushed and detached');
  }
}
