import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { OPS_DEFAULT, replayCommand, type SimModes } from './run-seed.js';

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
  /** How many faults of each kind the seed applied (absent on a crash line). */
  readonly faults?: Readonly<Record<string, number>>;
}

/** What each child is told: the variant, the request count and the modes (run-seed.ts). */
type ChildOptions = SimModes & { variant?: string | null; ops?: number; stopAtFirstFailure?: boolean };

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const VITE_NODE = path.join(ROOT, 'node_modules/vite-node/vite-node.mjs');

/** Error text kept from a child's stderr for a seed it could not finish. */
const STDERR_TAIL_CHARS = 2_000;

/**
 * The line of a seed whose run threw or whose process died before it
 * reported: a failure like any other, with the error and the replay
 * command, so no seed vanishes from a run.
 */
export function crashLine(seed: number, variant: string | null, ops: number | undefined, err: unknown, modes: SimModes = {}): SeedLine {
  const why = err instanceof Error ? `${(err as { code?: string }).code ?? err.name}: ${err.message}` : String(err);
  const replay = replayCommand(seed, variant, ops ?? OPS_DEFAULT, modes);
  return { seed, variant, ok: false, guarantee: 'crash', failedAtMs: null, report: `seed ${seed}${variant ? ` (variant ${variant})` : ''}: crash: the run did not finish: ${why}\n  replay: ${replay}`, hash: '', ops: 0, cpuMs: 0 };
}

/**
 * Runs `seeds` split round-robin over `jobs` children; resolves with every
 * seed's line, in seed order. A child that dies costs the seed it was on
 * (reported as a crash with its stderr), never the seeds after it: they
 * run in a new child.
 */
export async function runSeedsInChildren(seeds: readonly number[], opts: ChildOptions & { jobs: number }): Promise<SeedLine[]> {
  const jobs = Math.max(1, Math.min(opts.jobs, seeds.length));
  const parts: number[][] = Array.from({ length: jobs }, () => []);
  seeds.forEach((s, i) => parts[i % jobs]!.push(s));
  const results = await Promise.all(parts.map((p) => runPart(p, opts)));
  return results.flat().sort((a, b) => a.seed - b.seed);
}

async function runPart(seeds: readonly number[], opts: ChildOptions): Promise<SeedLine[]> {
  const out: SeedLine[] = [];
  let left = [...seeds];
  // Each round either finishes or costs one seed, so this ends.
  while (left.length > 0) {
    const { lines, code, stderr } = await runChild(left, opts);
    out.push(...lines);
    const done = new Set(lines.map((l) => l.seed));
    left = left.filter((s) => !done.has(s));
    if (left.length === 0) break;
    // A child told to stop at a failure leaves the rest unrun on purpose.
    if (opts.stopAtFirstFailure && lines.some((l) => !l.ok)) break;
    // The child ran its seeds in order: the first one without a line is where it died.
    const [lost, ...rest] = left;
    out.push(crashLine(lost!, opts.variant ?? null, opts.ops, new Error(`the simulation process exited with ${code} on this seed: ${stderr.slice(-STDERR_TAIL_CHARS).trim()}`), opts));
    if (opts.stopAtFirstFailure) break;
    left = rest;
  }
  return out;
}

function runChild(seeds: readonly number[], opts: ChildOptions): Promise<{ lines: SeedLine[]; code: number | null; stderr: string }> {
  const args = [VITE_NODE, path.join(HERE, 'cli.ts'), '--json', '--list', seeds.join(',')];
  if (opts.variant) args.push('--variant', opts.variant);
  if (opts.ops !== undefined) args.push('--ops', String(opts.ops));
  if (opts.stopAtFirstFailure) args.push('--stop-at-first-failure');
  if (opts.suspend === true) args.push('--suspend');
  if (opts.readers === true) args.push('--readers');
  if (opts.etcdDelays === true) args.push('--etcd-delays');
  if (opts.stops === true) args.push('--stops');
  if (opts.etcdFlaky === true) args.push('--etcd-flaky');
  return new Promise((resolve) => {
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
        if (!line.startsWith('{')) continue;
        try {
          lines.push(JSON.parse(line) as SeedLine);
        } catch {
          // A line cut by the child's death: its seed counts as not finished.
        }
      }
    });
    child.stderr.on('data', (chunk: string) => {
      err = (err + chunk).slice(-4 * STDERR_TAIL_CHARS);
    });
    child.on('error', (e) => resolve({ lines, code: null, stderr: `${err}\n${e.message}` }));
    child.on('close', (code, signal) => resolve({ lines, code: code ?? null, stderr: signal ? `${err}\nkilled by ${signal}` : err }));
  });
}
