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
 * - TORUS_ERR_ASSERTION never gets here: a broken invariant is no answer
 *   for the client; the session reports it (util/invariant.ts) and the
 *   process stops.
 *
 * Option replies (toOptionError) follow the spec's meanings, because clients
 * print their own text for each reply and not ours (libnbd says "server has
 * no export named 'x'" for NBD_REP_ERR_UNKNOWN and shows our message only in
 * its debug output):
 * - NBD_REP_ERR_UNKNOWN only when the export does not exist (no such volume,
 *   or a name no volume can have).
 * - NBD_REP_ERR_SHUTDOWN when this server is going down (store closed).
 * - NBD_REP_ERR_POLICY for every other refusal to serve an export that
 *   exists: held by another writer, fenced, and failures to open it now
 *   (etcd unreachable or slow, a lost lease, lost races). The spec has no
 *   "try again later" reply; POLICY ("the server will not allow this") is
 *   the one that neither denies the export exists nor claims a shutdown,
 *   and it does not make clients fall back to another option as
 *   NBD_REP_ERR_UNSUP would. Our message, sent with every reply, starts
 *   with the stable TORUS_ERR_ code of the real cause.
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
  REP_ERR_INVALID,
  REP_ERR_PLATFORM,
  REP_ERR_POLICY,
  REP_ERR_SHUTDOWN,
  REP_ERR_TLS_REQD,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
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
  /**
   * The refusal is about the export (it does not exist, another process
   * holds it, it is read-only), not a failure of this server: logged at
   * info rather than warn.
   */
  readonly aboutExport: boolean;
}

/** Codes that mean the export does not exist. */
const EXPORT_MISSING: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['TORUS_ERR_NBD_EXPORT_UNKNOWN', 'TORUS_ERR_VOLUME_NOT_FOUND', 'TORUS_ERR_NAME_INVALID']);
/** Codes that refuse an export that exists, by rule rather than by failure. */
const EXPORT_HELD: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['TORUS_ERR_VOLUME_IN_USE', 'TORUS_ERR_VOLUME_FENCED', 'TORUS_ERR_VOLUME_READ_ONLY']);

/**
 * How a failed open/describe/list is answered during the handshake (see the
 * choices at the top of this file). The message travels to the client, so a
 * volume held elsewhere names its holder, and always carries a stable code.
 */
export function toOptionError(err: unknown): OptionError {
  if (isTorusError(err)) {
    const message = err.toLine();
    if (EXPORT_MISSING.has(err.code)) return { type: REP_ERR_UNKNOWN, message, aboutExport: true };
    if (err.code === 'TORUS_ERR_STORE_CLOSED') return { type: REP_ERR_SHUTDOWN, message, aboutExport: false };
    return { type: REP_ERR_POLICY, message, aboutExport: EXPORT_HELD.has(err.code) };
  }
  // Providers throw TorusErrors (export.ts); anything else is a bug in this
  // process, which says nothing about whether the export exists.
  return { type: REP_ERR_POLICY, message: `TORUS_ERR_ASSERTION: unexpected error: ${errorMessage(err)}`, aboutExport: false };
}

const OPTION_REPLY_NAMES: Record<number, string> = {
  [REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [REP_ERR_POLICY]: 'NBD_REP_ERR_POLICY',
  [REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [REP_ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [REP_ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
  [REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
};

/** The spec's name of an option error reply, for logs. */
export function optionReplyName(type: number): string {
  return OPTION_REPLY_NAMES[type] ?? `NBD_REP_ERR_0x${type.toString(16)}`;
}
