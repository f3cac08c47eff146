/**
 * Kernel attachments served by torusd: a /dev/nbdN per attached volume, fed
 * through a socket pair whose other end our own NBD server answers.
 *
 * Why the device survives a torusd restart:
 * - The device is connected over generic netlink with a dead-connection
 *   timeout and no DISCONNECT_ON_CLOSE/DESTROY_ON_DISCONNECT flags, so when
 *   the serving process goes (SIGTERM, upgrade, kill -9) the kernel keeps
 *   the device and holds its I/O for up to that timeout.
 * - attachments.json (state-file.ts) records each device with its volume,
 *   the etcd lease and the lock token. On SIGTERM torusd flushes but keeps
 *   the lease and the locks (see suspend()); after kill -9 they are alive
 *   anyway until the lease TTL.
 * - The next torusd resumes that lease instead of revoking it, takes over
 *   each lock only if the lease still holds it with the recorded token
 *   (adoptVolumeLock) and renews it at once (the volume's next token, so
 *   the new coordinator's versions never repeat the previous run's), and
 *   hands the kernel a new socket with RECONFIGURE.
 *   Requests the kernel had sent to the dead socket time out and are
 *   re-sent on the new one; reads and writes are idempotent, flushes too.
 * - Past the budget (lease expired: the lock may be someone else's), the
 *   device gets DISCONNECT, so the kernel fails its I/O with EIO for good,
 *   and the log and the attachment list say why.
 *
 * The same supervision re-feeds a device whenever its socket breaks while
 * torusd runs (the kernel shuts a socket down when a request times out).
 */
import { open as openFile } from 'node:fs/promises';
import net from 'node:net';
import type { Logger } from 'pino';
import { TorusError, isTorusError } from '../errors/torus-error.js';
import type { MetadataService, MetadataSession, VolumeReaderLock } from '../metadata/metadata-service.js';
import { parseWriteLevel, type WriteLevel } from '../replication/settings.js';
import { VOLUME_NAME_PATTERN } from '../metadata/metadata-service.js';
import type { ExportProvider, NbdExport } from '../nbd/export.js';
import { NbdServer } from '../nbd/server.js';
import type { NbdSession } from '../nbd/session.js';
import { VolumeExports } from '../volume/volume-exports.js';
import type { OpenMode, OpenVolume, VolumeManager } from '../cluster/volume-manager.js';
import {
  DEFAULT_DEAD_CONN_TIMEOUT_SECONDS,
  DEFAULT_TIMEOUT_SECONDS,
  type AttachmentInfo,
  type AttachmentState,
  type AttachRequest,
  type DetachResponse,
  type FaultRequest,
  type KernelStatus,
} from './api.js';
import { FaultExport, type Faults } from './fault-export.js';
import { clientHandshake, type NegotiatedExport } from './handshake.js';
import { devicePath, KernelNbd, parseDevice, type KernelMode } from './kernel-nbd.js';
import { readState, writeState, type AttachState, type RecordedAttachment } from './state-file.js';
import type { InvariantBroken } from '../util/invariant.js';

const HANDSHAKE_TIMEOUT_MS = 10_000;
/** Re-checks the lease id and lock tokens (they change when torusd re-locks after an etcd outage). */
const RECORD_CHECK_MS = 2_000;
const TIMEOUT_SECONDS_MAX = 3600;
/** How long detach waits for the kernel to close the socket after DISCONNECT. */
const DETACH_WAIT_MS = 15_000;
/**
 * NBD_DO_IT holds a libuv worker thread for the life of an ioctl attachment;
 * more than this would starve file I/O of threads.
 */
const IOCTL_ATTACHMENTS_MAX = 2;

interface Attachment {
  /** Export name our NBD server knows this attachment by. */
  readonly id: string;
  /** -1 until the kernel picks the device. */
  index: number;
  readonly volume: string;
  /** The volume's id once known (0 before): stays with a failed attachment, which has no open volume. */
  volumeId: number;
  readonly mode: OpenMode;
  readonly kernel: KernelMode;
  /** A read-only attachment that must hold a reader lock while attached. */
  readonly readerLock: boolean;
  readonly writeLevel: WriteLevel | null;
  /** The reader lock and the session (lease) it lives on: taken again when torusd's session changes. */
  reader: { lock: VolumeReaderLock; session: string } | null;
  /** Our own reference to the open volume: it keeps the volume (and lock) open between sockets. */
  ov: OpenVolume | null;
  token: number | null;
  sizeBytes: number;
  readonly timeoutSeconds: number;
  readonly deadConnTimeoutSeconds: number;
  readonly backend: string;
  readonly attachedAt: string;
  state: AttachmentState;
  detail: string | null;
  session: NbdSession | null;
  reconnects: number;
  faults: Faults;
  detaching: boolean;
  reconnecting: boolean;
}

export interface AttachManagerOptions {
  readonly dataDir: string;
  readonly metadata: MetadataService;
  readonly volumes: VolumeManager;
  readonly session: () => MetadataSession | null;
  /** This torusd's uuid: devices name it as their backend, so a device is known to be ours. */
  readonly uuid: string;
  readonly logger: Logger;
  readonly kernel?: KernelNbd;
  /** Allows FaultRequest (TORUS_FAULT_INJECTION=1); off in production. */
  readonly faultInjection?: boolean;
  /** Who holds reader locks, for messages: `torusd <uuid> on <node> (pid N)`. */
  readonly holder?: string;
  /** A kernel device's request broke an invariant (util/invariant.ts); default: crash. */
  readonly onInvariantBroken?: InvariantBroken;
}

export class AttachManager {
  private readonly opts: AttachManagerOptions;
  private readonly log: Logger;
  private readonly kernel: KernelNbd;
  private readonly nbd: NbdServer;
  private readonly attachments = new Map<number, Attachment>();
  private readonly byId = new Map<string, Attachment>();
  private recorded: AttachState | null = null;
  private recordedText = '';
  private writing: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private stopping = false;
  private nextId = 1;

  constructor(opts: AttachManagerOptions) {
    this.opts = opts;
    this.log = opts.logger.child({ module: 'attach' });
    this.kernel = opts.kernel ?? new KernelNbd();
    const exports: Record<OpenMode, VolumeExports> = {
      rw: new VolumeExports(opts.metadata, opts.volumes, 'rw', { logger: opts.logger }),
      ro: new VolumeExports(opts.metadata, opts.volumes, 'ro', { logger: opts.logger }),
    };
    const provider: ExportProvider = {
      list: async () => [],
      describe: async (name) => {
        const a = this.byId.get(name);
        if (!a) throw new TorusError('TORUS_ERR_NBD_EXPORT_UNKNOWN', `no attachment ${name}`);
        return exports[a.mode].describe(a.volume);
      },
      open: async (name): Promise<NbdExport> => {
        const a = this.byId.get(name);
        if (!a) throw new TorusError('TORUS_ERR_NBD_EXPORT_UNKNOWN', `no attachment ${name}`);
        return new FaultExport(await exports[a.mode].open(a.volume), () => a.faults);
      },
    };
    // No listener: each kernel socket is handed to it directly.
    this.nbd = new NbdServer({ provider, logger: opts.logger, onInvariantBroken: opts.onInvariantBroken });
  }

  // ------------------------------------------------------------ restart

  /**
   * Reads attachments.json before torusd opens its etcd session. Returns the
   * lease to resume (not revoke) when read-write attachments hold locks on it.
   */
  async load(): Promise<string | null> {
    this.recorded = await readState(this.opts.dataDir);
    this.recordedText = JSON.stringify(this.recorded);
    const rw = this.recorded.attachments.some((a) => a.mode === 'rw' || a.readerLock === true);
    if (this.recorded.attachments.length > 0) {
      this.log.info({ attachments: this.recorded.attachments.length, leaseId: this.recorded.leaseId }, 'kernel attachments of the previous run found');
    }
    return rw ? this.recorded.leaseId : null;
  }

  /**
   * Takes back the devices of the previous run (after the session is open
   * and the volumes can be served). `resumed` says whether the recorded lease
   * was resumed; if not, read-write devices cannot be ours any more.
   */
  async resume(resumed: boolean): Promise<void> {
    const recorded = this.recorded?.attachments ?? [];
    // Read now: a device failed in the loop below rewrites this.recorded,
    // and with no read-write device left its lease id is null.
    const recordedLease = this.recorded?.leaseId ?? null;
    this.timer = setInterval(() => void this.checkRecord(), RECORD_CHECK_MS);
    this.timer.unref();
    if (recorded.length === 0) return;
    const av = await this.kernel.availability();
    for (const r of recorded) {
      const log = this.log.child({ device: devicePath(r.index), volume: r.volume });
      if (!av.available || av.mode !== 'netlink') {
        log.error({ err: av.available ? undefined : av.error }, 'cannot take back the kernel device: no nbd netlink interface now');
        await this.releaseOrphanLock(r, resumed);
        continue;
      }
      try {
        const status = await this.kernel.status(r.index);
        const backend = await this.kernel.backendOf(r.index);
        if (!status.some((s) => s.index === r.index && s.connected) || (backend !== null && backend !== r.backend)) {
          log.warn({ backend }, 'device no longer connected to this attachment (detached, or the node rebooted); forgetting it');
          await this.releaseOrphanLock(r, resumed);
          continue;
        }
      } catch (err) {
        log.error({ err }, 'cannot read the device status; forgetting it');
        await this.releaseOrphanLock(r, resumed);
        continue;
      }
      const a = this.track(r.index, r.volume, r.mode, 'netlink', {
        readerLock: r.readerLock === true,
        writeLevel: r.writeLevel ?? null,
        ...(r.volumeId !== undefined ? { volumeId: r.volumeId } : {}),
        token: r.token,
        sizeBytes: r.sizeBytes,
        timeoutSeconds: r.timeoutSeconds,
        deadConnTimeoutSeconds: r.deadConnTimeoutSeconds,
        backend: r.backend,
        attachedAt: r.attachedAt,
      });
      a.state = 'reconnecting';
      try {
        if ((r.mode === 'rw' || r.readerLock === true) && !resumed) {
          throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `the lease ${recordedLease ?? '?'} that held the lock expired while torusd was down (longer than the restart budget); another node may have taken the volume`);
        }
        // The resumed lease still holds the reader key: taking it again on it keeps the one lock.
        if (a.readerLock) await this.takeReaderLock(a);
        a.ov = await this.opts.volumes.acquire(r.volume, r.mode, {
          ...(r.mode === 'rw' && r.token !== null ? { adoptToken: r.token } : {}),
          ...(r.writeLevel ? { writeLevel: r.writeLevel } : {}),
        });
        a.volumeId = a.ov.volume.record.id;
      } catch (err) {
        await this.failForGood(a, err);
        continue;
      }
      await this.reconnect(a, 'torusd restarted');
    }
    await this.record();
  }

  /**
   * A recorded read-write device we do not take back: its lock is still on
   * the resumed lease, which we keep alive; release it, or the volume would
   * stay locked for as long as this torusd runs.
   */
  private async releaseOrphanLock(r: RecordedAttachment, resumed: boolean): Promise<void> {
    const session = this.opts.session();
    if (!resumed || session === null) return;
    if (r.readerLock === true) {
      // The reader key lives on the resumed lease, which outlives this
      // device: left alone it would refuse every writer until torusd stops.
      try {
        await (await session.lockVolumeForReading(r.volume, this.opts.holder ?? `torusd ${this.opts.uuid}`)).release();
        this.log.info({ volume: r.volume }, 'released the reader lock of a device not taken back');
      } catch (err) {
        this.log.warn({ err, volume: r.volume }, 'could not release the reader lock of a device not taken back');
      }
      return;
    }
    if (r.mode !== 'rw' || r.token === null) return;
    try {
      const lock = await session.adoptVolumeLock(r.volume, r.token);
      await lock.release();
      this.log.info({ volume: r.volume, token: r.token }, 'released the lock of a device not taken back');
    } catch (err) {
      if (!isTorusError(err, 'TORUS_ERR_VOLUME_LOCK_LOST')) this.log.warn({ err, volume: r.volume }, 'could not release the lock of a device not taken back');
    }
  }

  /** The device fails with EIO for good: DISCONNECT, say why, keep it listed as failed. */
  private async failForGood(a: Attachment, err: unknown): Promise<void> {
    const why = err instanceof Error ? err.message : String(err);
    const e = new TorusError('TORUS_ERR_ATTACH_LOCK_LOST', `${devicePath(a.index)} (volume "${a.volume}") fails with EIO for good: ${why}`, { cause: err });
    this.log.error({ err: e, device: devicePath(a.index), volume: a.volume }, 'kernel device failed for good; detach it (torusblk nbd -d) and attach again');
    a.state = 'failed';
    a.detail = e.message;
    try {
      await this.kernel.disconnect(a.index);
    } catch (derr) {
      this.log.error({ err: derr, device: devicePath(a.index) }, 'could not disconnect the failed device; its I/O fails once the dead-connection timeout runs out');
    }
    if (a.ov) {
      const ov = a.ov;
      a.ov = null;
      // Our lock is gone: releasing only flushes and drops our reference.
      await this.opts.volumes.release(ov).catch(() => undefined);
    }
    await this.dropReaderLock(a);
    await this.record();
  }

  /** Takes (or takes again, on the current session) the reader lock of a reader-locked attachment. */
  private async takeReaderLock(a: Attachment): Promise<void> {
    const session = this.opts.session();
    if (!session) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `cannot take a reader lock on volume "${a.volume}": no etcd session`);
    const lock = await session.lockVolumeForReading(a.volume, this.opts.holder ?? `torusd ${this.opts.uuid}`);
    a.reader = { lock, session: session.id };
  }

  private async dropReaderLock(a: Attachment): Promise<void> {
    const r = a.reader;
    a.reader = null;
    if (r) await r.lock.release().catch((err) => this.log.warn({ err, volume: a.volume }, 'releasing the reader lock failed; it ends with the lease'));
  }

  // ------------------------------------------------------------ API

  async kernelStatus(): Promise<KernelStatus> {
    const av = await this.kernel.availability();
    return av.available ? { available: true, mode: av.mode, detail: av.detail } : { available: false, code: av.error.code, message: av.error.message };
  }

  list(): AttachmentInfo[] {
    return [...this.attachments.values()].sort((x, y) => x.index - y.index).map((a) => this.info(a));
  }

  async attach(req: AttachRequest): Promise<AttachmentInfo> {
    if (this.stopping) throw new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', 'torusd is stopping');
    if (typeof req.volume !== 'string' || !VOLUME_NAME_PATTERN.test(req.volume)) {
      throw new TorusError('TORUS_ERR_NAME_INVALID', `volume name ${JSON.stringify(req.volume)} is not [A-Za-z0-9][A-Za-z0-9._-]{0,127}`);
    }
    const mode: OpenMode = req.readOnly === true ? 'ro' : 'rw';
    if (req.readerLock !== undefined && typeof req.readerLock !== 'boolean') throw new TorusError('TORUS_ERR_ARG_INVALID', 'readerLock must be true or false');
    const readerLock = req.readerLock === true;
    if (readerLock && mode !== 'ro') throw new TorusError('TORUS_ERR_ARG_INVALID', 'readerLock needs readOnly: a writer holds the write lock');
    let writeLevel: WriteLevel | null = null;
    if (req.writeLevel !== undefined) {
      writeLevel = typeof req.writeLevel === 'string' ? parseWriteLevel(req.writeLevel) : null;
      if (writeLevel === null) throw new TorusError('TORUS_ERR_ARG_INVALID', `writeLevel ${JSON.stringify(req.writeLevel)} is not all, one or local`);
      if (mode !== 'rw') throw new TorusError('TORUS_ERR_ARG_INVALID', 'writeLevel applies to read-write attachments only');
    }
    const timeoutSeconds = seconds(req.timeoutSeconds, DEFAULT_TIMEOUT_SECONDS, 'timeoutSeconds');
    const deadConnTimeoutSeconds = seconds(req.deadConnTimeoutSeconds, DEFAULT_DEAD_CONN_TIMEOUT_SECONDS, 'deadConnTimeoutSeconds');
    let index: number | null = null;
    if (req.device !== undefined && req.device !== '') {
      index = parseDevice(req.device);
      if (index === null) throw new TorusError('TORUS_ERR_ARG_INVALID', `"${req.device}" is not an nbd device (/dev/nbdN)`);
      if (this.attachments.has(index)) throw new TorusError('TORUS_ERR_ATTACH_DEVICE_BUSY', `${devicePath(index)} is already attached to volume "${this.attachments.get(index)!.volume}"`);
    }
    const kernel = await this.kernel.require();
    // Two devices over one volume on one node would be two page caches over
    // the same blocks: refuse, whatever the modes.
    for (const other of this.attachments.values()) {
      if (other.volume === req.volume && other.state !== 'failed') {
        throw new TorusError('TORUS_ERR_VOLUME_IN_USE', `volume "${req.volume}" is already attached at ${devicePath(other.index)} on this node`);
      }
    }
    if (kernel === 'ioctl') {
      if ([...this.attachments.values()].filter((a) => a.kernel === 'ioctl').length >= IOCTL_ATTACHMENTS_MAX) {
        throw new TorusError('TORUS_ERR_ATTACH_NO_DEVICE', `ioctl mode serves at most ${IOCTL_ATTACHMENTS_MAX} devices (each holds a worker thread); this kernel has no nbd netlink interface`);
      }
      if (index === null) index = await this.kernel.findFreeDevice();
    } else if (index !== null) {
      const st = await this.kernel.status(index);
      if (st.some((s) => s.index === index && s.connected)) throw new TorusError('TORUS_ERR_ATTACH_DEVICE_BUSY', `${devicePath(index)} is connected to another server; detach it first or pick another device`);
    }
    const id = `attach-${process.pid}-${this.nextId++}`;
    // A placeholder index until the kernel picks one.
    const pending: Attachment = this.newAttachment(id, index ?? -1, req.volume, mode, kernel, {
      readerLock,
      writeLevel,
      token: null,
      sizeBytes: 0,
      timeoutSeconds,
      deadConnTimeoutSeconds,
      backend: `torus:${this.opts.uuid}:${req.volume}:${id}`,
      attachedAt: new Date().toISOString(),
    });
    // The reader lock first: while it is held no writer can take the volume, so what is opened next is what stays.
    if (readerLock) await this.takeReaderLock(pending);
    let ov: OpenVolume;
    try {
      ov = await this.opts.volumes.acquire(req.volume, mode, writeLevel ? { writeLevel } : {});
    } catch (err) {
      await this.dropReaderLock(pending);
      throw err;
    }
    pending.token = ov.lock?.token ?? null;
    pending.sizeBytes = ov.volume.size;
    pending.volumeId = ov.volume.record.id;
    pending.ov = ov;
    this.byId.set(id, pending);
    let conn: Connection | null = null;
    try {
      conn = await this.connectSocket(pending);
      let picked: number;
      if (kernel === 'netlink') {
        picked = await this.kernel.connect({
          index,
          sizeBytes: conn.negotiated.sizeBytes,
          serverFlags: conn.negotiated.flags,
          timeoutSeconds,
          deadConnTimeoutSeconds,
          socketFds: [conn.kernelFd],
          backend: pending.backend,
        });
      } else {
        picked = index!;
        const { done } = await this.kernel.ioctlServe(picked, conn.kernelFd, conn.negotiated.sizeBytes, conn.negotiated.flags, timeoutSeconds);
        void done.then((errno) => this.onIoctlDone(picked, errno));
      }
      conn.kernelSide.destroy(); // the kernel holds its own reference to the socket now
      const a = pending;
      a.index = picked;
      this.attachments.set(picked, a);
      this.watch(a, conn.session);
      a.state = 'serving';
      await this.record();
      this.log.info({ device: devicePath(picked), volume: a.volume, mode, kernel, token: a.token, timeoutSeconds, deadConnTimeoutSeconds }, 'volume attached');
      return this.info(a);
    } catch (err) {
      this.byId.delete(id);
      conn?.kernelSide.destroy();
      conn?.session.destroy();
      await this.opts.volumes.release(ov).catch(() => undefined);
      await this.dropReaderLock(pending);
      throw err;
    }
  }

  async detach(device: string): Promise<DetachResponse> {
    const index = parseDevice(device);
    if (index === null) throw new TorusError('TORUS_ERR_ARG_INVALID', `"${device}" is not an nbd device (/dev/nbdN)`);
    const a = this.attachments.get(index);
    if (!a) throw new TorusError('TORUS_ERR_ATTACH_NOT_FOUND', `${devicePath(index)} is not attached by this torusd (see torusblk nbd --list)`);
    a.detaching = true;
    const log = this.log.child({ device: devicePath(index), volume: a.volume });
    if (a.state !== 'failed') {
      // Flush the device's page cache and the volume before cutting it off.
      await flushDevice(devicePath(index)).catch((err) => log.warn({ err }, 'flushing the device before detach failed'));
      try {
        if (a.kernel === 'netlink') await this.kernel.disconnect(index);
        else await this.kernel.ioctlDisconnect(index);
      } catch (err) {
        a.detaching = false;
        throw err;
      }
      const session = a.session;
      if (session) await Promise.race([session.closed, new Promise((r) => setTimeout(r, DETACH_WAIT_MS).unref())]);
    }
    this.forget(a);
    // The device is gone either way; a final flush that failed is reported
    // once the attachment is cleaned up.
    let flushErr: unknown = null;
    if (a.ov) {
      const ov = a.ov;
      a.ov = null;
      await this.opts.volumes.release(ov).catch((err: unknown) => (flushErr = err));
    }
    await this.dropReaderLock(a);
    await this.record();
    if (flushErr !== null) {
      log.error({ err: flushErr }, 'volume detached, but its final flush failed');
      throw flushErr;
    }
    log.info({}, 'volume detached');
    return { device: devicePath(index), volume: a.volume, detached: true };
  }

  setFault(req: FaultRequest): AttachmentInfo {
    if (!this.opts.faultInjection) throw new TorusError('TORUS_ERR_ARG_INVALID', 'fault injection is off: start torusd with TORUS_FAULT_INJECTION=1 (tests only)');
    const index = parseDevice(req.device);
    const a = index === null ? undefined : this.attachments.get(index);
    if (!a) throw new TorusError('TORUS_ERR_ATTACH_NOT_FOUND', `${req.device} is not attached by this torusd`);
    if (req.read !== 'eio' && req.read !== 'none') throw new TorusError('TORUS_ERR_ARG_INVALID', 'fault read must be "eio" or "none"');
    a.faults = { read: req.read };
    this.log.warn({ device: devicePath(a.index), faults: a.faults }, 'test fault armed');
    return this.info(a);
  }

  // ------------------------------------------------------------ stop

  /** Read-write attachments whose lease and locks must outlive this process. */
  keepsLease(): boolean {
    return [...this.attachments.values()].some((a) => a.kernel === 'netlink' && (a.mode === 'rw' || a.readerLock) && a.state !== 'failed' && a.ov !== null);
  }

  keepsLock(ov: OpenVolume): boolean {
    return [...this.attachments.values()].some((a) => a.kernel === 'netlink' && a.ov === ov && a.state !== 'failed');
  }

  /**
   * torusd is stopping but its devices stay: answer what the kernel sent,
   * close the sockets (the kernel then holds new I/O), keep the volumes
   * open so torusd flushes them without unlocking. ioctl devices cannot
   * outlive us: they are flushed and detached.
   */
  async suspend(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    for (const a of [...this.attachments.values()]) {
      if (a.kernel === 'ioctl') {
        this.log.warn({ device: devicePath(a.index), volume: a.volume }, 'ioctl-mode device cannot survive torusd: detaching it');
        await this.detach(devicePath(a.index)).catch((err) => this.log.error({ err, device: devicePath(a.index) }, 'detach failed'));
      }
    }
    await this.nbd.close();
    await this.record().catch((err) => this.log.error({ err }, 'could not write attachments.json'));
    if (this.attachments.size > 0) this.log.info({ attachments: this.list().map((a) => `${a.device}=${a.volume}`) }, 'kernel devices left attached; the next torusd takes them back');
  }

  // ------------------------------------------------------------ sockets

  private track(index: number, volume: string, mode: OpenMode, kernel: KernelMode, r: AttachmentParams): Attachment {
    const id = `attach-${process.pid}-${this.nextId++}`;
    const a = this.newAttachment(id, index, volume, mode, kernel, r);
    this.attachments.set(index, a);
    this.byId.set(id, a);
    return a;
  }

  private newAttachment(id: string, index: number, volume: string, mode: OpenMode, kernel: KernelMode, r: AttachmentParams): Attachment {
    return {
      id,
      index,
      volume,
      volumeId: r.volumeId ?? 0,
      mode,
      kernel,
      readerLock: r.readerLock,
      writeLevel: r.writeLevel,
      reader: null,
      ov: null,
      token: r.token,
      sizeBytes: r.sizeBytes,
      timeoutSeconds: r.timeoutSeconds,
      deadConnTimeoutSeconds: r.deadConnTimeoutSeconds,
      backend: r.backend,
      attachedAt: r.attachedAt,
      state: 'reconnecting',
      detail: null,
      session: null,
      reconnects: 0,
      faults: { read: 'none' },
      detaching: false,
      reconnecting: false,
    };
  }

  private forget(a: Attachment): void {
    if (this.attachments.get(a.index) === a) this.attachments.delete(a.index);
    this.byId.delete(a.id);
  }

  /** A socket pair: our NBD server on one end, the handshake done on the other, which is ready for the kernel. */
  private async connectSocket(a: Attachment): Promise<Connection> {
    const [kernelFd, serverFd] = this.kernel.socketpair();
    const serverSide = new net.Socket({ fd: serverFd, readable: true, writable: true });
    const session = this.nbd.handle(serverSide, `kernel:${a.id}`);
    const kernelSide = new net.Socket({ fd: kernelFd, readable: true, writable: true });
    if (session === null) {
      kernelSide.destroy();
      throw new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', 'torusd is stopping');
    }
    try {
      const negotiated = await clientHandshake(kernelSide, a.id, HANDSHAKE_TIMEOUT_MS);
      return { kernelFd, kernelSide, session, negotiated };
    } catch (err) {
      kernelSide.destroy();
      session.destroy();
      throw err;
    }
  }

  private watch(a: Attachment, session: NbdSession): void {
    a.session = session;
    void session.closed.then(() => {
      if (a.session !== session || a.detaching || this.stopping || a.kernel !== 'netlink' || a.state === 'failed') return;
      // The kernel dropped the socket (a request timed out) or it broke: feed the device a new one.
      void this.reconnect(a, 'socket closed');
    });
  }

  /** Hands the kernel a new socket (RECONFIGURE), retrying while the kernel has not yet seen the old one die. */
  private async reconnect(a: Attachment, why: string): Promise<void> {
    if (a.reconnecting) return;
    a.reconnecting = true;
    a.state = 'reconnecting';
    a.detail = why;
    const log = this.log.child({ device: devicePath(a.index), volume: a.volume });
    const deadline = Date.now() + a.deadConnTimeoutSeconds * 1000;
    let delay = 50;
    try {
      // A device failed for good (another holder took the volume while our
      // lease was gone) is never fed again: a handshake would open the
      // volume afresh, and take its lock as soon as the other holder lets
      // go (the CSI VM suite's death check: node A's loop took the volume
      // back between node B's unstage and its next stage).
      while (!this.stopping && !a.detaching && !failedForGood(a)) {
        let conn: Connection | null = null;
        try {
          conn = await this.connectSocket(a);
          if (failedForGood(a)) throw new TorusError('TORUS_ERR_ATTACH_LOCK_LOST', `${devicePath(a.index)} failed for good while a new socket was being made for it`);
          await this.kernel.reconfigure({ index: a.index, socketFds: [conn.kernelFd], timeoutSeconds: a.timeoutSeconds, deadConnTimeoutSeconds: a.deadConnTimeoutSeconds, backend: a.backend });
          conn.kernelSide.destroy();
          a.reconnects++;
          a.state = 'serving';
          a.detail = null;
          this.watch(a, conn.session);
          log.info({ why, reconnects: a.reconnects }, 'kernel device re-fed with a new socket');
          return;
        } catch (err) {
          conn?.kernelSide.destroy();
          conn?.session.destroy();
          // Failed for good meanwhile: it stays listed as failed (failForGood).
          if (failedForGood(a)) return;
          const connected = await this.kernel.status(a.index).then(
            (s) => s.some((d) => d.index === a.index && d.connected),
            () => true,
          );
          if (!connected) {
            log.warn({ err }, 'device was disconnected outside torusd; forgetting it');
            this.forget(a);
            if (a.ov) await this.opts.volumes.release(a.ov).catch(() => undefined);
            a.ov = null;
            await this.dropReaderLock(a);
            await this.record();
            return;
          }
          if (Date.now() > deadline) {
            await this.failForGood(a, err);
            return;
          }
          // ENOSPC: the kernel has not marked the old socket dead yet.
          if (!isTorusError(err) || err.details?.errno !== 28) log.warn({ err, retryMs: delay }, 'could not re-feed the kernel device; retrying');
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(1000, delay * 2);
        }
      }
    } finally {
      a.reconnecting = false;
    }
  }

  private onIoctlDone(index: number, errno: number): void {
    const a = this.attachments.get(index);
    if (!a || a.kernel !== 'ioctl') return;
    this.log.info({ device: devicePath(index), errno }, 'NBD_DO_IT returned: ioctl device disconnected');
    if (!a.detaching) {
      this.forget(a);
      if (a.ov) void this.opts.volumes.release(a.ov).catch(() => undefined);
      a.ov = null;
      void this.dropReaderLock(a);
    }
  }

  // ------------------------------------------------------------ state

  private info(a: Attachment): AttachmentInfo {
    return {
      device: devicePath(a.index),
      index: a.index,
      volume: a.volume,
      volumeId: a.ov?.volume.record.id ?? a.volumeId,
      mode: a.mode,
      readerLock: a.readerLock,
      kernel: a.kernel,
      survivesRestart: a.kernel === 'netlink',
      sizeBytes: a.sizeBytes,
      lockToken: a.ov?.lock?.token ?? a.token,
      timeoutSeconds: a.timeoutSeconds,
      deadConnTimeoutSeconds: a.deadConnTimeoutSeconds,
      state: a.state,
      detail: a.detail,
      attachedAt: a.attachedAt,
      reconnects: a.reconnects,
      faults: { ...a.faults },
    };
  }

  private current(): AttachState {
    const list = [...this.attachments.values()].filter((a) => a.kernel === 'netlink' && a.state !== 'failed' && a.ov !== null);
    const rw = list.some((a) => a.mode === 'rw' || a.readerLock);
    return {
      leaseId: rw ? (this.opts.session()?.id ?? this.recorded?.leaseId ?? null) : null,
      attachments: list
        .sort((x, y) => x.index - y.index)
        .map((a) => ({
          index: a.index,
          volume: a.volume,
          mode: a.mode,
          token: a.mode === 'rw' ? (a.ov?.lock?.token ?? a.token) : null,
          ...(a.readerLock ? { readerLock: true } : {}),
          ...(a.writeLevel ? { writeLevel: a.writeLevel } : {}),
          ...(a.volumeId > 0 ? { volumeId: a.volumeId } : {}),
          sizeBytes: a.sizeBytes,
          timeoutSeconds: a.timeoutSeconds,
          deadConnTimeoutSeconds: a.deadConnTimeoutSeconds,
          backend: a.backend,
          attachedAt: a.attachedAt,
        })),
    };
  }

  /** Writes attachments.json when what it should say changed; writes are serialised. */
  private record(): Promise<void> {
    const next = this.writing.then(async () => {
      const state = this.current();
      for (const a of this.attachments.values()) if (a.mode === 'rw' && a.ov?.lock) a.token = a.ov.lock.token;
      const text = JSON.stringify(state);
      if (text === this.recordedText) return;
      await writeState(this.opts.dataDir, state);
      this.recorded = state;
      this.recordedText = text;
    });
    this.writing = next.catch((err) => this.log.error({ err }, 'could not write attachments.json'));
    return next;
  }

  /**
   * After an etcd outage torusd has a new session, and reader locks on the
   * old lease are gone: take them again on the new one. While a writer
   * holds the volume by then, the device fails for good, as a writer's
   * does when its lease was lost: it would show another node's writes.
   */
  private async checkReaderLocks(): Promise<void> {
    const session = this.opts.session();
    if (!session) return;
    for (const a of [...this.attachments.values()]) {
      if (!a.readerLock || a.state === 'failed' || a.detaching || a.reader?.session === session.id) continue;
      try {
        await this.takeReaderLock(a);
        this.log.info({ device: devicePath(a.index), volume: a.volume, session: session.id }, 'reader lock taken again on the new etcd session');
      } catch (err) {
        if (isTorusError(err, 'TORUS_ERR_VOLUME_IN_USE')) await this.failForGood(a, err);
        else this.log.warn({ err, volume: a.volume }, 'could not take the reader lock again yet; retrying');
      }
    }
  }

  private async checkRecord(): Promise<void> {
    if (this.stopping) return;
    await this.checkReaderLocks();
    for (const a of [...this.attachments.values()]) {
      // Another node wrote the volume while our lease was gone: the device must not go on as if nothing happened.
      if (a.ov?.fenced && a.state !== 'failed' && !a.detaching) {
        await this.failForGood(a, new TorusError('TORUS_ERR_VOLUME_FENCED', `another holder took volume "${a.volume}" while this torusd's lease was gone`));
      }
    }
    // After an etcd outage torusd takes a new lease and new lock tokens.
    if (JSON.stringify(this.current()) !== this.recordedText) await this.record().catch(() => undefined);
  }
}

/** Read through a call: the state changes while a reconnect awaits (failForGood), which narrowing cannot see. */
function failedForGood(a: { readonly state: string }): boolean {
  return a.state === 'failed';
}

type AttachmentParams = Omit<RecordedAttachment, 'index' | 'volume' | 'mode' | 'readerLock' | 'writeLevel'> & { readonly readerLock: boolean; readonly writeLevel: WriteLevel | null };

interface Connection {
  readonly kernelFd: number;
  readonly kernelSide: net.Socket;
  readonly session: NbdSession;
  readonly negotiated: NegotiatedExport;
}

function seconds(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1 || v > TIMEOUT_SECONDS_MAX) throw new TorusError('TORUS_ERR_ARG_INVALID', `${what} must be a whole number of seconds from 1 to ${TIMEOUT_SECONDS_MAX}`);
  return v;
}

/** fsync on the block device: its page cache down to the volume, then a FLUSH. Runs on the thread pool. */
async function flushDevice(path: string): Promise<void> {
  const fh = await openFile(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
