// The bench's knobs, from the command line and the environment (a flag wins
// over its variable). Pure: the caller passes argv and env.

export const ALL_TARGETS = ['nbdkit-file', 'nbdkit-memory', 'nbdkit-null', 'torusd', 'torusd-r2'];

export const USAGE = `Usage: npm run bench -- [options]   (or: bash test/bench/run.sh [options])

  --quick               development run: 1 round of 3 s jobs on 256 MiB devices, a 10 s
                        idle window, one re-replication (env BENCH_QUICK=1)
  --json FILE           write every figure, round by round, to FILE
                        (env BENCH_OUT; default test/bench/results/latest.json)
  --rounds N            rounds of every job on every target, interleaved
                        (env BENCH_ROUNDS; default 3, 1 with --quick)
  --seconds N           seconds per timed fio job (env BENCH_SECONDS; default 20, 3 with --quick)
  --ramp N              unmeasured fio --ramp_time per timed job (env BENCH_RAMP_SECONDS; default 2, 1 with --quick)
  --size-mib N          what every target exports, MiB (env BENCH_SIZE_MIB; default 1024, 256 with --quick)
  --idle-seconds N      window over which torusd's idle CPU is averaged, 0 to skip
                        (env BENCH_IDLE_SECONDS; default 60, 10 with --quick)
  --targets LIST        comma-separated subset of ${ALL_TARGETS.join(',')} (env BENCH_TARGETS)
  --rebuild MODE        both | fast | 0: re-replication at a rate that is not the limit and
                        at torusd's default, only the first, or none
                        (env BENCH_REBUILD; default both, fast with --quick)
  --strict              exit 3 when an issue-7 target is missed (env BENCH_STRICT=1)
  --keep                keep the run folder: logs, fio output, data (env BENCH_KEEP=1)
  -h, --help            this text

More knobs, environment only: BENCH_REBUILD_RATE (10GiB), BENCH_REBUILD_TIMEOUT_S (1800),
BENCH_QUIET_TIMEOUT_S (300), BENCH_TORUS_SIZE (8GiB), BENCH_DIR (.local/bench).
Exit codes: 0 done; 1 a replication check failed or the bench broke; 2 bad options;
3 --strict and a target missed.`;

/** Flags that take a value -> the environment variable they stand for. */
const VALUE_FLAGS = {
  '--json': 'BENCH_OUT',
  '--rounds': 'BENCH_ROUNDS',
  '--seconds': 'BENCH_SECONDS',
  '--ramp': 'BENCH_RAMP_SECONDS',
  '--idle-seconds': 'BENCH_IDLE_SECONDS',
  '--size-mib': 'BENCH_SIZE_MIB',
  '--targets': 'BENCH_TARGETS',
  '--rebuild': 'BENCH_REBUILD',
};
const BOOLEAN_FLAGS = { '--quick': 'BENCH_QUICK', '--strict': 'BENCH_STRICT', '--keep': 'BENCH_KEEP' };

/** argv -> the environment it stands for, on top of env; { help: true } for -h. */
export function parseArgs(argv, env = {}) {
  const out = { ...env };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') return { help: true, env: out };
    const eq = arg.indexOf('=');
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    if (flag in BOOLEAN_FLAGS) {
      if (eq > 0) throw new Error(`${flag} takes no value`);
      out[BOOLEAN_FLAGS[flag]] = '1';
    } else if (flag in VALUE_FLAGS) {
      let value;
      if (eq > 0) value = arg.slice(eq + 1);
      else {
        value = argv[++i];
        if (value === undefined || value.startsWith('--')) throw new Error(`${flag} needs a value`);
      }
      out[VALUE_FLAGS[flag]] = value;
    } else {
      throw new Error(`unknown option '${arg}'`);
    }
  }
  return { help: false, env: out };
}

export function resolveConfig(env, repo) {
  const quick = env.BENCH_QUICK === '1';
  const int = (name, dflt, min = 1) => {
    const raw = env[name];
    if (raw === undefined || raw === '') return dflt;
    if (!/^\d+$/.test(raw) || Number(raw) < min) throw new Error(`${name} must be an integer >= ${min}, got '${raw}'`);
    return Number(raw);
  };
  const targets = (env.BENCH_TARGETS ?? '').trim() === '' ? ALL_TARGETS : env.BENCH_TARGETS.split(',').map((s) => s.trim()).filter(Boolean);
  for (const t of targets) if (!ALL_TARGETS.includes(t)) throw new Error(`BENCH_TARGETS: unknown target '${t}' (known: ${ALL_TARGETS.join(', ')})`);
  const rebuild = env.BENCH_REBUILD ?? (quick ? 'fast' : 'both');
  if (!['both', 'fast', '0'].includes(rebuild)) throw new Error(`BENCH_REBUILD must be both, fast or 0, got '${rebuild}'`);
  return {
    quick,
    seconds: int('BENCH_SECONDS', quick ? 3 : 20),
    rounds: int('BENCH_ROUNDS', quick ? 1 : 3),
    rampSeconds: int('BENCH_RAMP_SECONDS', quick ? 1 : 2, 0),
    idleSeconds: int('BENCH_IDLE_SECONDS', quick ? 10 : 60, 0),
    sizeMiB: int('BENCH_SIZE_MIB', quick ? 256 : 1024, 16),
    dir: env.BENCH_DIR || `${repo}/.local/bench`,
    keep: env.BENCH_KEEP === '1',
    torusSize: env.BENCH_TORUS_SIZE || '8GiB',
    targets,
    rebuild: targets.includes('torusd-r2') ? rebuild : '0',
    rebuildRate: env.BENCH_REBUILD_RATE || '10GiB',
    rebuildTimeoutS: int('BENCH_REBUILD_TIMEOUT_S', 1800),
    quietTimeoutS: int('BENCH_QUIET_TIMEOUT_S', 300),
    strict: env.BENCH_STRICT === '1',
    out: env.BENCH_OUT || `${repo}/test/bench/results/latest.json`,
  };
}
