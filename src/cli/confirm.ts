import type { Readable } from 'node:stream';
import { TorusError } from '../errors/torus-error.js';

/**
 * Reads one line from a terminal, at most `bytesMax` bytes and `timeoutMs`
 * long. Resolves null at end of input.
 */
export function readLine(input: Readable, bytesMax: number, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => finish(() => reject(new TorusError('TORUS_ERR_TIMEOUT', `no answer typed within ${Math.round(timeoutMs / 1000)} s`))), timeoutMs);
    const finish = (then: () => void): void => {
      clearTimeout(timer);
      input.off('data', onData);
      input.off('end', onEnd);
      input.off('error', onError);
      input.pause();
      then();
    };
    const onData = (chunk: Buffer | string): void => {
      buf += chunk.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) finish(() => resolve(buf.slice(0, nl).replace(/\r$/, '')));
      else if (buf.length > bytesMax) finish(() => resolve(buf.slice(0, bytesMax)));
    };
    const onEnd = (): void => finish(() => resolve(buf.length > 0 ? buf : null));
    const onError = (err: Error): void => finish(() => reject(err));
    input.on('data', onData);
    input.on('end', onEnd);
    input.on('error', onError);
    input.resume();
  });
}
