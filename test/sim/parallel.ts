import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/**
 * Runs seeds in child processes, one per CPU the caller grants: each seed
 * is single-threaded and independent, so the only way to use a second core
 * is a second process. Children are `vite-node test/sim/cli.ts --json`;
 * each prints one JSON line per seed, which is all that crosses back.
 */

export interface SeedLine {
  readonly seed: number;
  readonly variant: string | null;
  readonly ok: boolean;
  readonly guarantee: string | null;
  /** Virtual time of the failure (ms), null when it passed. */
  readonly failedAtMs: number | null;
  /** The one-line report (with the replay command) when it failed. */
  readonly report: string | null;
  readonly hash: string;
  readonly ops: number;
  readonly cpuMs: number;
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const VITE_NODE = path.join(ROOT, 'node_modules/vite-node/vite-node.mjs');

/** Runs `seeds` split round-robin over `jobs` children; resolves with every seed's line, in seed order. */
export async function runSeedsInChildren(seeds: readonly number[], opts: { jobs: number; variant?: string | null; ops?: number; stopAtFirstFailure?: boolean }): Promise<SeedLine[]> {
  const jobs = Math.max(1, Math.min(opts.jobs, seeds.length));
  const parts: number[][] = Array.from({ length: jobs }, () => []);
  seeds.forEach((s, i) => parts[i % jobs]!.push(s));
  const results = await Promise.all(parts.map((p) => runChild(p, opts)));
  return results.flat().sort((a, b) => a.seed - b.seed);
}

function runChild(seeds: readonly number[], opts: { variant?: string | null; ops?: number; stopAtFirstFailure?: boolean }): Promise<SeedLine[]> {
  const args = [VITE_NODE, path.join(HERE, 'cli.ts'), '--json', '--list', seeds.join(',')];
  if (opts.variant) args.push('--variant', opts.variant);
  if (opts.ops !== undefined) args.push('--ops', String(opts.ops));
  if (opts.stopAtFirstFailure) args.push('--stop-at-first-failure');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: SeedLine[] = [];
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
      let nl: number;
      while ((nl = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        if (line.startsWith('{')) lines.push(JSON.parse(line) as SeedLine);
      }
    });
    child.stderr.on('data', (chunk: string) => {
      err += chunk;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      // 0: all passed, 1: some failed; anything else is the harness itself.
      if (code !== 0 && code !== 1) reject(new Error(`simulation child exited with ${code}: ${err.slice(-2000)}`));
      else resolve(lines);
    });
  });
}
