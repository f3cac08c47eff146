/**
 * The FlexVolume contract as kubelet sees it (pkg/volume/flexvolume), and the
 * wire format between the node's driver executable and torusd.
 *
 * kubelet runs `<driver> <call> [args...]`, reads stdout and stderr *combined*
 * as one JSON object, and looks at the exit code. So a driver prints exactly
 * one JSON object and nothing else, on either stream.
 *
 * The driver on the node (the static C program in native/flex/, or
 * `torusblk flex`) answers `init` and unsupported calls itself and forwards
 * `mount` and `unmount` to torusd over a unix socket:
 *
 *   request  = argv[1..] as NUL-terminated strings, then the client half-closes
 *   reply    = <exit code, decimal> "\n" <one JSON object> "\n", then torusd closes
 *
 * NUL-terminated strings need no escaping in C (argv cannot contain NUL), and
 * the decimal exit code in front spares the C program a JSON parser. Pure:
 * no I/O here.
 */
import { TorusError } from '../../errors/torus-error.js';

export type FlexStatus = 'Success' | 'Failure' | 'Not supported';

export interface FlexResult {
  readonly status: FlexStatus;
  readonly message?: string;
  readonly capabilities?: { readonly attach: boolean };
}

/** Calls the driver handles; everything else is "Not supported" (kubelet then uses its default). */
export const FLEX_CALLS = ['init', 'mount', 'unmount'] as const;
/** Calls that need torusd: the rest are answered by the driver alone. */
export const FORWARDED_CALLS: readonly string[] = ['mount', 'unmount'];

/** Where torusd listens and the driver connects unless TORUS_FLEX_SOCKET says otherwise. */
export const DEFAULT_FLEX_SOCKET = '/run/torus/flex.sock';
export const FLEX_SOCKET_ENV = 'TORUS_FLEX_SOCKET';

/**
 * kubelet's JSON carries options, pod metadata and base64 secrets: a few KiB
 * in practice. The bound keeps one client from making torusd buffer without
 * limit. The C driver has the same numbers (native/flex/torus-flex.c).
 */
export const REQUEST_BYTES_MAX = 1024 * 1024;
export const REQUEST_ARGS_MAX = 8;
export const REPLY_BYTES_MAX = 64 * 1024;

/** Success exits 0; Failure and Not supported exit 1, so the exit code never contradicts the status. */
export function exitCodeFor(status: FlexStatus): number {
  return status === 'Success' ? 0 : 1;
}

export function initResult(): FlexResult {
  // attach: false makes kubelet call only mount/unmount on the node: the
  // attachment lives in the node's torusd, there is no controller-side attach.
  return { status: 'Success', capabilities: { attach: false } };
}

export function notSupported(call: string): FlexResult {
  return { status: 'Not supported', message: `torus does not implement the FlexVolume call ${JSON.stringify(call)}` };
}

export function failure(err: unknown): FlexResult {
  if (err instanceof TorusError) return { status: 'Failure', message: err.toLine() };
  return { status: 'Failure', message: `TORUS_ERR_ASSERTION: ${err instanceof Error ? err.message : String(err)}` };
}

/**
 * The one line the driver prints. `status` always comes first: the C driver
 * checks `{"status":"Success"` against the exit code without a JSON parser.
 */
export function formatResult(result: FlexResult): string {
  const { status, ...rest } = result;
  return JSON.stringify({ status, ...rest });
}

export function encodeRequest(argv: readonly string[]): Buffer {
  if (argv.length === 0 || argv.length > REQUEST_ARGS_MAX) {
    throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', `a FlexVolume call has 1 to ${REQUEST_ARGS_MAX} arguments, not ${argv.length}`);
  }
  const parts: Buffer[] = [];
  for (const arg of argv) {
    if (arg.includes('\0')) throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', 'a FlexVolume argument contains a NUL byte');
    parts.push(Buffer.from(arg, 'utf8'), Buffer.alloc(1));
  }
  const out = Buffer.concat(parts);
  if (out.length > REQUEST_BYTES_MAX) {
    throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', `a FlexVolume call of ${out.length} bytes exceeds ${REQUEST_BYTES_MAX}`);
  }
  return out;
}

export function decodeRequest(buf: Buffer): string[] {
  if (buf.length === 0) throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', 'empty FlexVolume request');
  if (buf.length > REQUEST_BYTES_MAX) {
    throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', `a FlexVolume request of ${buf.length} bytes exceeds ${REQUEST_BYTES_MAX}`);
  }
  if (buf[buf.length - 1] !== 0) throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', 'a FlexVolume request must end with a NUL byte');
  const args: string[] = [];
  let start = 0;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] !== 0) continue;
    args.push(buf.toString('utf8', start, i));
    start = i + 1;
    if (args.length > REQUEST_ARGS_MAX) {
      throw new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', `a FlexVolume request has more than ${REQUEST_ARGS_MAX} arguments`);
    }
  }
  return args;
}

export function encodeReply(result: FlexResult): Buffer {
  const out = Buffer.from(`${exitCodeFor(result.status)}\n${formatResult(result)}\n`, 'utf8');
  // A reply past the bound would be cut by the C driver: shorten the message instead.
  if (out.length > REPLY_BYTES_MAX) {
    const message = (result.message ?? '').slice(0, REPLY_BYTES_MAX / 8) + ' [...]';
    return Buffer.from(`${exitCodeFor(result.status)}\n${formatResult({ ...result, message })}\n`, 'utf8');
  }
  return out;
}

/** Parses torusd's reply; the same checks as the C driver makes. */
export function decodeReply(buf: Buffer): { code: number; json: string; result: FlexResult } {
  const text = buf.toString('utf8');
  const m = /^(0|1)\n(\{[^\n]*\})\n?$/.exec(text);
  if (!m) throw new TorusError('TORUS_ERR_FLEX_UNREACHABLE', `torusd sent a malformed FlexVolume reply (${buf.length} bytes)`);
  const json = m[2]!;
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    throw new TorusError('TORUS_ERR_FLEX_UNREACHABLE', 'torusd sent a FlexVolume reply that is not JSON');
  }
  const status = (parsed as { status?: unknown }).status;
  if (status !== 'Success' && status !== 'Failure' && status !== 'Not supported') {
    throw new TorusError('TORUS_ERR_FLEX_UNREACHABLE', 'torusd sent a FlexVolume reply without a known status');
  }
  const code = Number(m[1]);
  if (code !== exitCodeFor(status)) throw new TorusError('TORUS_ERR_FLEX_UNREACHABLE', `torusd sent exit code ${code} with status ${status}`);
  return { code, json, result: parsed as FlexResult };
}
