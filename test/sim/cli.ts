/**
 * `npm run sim -- [--seeds N] [--from S] [--seed S] [--ops N] [--variant NAME] [--verbose] [--log LEVEL]`
 *
 * Runs seeds of the whole-cluster simulation and prints one line per
 * failing seed with its replay command; exits 1 if any failed. With
 * --variant, runs a deliberately broken build (variants.ts) and reports
 * which seeds catch it.
 */
import { OPS_DEFAULT, describeFailure, runSeed } from './run-seed.js';
import { VARIANTS, variantNames, type VariantName } from './variants.js';
import { realNode } from './real-node.js';

interface Args {
  seeds: number;
  from: number;
  seed: number | null;
  ops: number;
  variant: VariantName | null;
  verbose: boolean;
  log: string | undefined;
}

function parse(argv: readonly string[]): Args {
  const a: Args = { seeds: 20, from: 1, seed: null, ops: OPS_DEFAULT, variant: null, verbose: false, log: undefined };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    const int = (): number => {
      const n = Number(v());
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${k} needs a whole number`);
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
      case '--ops':
        a.ops = int();
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
  const seeds = args.seed !== null ? [args.seed] : Array.from({ length: args.seeds }, (_, i) => args.from + i);
  const variant = args.variant === null ? null : VARIANTS[args.variant];
  let failed = 0;
  const started = performance.now();
  for (const seed of seeds) {
    const t0 = performance.now();
    const r = await runSeed({
      seed,
      ops: args.ops,
      factory: variant?.factory ?? realNode,
      variant: args.variant,
      verbose: args.verbose,
      ...(args.log ? { logLevel: args.log } : {}),
      ...(variant?.wrapIo ? { wrapIo: variant.wrapIo } : {}),
    });
    const ms = performance.now() - t0;
    if (!r.ok) {
      failed++;
      process.stdout.write(`${describeFailure(r)}\n`);
      if (args.seed !== null) {
        process.stdout.write('  last events:\n');
        for (const line of r.tail) process.stdout.write(`    ${line}\n`);
        process.stdout.write('  state at the failure:\n');
        for (const line of r.diagnosis) process.stdout.write(`    ${line}\n`);
      }
    } else if (args.seed !== null || args.verbose) {
      process.stdout.write(`seed ${seed}: ok (${r.opsIssued} requests, ${(r.simMs / 1000).toFixed(1)} s simulated, ${r.events} events, hash ${r.hash}, faults ${JSON.stringify(r.faults)}) in ${ms.toFixed(0)} ms\n`);
    }
  }
  const total = (performance.now() - started) / 1000;
  process.stdout.write(`sim: ${seeds.length - failed} of ${seeds.length} seeds passed${args.variant ? ` (variant ${args.variant})` : ''} in ${total.toFixed(1)} s\n`);
  return failed > 0 ? 1 : 0;
}

process.exitCode = await main();
