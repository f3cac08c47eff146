/**
 * npm run sim -- [--seeds N] [--from S] [--seed S] [--ops N] [--variant NAME]
 *                [--jobs N] [--verbose] [--log LEVEL] [--suspend] [--readers] [--etcd-delays]
 *                [--stops] [--etcd-flaky]
 *
 * Runs seeds of the whole-cluster simulation and prints one line per
 * failing seed with its replay command; exits 1 if any failed. --seed S
 * replays one seed and, when it fails, prints its last events and the
 * cluster's state at the failure. --variant runs a deliberately broken
 * build (variants.ts). --jobs N spreads seeds over N processes. --verbose
 * prints every event; --log LEVEL the peers' own logs. --suspend pauses
 * the old writer of half the lease takeovers as a suspended VM, whose
 * clocks stop too. --readers adds read-only opens on random peers that
 * read while the writers run (readers.ts). --etcd-delays gives every etcd
 * call a few seeded ms on the wire each way, so calls are served and
 * answered out of order, as by a real etcd. --stops makes half the
 * crashes orderly stops (SIGTERM: clients answered and let go, locks and
 * the lease released) followed by a restart. --etcd-flaky makes half the
 * etcd outages and peer cuts flaky windows: each call fails unapplied or
 * is applied with its answer lost, one in ten each.
 *
 * For the test suite (parallel.ts): --json prints one JSON line per seed,
 * --list S1,S2,... names the seeds, --stop-at-first-failure ends early.
 */
import { OPS_DEFAULT, describeFailure, runSeed } from './run-seed.js';
import { crashLine, runSeedsInChildren, type SeedLine } from './parallel.js';
import { realNode } from './real-node.js';
import { VARIANTS, variantNames, type VariantName } from './variants.js';

interface Args {
  seeds: number;
  from: number;
  seed: number | null;
  list: number[] | null;
  ops: number;
  variant: VariantName | null;
  jobs: number;
  verbose: boolean;
  log: string | undefined;
  json: boolean;
  stopAtFirstFailure: boolean;
  suspend: boolean;
  readers: boolean;
  etcdDelays: boolean;
  stops: boolean;
  etcdFlaky: boolean;
}

function parse(argv: readonly string[]): Args {
  const a: Args = { seeds: 20, from: 1, seed: null, list: null, ops: OPS_DEFAULT, variant: null, jobs: 1, verbose: false, log: undefined, json: false, stopAtFirstFailure: false, suspend: false, readers: false, etcdDelays: false, stops: false, etcdFlaky: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    const int = (s = v()): number => {
      const n = Number(s);
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${k} needs whole numbers, not ${s}`);
      return n;
    };
    switch (k) {
      case '--seeds':
        a.seeds = int();
        break;
      case '--from':
        a.from = int();
        break;
      case '--seed':
        a.seed = int();
        break;
      case '--list':
        a.list = v().split(',').map((s) => int(s));
        break;
      case '--ops':
        a.ops = int();
        break;
      case '--jobs':
        a.jobs = Math.max(1, int());
        break;
      case '--variant': {
        const name = v();
        if (!variantNames().includes(name as VariantName)) throw new Error(`unknown variant ${name}; known: ${variantNames().join(', ')}`);
        a.variant = name as VariantName;
        break;
      }
      case '--verbose':
        a.verbose = true;
        break;
      case '--log':
        a.log = v();
        break;
      case '--json':
        a.json = true;
        break;
      case '--suspend':
        a.suspend = true;
        break;
      case '--readers':
        a.readers = true;
        break;
      case '--etcd-delays':
        a.etcdDelays = true;
        break;
      case '--stops':
        a.stops = true;
        break;
      case '--etcd-flaky':
        a.etcdFlaky = true;
        break;
      case '--stop-at-first-failure':
        a.stopAtFirstFailure = true;
        break;
      default:
        throw new Error(`unknown argument ${k}`);
    }
  }
  return a;
}

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`sim: ${(err as Error).message}\n`);
    return 2;
  }
  const seeds = args.seed !== null ? [args.seed] : (args.list ?? Array.from({ length: args.seeds }, (_, i) => args.from + i));
  const started = performance.now();
  if (args.jobs > 1 && args.seed === null) {
    const lines = await runSeedsInChildren(seeds, { jobs: args.jobs, variant: args.variant, ops: args.ops, suspend: args.suspend, readers: args.readers, etcdDelays: args.etcdDelays, stops: args.stops, etcdFlaky: args.etcdFlaky });
    const failed = lines.filter((l) => !l.ok);
    for (const l of failed) process.stdout.write(`${l.report}\n`);
    summary(seeds.length, failed.length, args.variant, started);
    return failed.length > 0 ? 1 : 0;
  }
  const variant = args.variant === null ? null : VARIANTS[args.variant];
  let failed = 0;
  for (const seed of seeds) {
    const c0 = process.cpuUsage();
    let r: Awaited<ReturnType<typeof runSeed>>;
    try {
      r = await runSeed({
        seed,
        ops: args.ops,
        factory: variant?.factory ?? realNode,
        variant: args.variant,
        verbose: args.verbose,
        suspend: args.suspend,
        readers: args.readers,
        etcdDelays: args.etcdDelays,
        stops: args.stops,
        etcdFlaky: args.etcdFlaky,
        ...(args.log ? { logLevel: args.log } : {}),
      });
    } catch (err) {
      // The harness itself threw (a model assertion, a bug in the
      // simulation): the seed failed, and the seeds after it still run.
      failed++;
      const line = crashLine(seed, args.variant, args.ops, err, args);
      if (args.json) process.stdout.write(`${JSON.stringify(line)}\n`);
      else process.stdout.write(`${line.report}\n${args.seed !== null && err instanceof Error && err.stack ? `${err.stack}\n` : ''}`);
      if (args.stopAtFirstFailure) break;
      continue;
    }
    const c = process.cpuUsage(c0);
    const cpuMs = (c.user + c.system) / 1000;
    if (!r.ok) failed++;
    if (args.json) {
      const line: SeedLine = { seed, variant: args.variant, ok: r.ok, guarantee: r.failure?.guarantee ?? null, failedAtMs: r.failure?.timeMs ?? null, report: r.ok ? null : describeFailure(r), hash: r.hash, ops: r.opsIssued, cpuMs: Math.round(cpuMs), faults: r.faults };
      process.stdout.write(`${JSON.stringify(line)}\n`);
    } else if (!r.ok) {
      process.stdout.write(`${describeFailure(r)}\n`);
      if (args.seed !== null) {
        process.stdout.write('  last events:\n');
        for (const line of r.tail) process.stdout.write(`    ${line}\n`);
        process.stdout.write('  state at the failure:\n');
        for (const line of r.diagnosis) process.stdout.write(`    ${line}\n`);
      }
    } else if (args.seed !== null || args.verbose) {
      process.stdout.write(`seed ${seed}: ok (${r.opsIssued} requests, ${(r.simMs / 1000).toFixed(1)} s simulated, ${r.events} events, hash ${r.hash}, faults ${JSON.stringify(r.faults)}, checked ${JSON.stringify(r.coverage)}) in ${cpuMs.toFixed(0)} ms of CPU\n`);
    }
    if (!r.ok && args.stopAtFirstFailure) break;
  }
  if (!args.json) summary(seeds.length, failed, args.variant, started);
  return failed > 0 ? 1 : 0;
}

function summary(total: number, failed: number, variant: string | null, started: number): void {
  const s = (performance.now() - started) / 1000;
  process.stdout.write(`sim: ${total - failed} of ${total} seeds passed${variant ? ` (variant ${variant})` : ''} in ${s.toFixed(1)} s\n`);
}

// A run whose promises nobody resolves (an await on the simulated clock
// outside the simulated loop) empties the event loop, and the process
// would end with exit code 0 and no summary: a failure taken for a pass.
let finished = false;
process.on('beforeExit', () => {
  if (finished) return;
  process.stderr.write('sim: the run stopped before it finished: the event loop emptied while it awaited something nothing will resolve\n');
  process.exitCode = 3;
});
process.exitCode = await main();
finished = true;
