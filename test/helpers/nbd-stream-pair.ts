import { Duplex } from 'node:stream';

/**
 * Two in-process Duplex streams wired to each other, like a socket pair:
 * what one writes the other reads; end() is a half-close (FIN); destroy()
 * tears both down (like a reset).
 */
export function streamPair(): [Duplex, Duplex] {
  let a: Duplex | undefined;
  let b: Duplex | undefined;
  const make = (peer: () => Duplex): Duplex =>
    new Duplex({
      allowHalfOpen: true,
      read() {
        // the peer pushes
      },
      write(chunk: Buffer, _enc, cb) {
        const p = peer();
        // A copy, as a socket makes: the writer may reuse the buffer once
        // the write called back (pooled buffers do).
        if (!p.destroyed) p.push(Buffer.from(chunk));
        cb();
      },
      final(cb) {
        const p = peer();
        if (!p.destroyed) p.push(null);
        cb();
      },
      destroy(err, cb) {
        const p = peer();
        if (!p.destroyed) p.destroy();
        cb(err);
      },
    });
  a = make(() => b!);
  b = make(() => a!);
  return [a, b];
}
