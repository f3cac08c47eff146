import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';

export interface ExecResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a tool without blocking the event loop (the NBD server under test
 * lives in this process) and resolves with its exit code and output.
 */
let scratch: string | null = null;
/** A folder for third-party tools to run in, so they leave nothing in the repo. */
export function scratchDir(): string {
  if (scratch === null) scratch = mkdtempSync(path.join(os.tmpdir(), 'torus-tools-'));
  return scratch;
}

export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      // Tools run in a scratch folder: fio leaves *-verify.state files behind.
      { cwd: scratchDir(), env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number') {
          if (err.killed) return reject(new Error(`${cmd} ${args.join(' ')} timed out: ${stderr}`));
          return reject(err);
        }
        resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
      },
    );
  });
}

/** Like run() but fails with the tool's output when it exits non-zero. */
export async function runOk(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<ExecResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}
