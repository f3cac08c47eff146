/**
 * Records the write calls the store's file helpers make (store/fs-async.ts:
 * fs.writeSync on the loop thread, fs.write through the pool) as
 * [length, file position], and passes each on unchanged. Undone by
 * vi.restoreAllMocks().
 */
import fs from 'node:fs';
import { vi } from 'vitest';

export function recordFileWrites(keep: (length: number, position: number) => boolean = () => true): [length: number, position: number][] {
  const calls: [number, number][] = [];
  const writeSync = fs.writeSync.bind(fs);
  const write = fs.write.bind(fs);
  vi.spyOn(fs, 'writeSync').mockImplementation(((f: number, b: Buffer, o: number, l: number, p: number) => {
    if (keep(l, p)) calls.push([l, p]);
    return writeSync(f, b, o, l, p);
  }) as typeof fs.writeSync);
  vi.spyOn(fs, 'write').mockImplementation(((f: number, b: Buffer, o: number, l: number, p: number, cb: (e: Error | null, n: number) => void) => {
    if (keep(l, p)) calls.push([l, p]);
    return write(f, b, o, l, p, cb);
  }) as unknown as typeof fs.write);
  return calls;
}
