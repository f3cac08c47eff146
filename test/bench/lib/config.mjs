// The bench's knobs, from the environment. Pure: the caller passes env.

export const ALL_TARGETS = ['nbdkit-file', 'nbdkit-memory', 'nbdkit-null', 'torusd', 'torusd-r2'];

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
