/**
 * The one place where errors become NBD error values (transmission) and
 * option error replies (handshake).
 *
 * Choices:
 * - TORUS_ERR_VOLUME_LOCK_LOST and TORUS_ERR_VOLUME_FENCED -> EIO. Losing the
 *   write lock must be a hard failure: filesystems react to EIO (ext4
 *   errors=remount-ro, XFS shutdown), and the Linux nbd driver turns every
 *   error into an I/O error anyway; EPERM would make userspace clients such
 *   as qemu think the export was read-only all along.
 * - TORUS_ERR_VOLUME_READ_ONLY -> EPERM, as the spec asks for writes to a
 *   read-only export.
 * - TORUS_ERR_STORE_BUSY -> ENOMEM: a transient lack of resources. The spec
 *   discourages ENOMEM, but it is the only value that says "not now" rather
 *   than "broken"; stores are expected to queue (bounded) before giving up.
 * - TORUS_ERR_STORE_CLOSED -> ESHUTDOWN (the daemon is going down).
 * - Anything unknown -> EIO.
 */
import { isTorusError } from '../errors/torus-error.js';
import type { ErrorCode } from '../errors/codes.js';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  REP_ERR_POLICY,
  REP_ERR_SHUTDOWN,
  REP_ERR_UNKNOWN,
} from './protocol.js';

const BY_TORUS_CODE: Partial<Record<ErrorCode, number>> = {
  TORUS_ERR_STORE_NO_SPACE: NBD_ENOSPC,
  TORUS_ERR_IO_OUT_OF_RANGE: NBD_EINVAL,
  TORUS_ERR_VOLUME_READ_ONLY: NBD_EPERM,
  TORUS_ERR_VOLUME_LOCK_LOST: NBD_EIO,
  TORUS_ERR_VOLUME_FENCED: NBD_EIO,
  TORUS_ERR_STORE_BUSY: NBD_ENOMEM,
  TORUS_ERR_STORE_CLOSED: NBD_ESHUTDOWN,
  TORUS_ERR_NBD_UNSUPPORTED: NBD_ENOTSUP,
};

/** Node/libuv error codes (fs, sockets) that have an NBD counterpart. */
const BY_SYSTEM_CODE: Record<string, number> = {
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
};

export function toNbdErrno(err: unknown): number {
  if (isTorusError(err)) return BY_TORUS_CODE[err.code] ?? NBD_EIO;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return BY_SYSTEM_CODE[code] ?? NBD_EIO;
  return NBD_EIO;
}

const ERRNO_NAMES: Record<number, string> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `E${errno}`;
}

/** Human text sent with an error; TorusErrors carry their code so users can look it up. */
export function errorMessage(err: unknown): string {
  if (isTorusError(err)) return err.toLine();
  if (err instanceof Error) return err.message;
  return String(err);
}

export interface OptionError {
  readonly type: number;
  readonly message: string;
}

/**
 * How a failed open/describe/list is answered during the handshake. The
 * message travels to the client (nbdinfo prints it), so a volume held
 * elsewhere names its holder.
 */
export function toOptionError(err: unknown): OptionError {
  const message = errorMessage(err);
  if (isTorusError(err)) {
    switch (err.code) {
      case 'TORUS_ERR_VOLUME_IN_USE':
      case 'TORUS_ERR_VOLUME_FENCED':
      case 'TORUS_ERR_VOLUME_READ_ONLY':
        return { type: REP_ERR_POLICY, message };
      case 'TORUS_ERR_STORE_CLOSED':
        return { type: REP_ERR_SHUTDOWN, message };
      default:
        return { type: REP_ERR_UNKNOWN, message };
    }
  }
  return { type: REP_ERR_UNKNOWN, message };
}
