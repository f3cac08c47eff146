import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';

const root = path.join(import.meta.dirname, '..', '..');

/** Node's internal modules loaded once `file` (under dist/) is imported, in a fresh node. */
async function internalsAfterImport(file: string): Promise<string[]> {
  const url = new URL(`file://${path.join(root, file)}`).href;
  const script = `await import(${JSON.stringify(url)}); process.stdout.write(JSON.stringify(process.moduleLoadList));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000 });
  return JSON.parse(stdout) as string[];
}

describe('what loading torusd costs', () => {
  beforeAll(() => ensureBuilt());

  // An ESM import of node:http reads its lazy WebSocket exports, which load
  // Node's bundled undici: about 3 MiB of torusd's RSS (src/util/node-http.ts).
  it('does not load the web client (undici) it never uses', async () => {
    const loaded = await internalsAfterImport('dist/src/daemon/torusd.js');
    expect(loaded.some((m) => m.includes('node:http') || m === 'NativeModule http')).toBe(true);
    expect(loaded.filter((m) => m.includes('undici'))).toEqual([]);
  });
});
