/**
 * Checks one transmission request against the negotiated state before it is
 * handled. Pure: the session acts on the verdict.
 *
 * Choices where the spec leaves room (documented so clients know):
 * - FUA is accepted on every command, as the spec requires once SEND_FUA is
 *   advertised; it is ignored where nothing is written.
 * - FLUSH and DISC ignore their offset and length (the spec says they MUST
 *   be zero; being lenient costs nothing and no client sends garbage there).
 * - Zero-length READ/WRITE/TRIM/CACHE/WRITE_ZEROES/BLOCK_STATUS get EINVAL.
 * - The maximum payload applies to READ and WRITE only; TRIM, WRITE_ZEROES,
 *   CACHE and BLOCK_STATUS may cover any range inside the export, because
 *   the kernel sends large discards without asking for block sizes.
 * - Out-of-range WRITE and WRITE_ZEROES get ENOSPC, everything else EINVAL
 *   (what the spec recommends and nbdkit does).
 */
import type { RequestHeader } from './codec.js';
import {
  CMD_BLOCK_STATUS,
  CMD_DISC,
  CMD_FLAG_DF,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLAGS_KNOWN,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  REQUEST_MAGIC,
} from './protocol.js';

export interface ValidationContext {
  readonly exportSize: number;
  readonly readOnly: boolean;
  readonly structuredReplies: boolean;
  /** base:allocation was negotiated for the export in use. */
  readonly blockStatusContext: boolean;
  /** Largest READ or WRITE accepted (the advertised maximum block size). */
  readonly payloadBytesMax: number;
  /**
   * Largest WRITE payload the session will read and throw away to stay in
   * step after refusing the request; beyond it the stream is abandoned.
   */
  readonly payloadDiscardBytesMax: number;
}

export type Verdict =
  | { readonly kind: 'ok' }
  /** Reply with errno; a refused WRITE's payload must still be consumed. */
  | { readonly kind: 'error'; readonly errno: number; readonly reason: string }
  /** The byte stream cannot be trusted any more: close the connection. */
  | { readonly kind: 'fatal'; readonly reason: string };

const OK: Verdict = { kind: 'ok' };

function error(errno: number, reason: string): Verdict {
  return { kind: 'error', errno, reason };
}

function isWriteLike(type: number): boolean {
  return type === CMD_WRITE || type === CMD_TRIM || type === CMD_WRITE_ZEROES;
}

export function validateRequest(h: RequestHeader, ctx: ValidationContext): Verdict {
  if (h.magic !== REQUEST_MAGIC) return { kind: 'fatal', reason: 'bad request magic' };
  if (h.type === CMD_WRITE && h.length > ctx.payloadDiscardBytesMax) {
    return { kind: 'fatal', reason: 'write payload larger than the connection will read' };
  }
  if (h.type > CMD_BLOCK_STATUS) return error(NBD_EINVAL, 'unknown command');
  if ((h.flags & ~CMD_FLAGS_KNOWN) !== 0) return error(NBD_EINVAL, 'unknown command flags');
  if ((h.flags & CMD_FLAG_NO_HOLE) !== 0 && h.type !== CMD_WRITE_ZEROES) return error(NBD_EINVAL, 'NO_HOLE is only valid on WRITE_ZEROES');
  if ((h.flags & CMD_FLAG_FAST_ZERO) !== 0 && h.type !== CMD_WRITE_ZEROES) return error(NBD_EINVAL, 'FAST_ZERO is only valid on WRITE_ZEROES');
  if ((h.flags & CMD_FLAG_REQ_ONE) !== 0 && h.type !== CMD_BLOCK_STATUS) return error(NBD_EINVAL, 'REQ_ONE is only valid on BLOCK_STATUS');
  if ((h.flags & CMD_FLAG_DF) !== 0) {
    if (h.type !== CMD_READ) return error(NBD_EINVAL, 'DF is only valid on READ');
    if (!ctx.structuredReplies) return error(NBD_EINVAL, 'DF needs structured replies');
  }
  if (h.type === CMD_DISC || h.type === CMD_FLUSH) return OK;
  if (h.type === CMD_BLOCK_STATUS && !ctx.blockStatusContext) return error(NBD_EINVAL, 'BLOCK_STATUS without a negotiated meta context');
  if (ctx.readOnly && isWriteLike(h.type)) return error(NBD_EPERM, 'export is read-only');
  if (h.length === 0) return error(NBD_EINVAL, 'zero length');
  if ((h.type === CMD_READ || h.type === CMD_WRITE) && h.length > ctx.payloadBytesMax) {
    return error(NBD_EINVAL, 'length exceeds the maximum block size');
  }
  if (h.offset > ctx.exportSize || h.length > ctx.exportSize - h.offset) {
    const errno = h.type === CMD_WRITE || h.type === CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    return error(errno, 'offset and length beyond the end of the export');
  }
  return OK;
}

/** Bytes of payload that follow this request header on the wire. */
export function payloadBytes(h: RequestHeader): number {
  return h.type === CMD_WRITE ? h.length : 0;
}
