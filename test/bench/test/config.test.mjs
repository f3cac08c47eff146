import assert from 'node:assert/strict';
import { test } from 'vitest';
import { parseArgs, resolveConfig } from '../lib/config.mjs';

const cfgOf = (argv, env = {}) => resolveConfig(parseArgs(argv, env).env, '/repo');

test('defaults: 3 rounds of 20 s, a 60 s idle window, both re-replications', () => {
  const c = cfgOf([]);
  assert.equal(c.rounds, 3);
  assert.equal(c.seconds, 20);
  assert.equal(c.idleSeconds, 60);
  assert.equal(c.rebuild, 'both');
  assert.equal(c.out, '/repo/test/bench/results/latest.json');
});

test('--quick shortens everything, and a flag wins over its variable', () => {
  const c = cfgOf(['--quick', '--json', 'x.json', '--idle-seconds=5'], { BENCH_OUT: 'y.json', BENCH_IDLE_SECONDS: '30' });
  assert.equal(c.quick, true);
  assert.equal(c.rounds, 1);
  assert.equal(c.seconds, 3);
  assert.equal(c.idleSeconds, 5);
  assert.equal(c.rebuild, 'fast');
  assert.equal(c.out, 'x.json');
  assert.equal(cfgOf([], { BENCH_QUICK: '1' }).idleSeconds, 10);
});

test('bad options are refused with the option named', () => {
  assert.throws(() => cfgOf(['--fast']), /unknown option '--fast'/);
  assert.throws(() => cfgOf(['--json']), /--json needs a value/);
  assert.throws(() => cfgOf(['--rounds', '0']), /BENCH_ROUNDS must be an integer >= 1/);
  assert.throws(() => cfgOf(['--targets', 'torusd,nbdkit-qemu']), /unknown target 'nbdkit-qemu'/);
  assert.throws(() => cfgOf(['--quick=1']), /takes no value/);
  assert.equal(parseArgs(['--rounds', '2', '-h']).help, true);
});

test('no re-replication without the replicated target', () => {
  assert.equal(cfgOf(['--targets', 'nbdkit-file,torusd']).rebuild, '0');
  assert.equal(cfgOf(['--idle-seconds', '0']).idleSeconds, 0);
});
