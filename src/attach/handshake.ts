/**
 * The client half of the NBD handshake, run by torusd on the kernel's end of
 * a socket pair before handing that end to the kernel: the kernel's nbd
 * driver starts in the transmission phase, so (like nbd-client) someone must
 * negotiate first. Fixed newstyle, NBD_OPT_GO; returns the export's size and
 * transmission flags, which go to the kernel as SIZE_BYTES and SERVER_FLAGS.
 * The server half is our ordinary NBD session (src/nbd/session.ts).
 */
import type { Duplex } from 'node:stream';
import { TorusError } from '../errors/torus-error.js';
import {
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  GREETING_BYTES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  INFO_EXPORT,
  NBD_MAGIC_HI,
  NBD_MAGIC_LO,
  OPT_GO,
  OPTION_REPLY_HEADER_BYTES,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
  REP_ACK,
  REP_INFO,
} from '../nbd/protocol.js';

export interface NegotiatedExport {
  readonly sizeBytes: number;
  readonly flags: number;
}

/** Encodes the client's side up to and including NBD_OPT_GO. Pure. */
export function encodeClientGo(exportName: string): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
  const opt = Buffer.alloc(16 + 4 + name.length + 2);
  opt.writeUInt32BE(IHAVEOPT_HI, 0);
  opt.writeUInt32BE(IHAVEOPT_LO, 4);
  opt.writeUInt32BE(OPT_GO, 8);
  opt.writeUInt32BE(4 + name.length + 2, 12);
  opt.writeUInt32BE(name.length, 16);
  name.copy(opt, 20);
  opt.writeUInt16BE(0, 20 + name.length); // no extra info requests
  return Buffer.concat([flags, opt]);
}

const HANDSHAKE_BYTES_MAX = 64 * 1024;

/**
 * Reads the server's greeting and GO replies from `stream` until the ACK.
 * Leaves the stream paused with nothing read past the handshake.
 */
export function clientHandshake(stream: Duplex, exportName: string, timeoutMs: number): Promise<NegotiatedExport> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    let greeted = false;
    let size: number | null = null;
    let flags = 0;
    const fail = (why: string) => {
      cleanup();
      reject(new TorusError('TORUS_ERR_NBD_PROTOCOL', `handshake with our own NBD server for "${exportName}": ${why}`));
    };
    const timer = setTimeout(() => fail(`no answer within ${timeoutMs} ms`), timeoutMs);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > HANDSHAKE_BYTES_MAX) return fail('handshake too long');
      if (!greeted) {
        if (buf.length < GREETING_BYTES) return;
        if (buf.readUInt32BE(0) !== NBD_MAGIC_HI || buf.readUInt32BE(4) !== NBD_MAGIC_LO || buf.readUInt32BE(8) !== IHAVEOPT_HI || buf.readUInt32BE(12) !== IHAVEOPT_LO) {
          return fail('bad greeting magic');
        }
        if ((buf.readUInt16BE(16) & FLAG_FIXED_NEWSTYLE) === 0) return fail('server is not fixed newstyle');
        buf = buf.subarray(GREETING_BYTES);
        greeted = true;
        stream.write(encodeClientGo(exportName));
      }
      while (buf.length >= OPTION_REPLY_HEADER_BYTES) {
        if (buf.readUInt32BE(0) !== OPTION_REPLY_MAGIC_HI || buf.readUInt32BE(4) !== OPTION_REPLY_MAGIC_LO) return fail('bad option reply magic');
        const type = buf.readUInt32BE(12);
        const len = buf.readUInt32BE(16);
        if (buf.length < OPTION_REPLY_HEADER_BYTES + len) return;
        const data = buf.subarray(OPTION_REPLY_HEADER_BYTES, OPTION_REPLY_HEADER_BYTES + len);
        buf = buf.subarray(OPTION_REPLY_HEADER_BYTES + len);
        if (type === REP_INFO && data.length >= 12 && data.readUInt16BE(0) === INFO_EXPORT) {
          size = Number(data.readBigUInt64BE(2));
          flags = data.readUInt16BE(10);
        } else if (type === REP_ACK) {
          if (size === null) return fail('GO acknowledged without the export size');
          if (buf.length > 0) return fail('bytes after the handshake');
          cleanup();
          resolve({ sizeBytes: size, flags });
          return;
        } else if ((type & 0x80000000) !== 0) {
          // The server's message says why (volume in use, not found, ...).
          return fail(data.toString('utf8') || `option error ${type}`);
        }
      }
    };
    const onEnd = () => fail('connection closed');
    const cleanup = () => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.pause();
    };
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('close', onEnd);
  });
}
