import { isBrokenCircuitError, isTaskCancelledError } from 'cockatiel';
import {
  ClientClosedError,
  ClientRuntimeError,
  EtcdLeaseInvalidError,
  EtcdWatchStreamEnded,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
} from 'etcd3';
import { TorusError } from '../errors/torus-error.js';
import type { Clock } from '../util/clock.js';

/**
 * The one place where errors of the etcd client become TorusErrors. Anything
 * that means "etcd did not answer" is TORUS_ERR_ETCD_UNAVAILABLE and names the
 * endpoints; an answer that is an error is TORUS_ERR_ETCD_FAILED.
 */

export interface EtcdCallContext {
  /** For messages: `127.0.0.1:2379` or `a:2379,b:2379`. */
  readonly endpoints: string;
  /** Hard bound on one logical call, retries included. */
  readonly timeoutMs: number;
  readonly clock: Clock;
}

// gRPC status codes that mean the server was not reached or did not answer.
const GRPC_UNAVAILABLE_CODES = new Set([1 /* CANCELLED */, 4 /* DEADLINE_EXCEEDED */, 14 /* UNAVAILABLE */]);
const NET_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN']);

function isUnavailable(err: unknown): boolean {
  if (
    err instanceof GRPCUnavailableError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof GRPCCancelledError ||
    err instanceof ClientClosedError ||
    err instanceof ClientRuntimeError ||
    err instanceof EtcdWatchStreamEnded ||
    isBrokenCircuitError(err) ||
    isTaskCancelledError(err)
  ) {
    return true;
  }
  if (typeof err === 'object' && err !== null) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'number' && GRPC_UNAVAILABLE_CODES.has(code)) return true;
    if (typeof code === 'string' && NET_ERRNOS.has(code)) return true;
  }
  return false;
}

/** The useful part of a gRPC message: no status prefix, no resolver notes. */
export function errorReason(err: unknown): string {
  let text = err instanceof Error ? (err.message.split('\n')[0] ?? err.name) : String(err);
  text = text.replace(/^\d+ [A-Z_]+: /, '').replace(/\.?\s*Resolution note:.*$/, '');
  if (/ECONNREFUSED/.test(text)) return 'connection refused';
  return text.trim() || (err instanceof Error ? err.name : 'unknown error');
}

export function toTorusError(err: unknown, ctx: Pick<EtcdCallContext, 'endpoints'>, op: string): TorusError {
  if (err instanceof TorusError) return err;
  if (err instanceof EtcdLeaseInvalidError) {
    return new TorusError('TORUS_ERR_SESSION_LOST', `${op}: the session's etcd lease has expired or was revoked`, { cause: err });
  }
  if (isUnavailable(err)) {
    return new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd at ${ctx.endpoints} is unavailable (${op}): ${errorReason(err)}`, {
      cause: err,
      details: { endpoints: ctx.endpoints, op },
    });
  }
  return new TorusError('TORUS_ERR_ETCD_FAILED', `etcd at ${ctx.endpoints} failed ${op}: ${errorReason(err)}`, {
    cause: err,
    details: { endpoints: ctx.endpoints, op },
  });
}

/**
 * Runs one etcd call (or a short sequence of them) under a hard deadline and
 * maps its errors. The client's own per-attempt deadlines should fire first;
 * this bound is what guarantees "never hangs" whatever the client does.
 */
export async function withEtcd<T>(ctx: EtcdCallContext, op: string, fn: () => Promise<T>): Promise<T> {
  let timer: { cancel(): void } | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = ctx.clock.setTimeout(() => {
      reject(
        new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd at ${ctx.endpoints} did not answer ${op} within ${ctx.timeoutMs} ms`, {
          details: { endpoints: ctx.endpoints, op, timeoutMs: ctx.timeoutMs },
        }),
      );
    }, ctx.timeoutMs);
  });
  const call = fn();
  try {
    return await Promise.race([call, timeout]);
  } catch (err) {
    throw toTorusError(err, ctx, op);
  } finally {
    timer?.cancel();
    // A call that lost the race may still reject later; nobody awaits it.
    call.catch(() => undefined);
  }
}
