import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
// Not daemon/threadpool.ts: importing it would re-execute this test worker.
import { HEAP_GROWING_PERCENT, SEMI_SPACE_MAX_MB, THREADPOOL_SIZE } from '../../src/daemon/process-limits.js';

const probe = path.join(import.meta.dirname, '..', 'fixtures', 'threadpool-probe.mjs');

async function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ workers: number | null; env: string; execArgv: string[] }> {
  const { stdout } = await promisify(execFile)(process.execPath, [probe, ...args], { env, timeout: 30_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as { workers: number | null; env: string; execArgv: string[] };
}

function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.UV_THREADPOOL_SIZE;
  delete env.TORUS_PROCESS_SETUP;
  delete env.NODE_OPTIONS;
  return env;
}

describe('libuv thread pool size', () => {
  beforeAll(() => ensureBuilt());

  it('is the size torusd asks for when the module is loaded before the pool starts', async () => {
    const r = await run([], cleanEnv());
    expect(r.env).toBe(String(THREADPOOL_SIZE));
    if (r.workers !== null) expect(r.workers).toBe(THREADPOOL_SIZE);
  });

  it('is still that size when the pool had started first (the process re-executes itself)', async () => {
    const r = await run(['pool-started-first'], cleanEnv());
    expect(r.env).toBe(String(THREADPOOL_SIZE));
    if (r.workers !== null) expect(r.workers).toBe(THREADPOOL_SIZE);
  });

  it('leaves a size the user set alone', async () => {
    const r = await run([], { ...cleanEnv(), UV_THREADPOOL_SIZE: '3' });
    expect(r.env).toBe('3');
    if (r.workers !== null) expect(r.workers).toBe(3);
  });

  it('caps the young generation from process start, unless told otherwise', async () => {
    const r = await run([], cleanEnv());
    expect(r.execArgv).toContain(`--max-semi-space-size=${SEMI_SPACE_MAX_MB}`);
    expect(r.execArgv).toContain(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
    const mine = await run([], { ...cleanEnv(), NODE_OPTIONS: '--max-semi-space-size=2' });
    expect(mine.execArgv.join(' ')).not.toContain(`--max-semi-space-size=${SEMI_SPACE_MAX_MB}`);
    expect(mine.execArgv).toContain(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  });
});
