/** Per-connection limits of the NBD server; every one is configurable. */
import { TorusError } from '../errors/torus-error.js';
import { PAYLOAD_BYTES_MAX_DEFAULT } from './protocol.js';

export interface NbdLimits {
  /** From accept to the end of option haggling. */
  readonly handshakeTimeoutMs: number;
  /** Options one connection may send (nbdinfo --list sends ~2 per export). */
  readonly optionsMax: number;
  /** Largest option payload read; bigger ones are skipped and answered NBD_REP_ERR_TOO_BIG. */
  readonly optionBytesMax: number;
  /** Meta context queries in one LIST/SET_META_CONTEXT. */
  readonly metaContextQueriesMax: number;
  /** Requests being handled at once; at the limit the socket is not read. */
  readonly inflightMax: number;
  /** READ lengths plus WRITE payloads being handled at once; at the limit the socket is not read. */
  readonly inflightBytesMax: number;
  /**
   * The same over every connection of the server (nbd/byte-budget.ts): a
   * request that does not fit waits with its payload unread. What the NBD
   * layer holds stays at max(serverInflightBytesMax, payloadBytesMax)
   * however many connections there are.
   */
  readonly serverInflightBytesMax: number;
  /**
   * Reply bytes queued on the socket above which no new request is parsed.
   * Requests already parsed still reply, so queued reply bytes stay below
   * max(replyBytesMax, the stream's high-water mark) + inflightBytesMax.
   */
  readonly replyBytesMax: number;
  /** Largest READ/WRITE (advertised as the maximum block size). */
  readonly payloadBytesMax: number;
  /**
   * Largest refused WRITE payload still read (and dropped) to keep the
   * stream in step; a longer one closes the connection.
   */
  readonly payloadDiscardBytesMax: number;
  /** How long a closing connection may take to answer in-flight requests and close. */
  readonly closeTimeoutMs: number;
}

export const DEFAULT_NBD_LIMITS: NbdLimits = Object.freeze({
  handshakeTimeoutMs: 30_000,
  optionsMax: 1024,
  optionBytesMax: 64 * 1024,
  metaContextQueriesMax: 128,
  inflightMax: 64,
  inflightBytesMax: 64 * 1024 * 1024,
  serverInflightBytesMax: 32 * 1024 * 1024,
  replyBytesMax: 16 * 1024 * 1024,
  payloadBytesMax: PAYLOAD_BYTES_MAX_DEFAULT,
  payloadDiscardBytesMax: 128 * 1024 * 1024,
  closeTimeoutMs: 10_000,
});

/** Fills in defaults and rejects nonsense (zero, negative, fractional, max payload above 2^32-8). */
export function resolveLimits(partial: Partial<NbdLimits> | undefined): NbdLimits {
  const out = { ...DEFAULT_NBD_LIMITS, ...stripUndefined(partial ?? {}) };
  for (const [k, v] of Object.entries(out)) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `NBD limit ${k} must be a positive integer, got ${String(v)}`);
    }
  }
  if (out.payloadBytesMax > 0xffff_fff8) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', 'NBD limit payloadBytesMax must fit one structured reply chunk (<= 2^32-8)');
  }
  if (out.payloadDiscardBytesMax < out.payloadBytesMax) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', 'NBD limit payloadDiscardBytesMax must be at least payloadBytesMax');
  }
  return Object.freeze(out);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
