import net from 'node:net';

/**
 * Reads a TCP socket into buffers the caller chooses, instead of a fresh
 * 64 KiB Buffer per read. Node allocates one per read on every socket; as
 * external memory each one pushes V8 towards a full mark-compact, and at
 * 1 GB/s that is 16 000 of them a second. With this, a WRITE payload is read
 * straight into its final (pooled) buffer and headers into one reused
 * buffer: no allocation per read at all.
 *
 * Node offers this for sockets it creates itself (`new net.Socket({ onread
 * })`, documented), but not for sockets a net.Server accepts. The same
 * machinery is switched on for an accepted socket here: the three symbol
 * keys the documented option sets are found on a probe socket, set on the
 * accepted one, and its handle told to read into the first buffer, which is
 * what net.Socket's constructor does with `onread`. Should a Node release
 * change those internals, the probe finds nothing, enableDirectReads()
 * returns false, and the caller reads 'data' events as before (slower, still
 * correct); test/unit/socket-direct-reads.test.ts notices that.
 *
 * TORUS_DIRECT_READS=0 turns it off (to compare, or to rule it out).
 */

export interface DirectReadTarget {
  /** Where the next read goes; called after every read. Never empty. */
  buffer(): Buffer;
  /**
   * `n` bytes were read into `buf` (the buffer returned by the previous
   * buffer() call, from its start). Runs synchronously, before the next
   * read: bytes left in a reused buffer must be copied out before return.
   */
  onRead(n: number, buf: Buffer): void;
}

interface Keys {
  readonly kBuffer: symbol;
  readonly kBufferCb: symbol;
  readonly kBufferGen: symbol;
}

const keys: Keys | null = probe();

function probe(): Keys | null {
  try {
    const s = new net.Socket({ onread: { buffer: () => Buffer.alloc(1), callback: () => true } });
    const find = (d: string) => Object.getOwnPropertySymbols(s).find((x) => x.description === d);
    const kBuffer = find('kBuffer');
    const kBufferCb = find('kBufferCb');
    const kBufferGen = find('kBufferGen');
    s.destroy();
    if (kBuffer === undefined || kBufferCb === undefined || kBufferGen === undefined) return null;
    // The documented option must have set exactly what we will set.
    const check = new net.Socket({ onread: { buffer: () => Buffer.alloc(1), callback: () => true } });
    const ok = typeof (check as unknown as Record<symbol, unknown>)[kBufferGen] === 'function' && typeof (check as unknown as Record<symbol, unknown>)[kBufferCb] === 'function';
    check.destroy();
    return ok ? { kBuffer, kBufferCb, kBufferGen } : null;
  } catch {
    return null;
  }
}

/** Whether this Node lets us read accepted sockets into our own buffers. */
export function directReadsSupported(env: NodeJS.ProcessEnv = process.env): boolean {
  return keys !== null && env.TORUS_DIRECT_READS !== '0';
}

/**
 * Switches an accepted socket to direct reads; call it in the 'connection'
 * handler, before the first byte is read. Returns false (and changes
 * nothing) when unsupported: the socket then emits 'data' as usual.
 * With direct reads the socket emits no 'data' events; pause() and resume()
 * still stop and start reading, and 'end' still comes once flowing.
 */
export function enableDirectReads(socket: net.Socket, target: DirectReadTarget, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!directReadsSupported(env) || keys === null) return false;
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } })._handle;
  if (handle === undefined || handle === null || typeof handle.useUserBuffer !== 'function') return false;
  const s = socket as unknown as Record<symbol, unknown>;
  const first = target.buffer();
  s[keys.kBuffer] = first;
  s[keys.kBufferGen] = () => target.buffer();
  s[keys.kBufferCb] = (n: number, buf: Buffer) => {
    target.onRead(n, buf);
    return true;
  };
  handle.useUserBuffer(first);
  return true;
}
