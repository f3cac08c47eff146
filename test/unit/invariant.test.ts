import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { Timers } from '../../src/cluster/timers.js';
import { TorusError } from '../../src/errors/torus-error.js';
import { EXIT_INVARIANT_BROKEN, exitOnInvariantBroken, type InvariantBroken } from '../../src/util/invariant.js';
import { ManualClock } from '../helpers/metadata-contract.js';

const bug = () => new TorusError('TORUS_ERR_ASSERTION', 'assertion failed: a block entry is pinned');

describe('exitOnInvariantBroken', () => {
  it('logs one fatal line with the context fields, then exits with 70', () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
    const exits: number[] = [];
    exitOnInvariantBroken(logger, (code) => exits.push(code))(bug(), { module: 'nbd', export: 'disk', command: 'read' });
    expect(EXIT_INVARIANT_BROKEN).toBe(70);
    expect(exits).toEqual([70]);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 60, module: 'nbd', export: 'disk', command: 'read', exitCode: 70, err: { code: 'TORUS_ERR_ASSERTION' } });
  });
});

describe('Timers and broken invariants', () => {
  it('reports a periodic tick that broke an invariant, drops other failures, and keeps ticking', async () => {
    const clock = new ManualClock();
    const broken: Parameters<InvariantBroken>[] = [];
    const timers = new Timers(clock, (err, context) => broken.push([err, context]));
    let n = 0;
    timers.every(1_000, async () => {
      n++;
      throw n === 1 ? new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'etcd is down') : bug();
    });
    await clock.advance(1_000);
    expect(broken).toEqual([]);
    await clock.advance(1_000);
    expect(broken.map(([err, context]) => [err.code, context['where']])).toEqual([['TORUS_ERR_ASSERTION', 'periodic work']]);
    timers.cancelAll();
  });
});
