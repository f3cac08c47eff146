import net from 'node:net';
import type { Duplex } from 'node:stream';
import { isPooled, releaseBuffer, retainBuffer } from '../util/buffer-pool.js';
import type { ByteQueue } from '../util/byte-queue.js';
import { enableDirectReads, type DirectReadTarget } from '../util/socket-direct-reads.js';
import type { PeerAddress } from './address.js';
import { READ_BUFFER_BYTES } from './protocol.js';

/**
 * Opens a byte stream to a peer. Injected so that tests (and fault layers)
 * can put something between client and server, e.g. a stream that damages
 * bytes; the default is a TCP connection.
 */
export type PeerConnector = (addr: PeerAddress) => Duplex;

/** Idle TCP connections between peers are probed so a dead peer is noticed. */
const KEEPALIVE_DELAY_MS = 10_000;

export const tcpConnector: PeerConnector = (addr) => {
  const socket = net.connect({ host: addr.host, port: addr.port });
  tuneSocket(socket);
  return socket;
};

/** Small frames (headers, acks) must not wait for Nagle's algorithm. */
export function tuneSocket(socket: Duplex): void {
  if (socket instanceof net.Socket) {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_DELAY_MS);
  }
}

/**
 * Batches the writes made in one tick into one writev: header and payload of
 * a frame, and the frames of requests issued together, leave in one syscall.
 * Writes leave in the order they were made: the peer client relies on it
 * for requests (FIFO on the wire).
 */
export class CorkedWriter {
  private corked = false;

  constructor(private readonly stream: Duplex) {}

  /** Writes the buffers in order; nothing after the stream ended. */
  write(...bufs: Buffer[]): void {
    const s = this.stream;
    if (s.destroyed || s.writableEnded) return;
    if (!this.corked) {
      this.corked = true;
      s.cork();
      process.nextTick(this.uncork);
    }
    for (const b of bufs) {
      if (b.length === 0) continue;
      // A pooled payload stays referenced while queued on the socket, even
      // if the request it belongs to timed out meanwhile.
      if (isPooled(b)) {
        retainBuffer(b);
        s.write(b, () => releaseBuffer(b));
      } else {
        s.write(b);
      }
    }
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.stream.uncork();
  };
}

/** What a connection's frame decoder offers its socket input (codec.ts FrameDecoder). */
export interface InputSink {
  readonly queue: ByteQueue;
  /** The unfilled rest of the payload being received, when a read may go straight there. */
  directBuffer(): Buffer | null;
  directFilled(n: number): void;
}


/**
 * Feeds a peer connection's decoder from its stream. On a TCP socket the
 * kernel reads straight into the payload being received and everything
 * else into one reused buffer (util/socket-direct-reads.ts): no allocation
 * per read and no copy of payloads out of a byte queue. Any other stream
 * (a test's stream pair, a fault layer) emits 'data' chunks as usual.
 *
 * `onInput` runs synchronously after each read; bytes still queued in the
 * reused buffer afterwards are copied out before the next read overwrites
 * them. While `copyEach` answers true (the handshake, whose messages are
 * kept as views for the proofs) every read is copied out at once instead.
 */
export function attachInput(stream: Duplex, sink: InputSink, onInput: () => void, copyEach: () => boolean): void {
  if (stream instanceof net.Socket) {
    let readBuf: Buffer | null = null;
    const target: DirectReadTarget = {
      buffer: () => sink.directBuffer() ?? (readBuf ??= Buffer.allocUnsafeSlow(READ_BUFFER_BYTES)),
      onRead: (n, buf) => {
        if (buf === readBuf) {
          sink.queue.push(copyEach() ? Buffer.from(buf.subarray(0, n)) : buf.subarray(0, n));
          onInput();
          sink.queue.detach();
        } else {
          sink.directFilled(n);
          onInput();
        }
      },
    };
    if (enableDirectReads(stream, target)) return;
  }
  stream.on('data', (chunk: Buffer) => {
    sink.queue.push(chunk);
    onInput();
  });
}
