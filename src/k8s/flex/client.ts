/**
 * The driver side in TypeScript (`torusblk flex`): the same contract and the
 * same forwarding as the static C driver (native/flex/torus-flex.c), for
 * nodes that have Node.js. Never throws: every outcome is one JSON object
 * and its exit code.
 */
import net from 'node:net';
import { TorusError } from '../../errors/torus-error.js';
import {
  decodeReply,
  encodeRequest,
  exitCodeFor,
  failure,
  FORWARDED_CALLS,
  formatResult,
  initResult,
  notSupported,
  REPLY_BYTES_MAX,
  type FlexResult,
} from './protocol.js';

/** Long enough for mkfs of a large volume; the C driver uses the same bound. */
export const CALL_TIMEOUT_MS = 15 * 60_000 + 30_000;

export interface DriverOutput {
  readonly code: number;
  /** Exactly what goes to stdout: one JSON object and a newline. */
  readonly stdout: string;
}

function out(result: FlexResult): DriverOutput {
  return { code: exitCodeFor(result.status), stdout: `${formatResult(result)}\n` };
}

function unreachable(socketPath: string, why: string): DriverOutput {
  return out(
    failure(new TorusError('TORUS_ERR_FLEX_UNREACHABLE', `cannot reach torusd at ${socketPath}: ${why}; is the torus DaemonSet running on this node?`)),
  );
}

export async function runFlexDriver(argv: readonly string[], socketPath: string, timeoutMs = CALL_TIMEOUT_MS): Promise<DriverOutput> {
  const call = argv[0];
  if (call === undefined) return out(failure(new TorusError('TORUS_ERR_FLEX_REQUEST_INVALID', 'usage: torus <init|mount DIR JSON|unmount DIR>')));
  if (call === 'init') return out(initResult());
  if (!FORWARDED_CALLS.includes(call)) return out(notSupported(call));
  let request: Buffer;
  try {
    request = encodeRequest(argv);
  } catch (err) {
    return out(failure(err));
  }
  return new Promise<DriverOutput>((resolve) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    let settled = false;
    const finish = (o: DriverOutput) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(o);
    };
    const socket = net.createConnection({ path: socketPath, allowHalfOpen: true });
    const timer = setTimeout(() => finish(unreachable(socketPath, `no answer within ${timeoutMs} ms`)), timeoutMs);
    socket.on('connect', () => socket.end(request));
    socket.on('data', (c: Buffer) => {
      bytes += c.length;
      if (bytes > REPLY_BYTES_MAX) return finish(unreachable(socketPath, `reply larger than ${REPLY_BYTES_MAX} bytes`));
      chunks.push(c);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => finish(unreachable(socketPath, err.code ?? err.message)));
    socket.on('end', () => {
      try {
        const { code, json } = decodeReply(Buffer.concat(chunks));
        finish({ code, stdout: `${json}\n` });
      } catch (err) {
        finish(out(failure(err)));
      }
    });
  });
}
