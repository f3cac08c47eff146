/**
 * The kernel side of nbd, typed: find a device, connect it to a socket,
 * hand it new sockets (RECONFIGURE), disconnect, ask its status. Generic
 * netlink is the main path; the ioctl path is the fallback for kernels whose
 * nbd driver has no netlink family. Only netlink can survive the serving
 * process: with ioctls, NBD_DO_IT ties the device to the thread that runs it.
 *
 * Every call that can block runs on a worker thread of the native addon.
 * Errors are TorusErrors with TORUS_ERR_ATTACH_* codes.
 */
import { access, readdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import { TorusError } from '../errors/torus-error.js';
import { nativeAddon, type NativeAddon } from '../util/native.js';
import {
  decodeConnectIndex,
  decodeFamilyId,
  decodeGenlReply,
  decodeStatus,
  encodeConnect,
  encodeDisconnect,
  encodeGetFamily,
  encodeReconfigure,
  encodeStatus,
  KERNEL_BLOCK_SIZE_BYTES,
  KERNEL_SERVER_FLAGS_MASK,
  type ConnectParams,
  type DeviceStatus,
  type GenlReply,
  type ReconfigureParams,
} from './netlink-codec.js';

export type KernelMode = 'netlink' | 'ioctl';

export type KernelAvailability = { available: true; mode: KernelMode; detail: string } | { available: false; error: TorusError };

const ERRNO = { EPERM: 1, ENOENT: 2, EACCES: 13, EBUSY: 16, ENODEV: 19, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOSPC: 28, ENOSYS: 38 } as const;

function errnoName(errno: number): string {
  const entry = Object.entries(os.constants.errno).find(([, v]) => v === errno);
  return entry ? entry[0] : `errno ${errno}`;
}

/** Maps a kernel errno to a TorusError with the right code and a message saying what to do. */
export function kernelError(errno: number, what: string, device?: string): TorusError {
  const name = errnoName(errno);
  const dev = device ?? 'the nbd device';
  switch (errno) {
    case ERRNO.EPERM:
    case ERRNO.EACCES:
      return new TorusError('TORUS_ERR_ATTACH_PERMISSION', `${what}: permission denied (${name}); kernel attach needs root (CAP_SYS_ADMIN)`, { details: { errno } });
    case ERRNO.EBUSY:
      return new TorusError('TORUS_ERR_ATTACH_DEVICE_BUSY', `${what}: ${dev} is busy (${name}): it is connected to another server; detach it first or pick another device`, { details: { errno } });
    case ERRNO.ENOSPC:
    case ERRNO.ENFILE:
    case ERRNO.EMFILE:
      return new TorusError('TORUS_ERR_ATTACH_NO_DEVICE', `${what}: no free nbd device (${name}); detach one or load nbd with more devices (modprobe nbd nbds_max=N)`, { details: { errno } });
    default:
      return new TorusError('TORUS_ERR_ATTACH_KERNEL', `${what}: the kernel refused (${name})`, { details: { errno } });
  }
}

export function noModuleError(): TorusError {
  return new TorusError(
    'TORUS_ERR_ATTACH_NO_MODULE',
    'this kernel has no nbd driver loaded (no "nbd" generic netlink family, no /dev/nbd0): load it with `modprobe nbd` (on kernels built without CONFIG_BLK_DEV_NBD, kernel attach is unavailable; serve volumes over NBD with torusd or torusblk nbdserve instead)',
  );
}

export function devicePath(index: number): string {
  return `/dev/nbd${index}`;
}

/** "/dev/nbd3" or "nbd3" or "3" to 3; null when it is not an nbd device name. */
export function parseDevice(device: string): number | null {
  const m = /^(?:\/dev\/)?(?:nbd)?([0-9]{1,5})$/.exec(device.trim());
  if (!m || (!device.includes('nbd') && !/^[0-9]+$/.test(device.trim()))) return null;
  return Number(m[1]);
}

export interface KernelNbdOptions {
  /** The addon; tests pass a fake or null. */
  readonly addon?: NativeAddon | null;
  /** Root of sysfs, for tests. */
  readonly sysRoot?: string;
  readonly devRoot?: string;
  /**
   * Use the ioctl path even where netlink works (env TORUS_NBD_IOCTL=1): for
   * a kernel whose netlink interface misbehaves, and so the VM suite proves
   * the fallback on a real kernel.
   */
  readonly forceIoctl?: boolean;
}

/** Typed access to the kernel's nbd driver. One per process is enough; it holds no state but the family id. */
export class KernelNbd {
  private readonly addon: NativeAddon | null;
  private readonly sysRoot: string;
  private readonly devRoot: string;
  private readonly forceIoctl: boolean;
  private family: number | null = null;
  private seq = Math.floor(Math.random() * 0x7fffffff);

  constructor(opts: KernelNbdOptions = {}) {
    this.addon = opts.addon === undefined ? nativeAddon : opts.addon;
    this.sysRoot = opts.sysRoot ?? '/sys';
    this.devRoot = opts.devRoot ?? '/dev';
    this.forceIoctl = opts.forceIoctl ?? process.env.TORUS_NBD_IOCTL === '1';
  }

  /** Whether kernel attach can work here, and how; never throws. */
  async availability(): Promise<KernelAvailability> {
    const a = this.addon;
    if (process.platform !== 'linux') {
      return { available: false, error: new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', `kernel attach needs Linux's nbd driver; this is ${process.platform}`) };
    }
    if (a === null || !a.netlinkTransact || !a.nbdSocketpair || !a.nbdIoctlServe) {
      return {
        available: false,
        error: new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', 'kernel attach needs the native addon (native/build/Release/torus_native.node), which is missing or stale: run `npm run build` (needs g++, make, python3)'),
      };
    }
    if (this.forceIoctl) {
      if (await this.exists(`${this.devRoot}/nbd0`)) return { available: true, mode: 'ioctl', detail: 'ioctl mode forced (TORUS_NBD_IOCTL=1): attachments do NOT survive a torusd restart' };
      return { available: false, error: noModuleError() };
    }
    try {
      await this.familyId();
      return { available: true, mode: 'netlink', detail: 'generic netlink family "nbd": attachments survive a torusd restart' };
    } catch (err) {
      if (err instanceof TorusError && err.code === 'TORUS_ERR_ATTACH_NO_MODULE') {
        if (await this.exists(`${this.devRoot}/nbd0`)) {
          return { available: true, mode: 'ioctl', detail: 'nbd driver without its netlink interface: ioctl mode, attachments do NOT survive a torusd restart' };
        }
      }
      return { available: false, error: err instanceof TorusError ? err : new TorusError('TORUS_ERR_ATTACH_KERNEL', String(err)) };
    }
  }

  /** Throws the availability error, or returns the mode. */
  async require(): Promise<KernelMode> {
    const av = await this.availability();
    if (!av.available) throw av.error;
    return av.mode;
  }

  // ------------------------------------------------------------ netlink

  private nextSeq(): number {
    this.seq = (this.seq + 1) & 0x7fffffff;
    return this.seq;
  }

  private transact(build: (seq: number) => Buffer, what: string, device?: string): Promise<GenlReply> {
    const addon = this.addon;
    if (!addon?.netlinkTransact) return Promise.reject(new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', 'the native addon has no netlink support: run `npm run build`'));
    const seq = this.nextSeq();
    const req = build(seq);
    return new Promise((resolve, reject) => {
      addon.netlinkTransact!(req, (errno, reply) => {
        if (errno !== 0 || reply === null) {
          reject(kernelError(errno, `${what}: netlink socket`, device));
          return;
        }
        let decoded: GenlReply;
        try {
          decoded = decodeGenlReply(reply, seq);
        } catch (err) {
          reject(new TorusError('TORUS_ERR_ATTACH_KERNEL', `${what}: malformed netlink reply: ${(err as Error).message}`));
          return;
        }
        if (decoded.errno !== 0) reject(kernelError(decoded.errno, what, device));
        else resolve(decoded);
      });
    });
  }

  /** The id of the "nbd" generic netlink family; TORUS_ERR_ATTACH_NO_MODULE when the kernel has none. */
  async familyId(): Promise<number> {
    if (this.family !== null) return this.family;
    let reply: GenlReply;
    try {
      reply = await this.transact((seq) => encodeGetFamily(seq), 'look up the nbd netlink family');
    } catch (err) {
      if (err instanceof TorusError && err.details?.errno === ERRNO.ENOENT) throw noModuleError();
      throw err;
    }
    const id = decodeFamilyId(reply);
    if (id === null) throw new TorusError('TORUS_ERR_ATTACH_KERNEL', 'the kernel answered the nbd family look-up without an id');
    this.family = id;
    return id;
  }

  /** NBD_CMD_CONNECT; returns the device index (the kernel's pick when params.index is null). */
  async connect(params: ConnectParams): Promise<number> {
    const family = await this.familyId();
    const dev = params.index === null ? undefined : devicePath(params.index);
    const reply = await this.transact((seq) => encodeConnect(family, seq, params), 'connect nbd device', dev);
    const index = decodeConnectIndex(reply) ?? params.index;
    if (index === null) throw new TorusError('TORUS_ERR_ATTACH_KERNEL', 'the kernel connected a device but did not say which');
    return index;
  }

  async reconfigure(params: ReconfigureParams): Promise<void> {
    const family = await this.familyId();
    await this.transact((seq) => encodeReconfigure(family, seq, params), 'reconfigure nbd device', devicePath(params.index));
  }

  async disconnect(index: number): Promise<void> {
    const family = await this.familyId();
    await this.transact((seq) => encodeDisconnect(family, seq, index), 'disconnect nbd device', devicePath(index));
  }

  /** Status of one device, or of all when index is null. */
  async status(index: number | null): Promise<DeviceStatus[]> {
    const family = await this.familyId();
    const reply = await this.transact((seq) => encodeStatus(family, seq, index), 'nbd device status', index === null ? undefined : devicePath(index));
    return decodeStatus(reply);
  }

  /** What the kernel shows as the device's backend (set at CONNECT), or null. */
  async backendOf(index: number): Promise<string | null> {
    try {
      return (await readFile(`${this.sysRoot}/block/nbd${index}/backend`, 'utf8')).trim();
    } catch {
      return null;
    }
  }

  // ------------------------------------------------------------ ioctl fallback

  /** The first /dev/nbdN not in use (no /sys/block/nbdN/pid), Torus's rule. */
  async findFreeDevice(): Promise<number> {
    let names: string[];
    try {
      names = await readdir(`${this.sysRoot}/block`);
    } catch {
      names = [];
    }
    const indexes = names
      .map((n) => /^nbd([0-9]+)$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    if (indexes.length === 0) throw noModuleError();
    for (const i of indexes) {
      if (!(await this.exists(`${this.sysRoot}/block/nbd${i}/pid`))) return i;
    }
    throw new TorusError('TORUS_ERR_ATTACH_NO_DEVICE', `all ${indexes.length} nbd devices are in use; detach one or load nbd with more (modprobe nbd nbds_max=N)`);
  }

  /**
   * Configures the device by ioctl and starts NBD_DO_IT on a worker thread.
   * Resolves once the device is configured; `done` settles when DO_IT
   * returns (after a disconnect, or when this process dies: no survival).
   */
  ioctlServe(index: number, sockFd: number, sizeBytes: number, serverFlags: number, timeoutSeconds: number): Promise<{ done: Promise<number> }> {
    const addon = this.addon;
    if (!addon?.nbdIoctlServe) return Promise.reject(new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', 'the native addon has no nbd ioctl support: run `npm run build`'));
    const path = devicePath(index);
    return new Promise((resolve, reject) => {
      let finish!: (errno: number) => void;
      const done = new Promise<number>((r) => {
        finish = r;
      });
      addon.nbdIoctlServe!(
        path,
        sockFd,
        sizeBytes,
        KERNEL_BLOCK_SIZE_BYTES,
        serverFlags & KERNEL_SERVER_FLAGS_MASK,
        timeoutSeconds,
        (errno, stage) => {
          if (errno !== 0) reject(kernelError(errno, `configure ${path} (${stage})`, path));
          else resolve({ done });
        },
        (errno) => finish(errno),
      );
    });
  }

  ioctlDisconnect(index: number): Promise<void> {
    const addon = this.addon;
    if (!addon?.nbdIoctlDisconnect) return Promise.reject(new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', 'the native addon has no nbd ioctl support: run `npm run build`'));
    const path = devicePath(index);
    return new Promise((resolve, reject) => {
      addon.nbdIoctlDisconnect!(path, (errno) => (errno === 0 ? resolve() : reject(kernelError(errno, `disconnect ${path}`, path))));
    });
  }

  /** An AF_UNIX stream pair: one end for the kernel, one for our NBD server. */
  socketpair(): [number, number] {
    const addon = this.addon;
    if (!addon?.nbdSocketpair) throw new TorusError('TORUS_ERR_ATTACH_UNAVAILABLE', 'the native addon has no socketpair: run `npm run build`');
    try {
      return addon.nbdSocketpair();
    } catch (err) {
      const errno = (err as { errno?: number }).errno ?? ERRNO.EINVAL;
      throw kernelError(errno, 'socketpair');
    }
  }

  private async exists(p: string): Promise<boolean> {
    try {
      await access(p);
      return true;
    } catch {
      return false;
    }
  }
}
