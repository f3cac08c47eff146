import { describe, expect, it } from 'vitest';
import { describeFailure, EXIT_FAILURE, EXIT_USAGE, UsageError } from '../../src/cli/errors.js';
import { renderCsv, renderJson, renderKeyValues, renderTable } from '../../src/cli/output.js';
import { buildPeerView, formatAgo, peerFooter, peerRows } from '../../src/cli/peer-view.js';
import { planAddMembers, planRemoveMember, planSetReplication } from '../../src/cli/ring-edit.js';
import { defaultEtcdEndpoint } from '../../src/cli/defaults.js';
import { TorusError } from '../../src/errors/torus-error.js';
import type { RingRecord } from '../../src/model/records.js';
import { expectCode, peerRecord } from '../helpers/metadata-contract.js';

describe('renderTable', () => {
  it('draws a bordered grid whose columns line up', () => {
    const text = renderTable(['NAME', 'SIZE'], [['pad', '1 GiB'], ['a-much-longer-name', '512 B']], { align: ['left', 'right'] });
    expect(text).toBe(
      [
        '+--------------------+-------+',
        '|        NAME        | SIZE  |',
        '+--------------------+-------+',
        '| pad                | 1 GiB |',
        '| a-much-longer-name | 512 B |',
        '+--------------------+-------+',
        '',
      ].join('\n'),
    );
    const lines = text.trimEnd().split('\n');
    expect(new Set(lines.map((l) => l.length)).size).toBe(1);
    // Column separators sit at the same offsets on every line.
    const bars = (l: string) => [...l].flatMap((c, i) => (c === '|' || c === '+' ? [i] : []));
    for (const l of lines) expect(bars(l)).toEqual(bars(lines[0]!));
  });

  it('shows only the header for no rows and keeps cells on one line', () => {
    expect(renderTable(['A'], [])).toBe('+---+\n| A |\n+---+\n');
    expect(renderTable(['A'], [['x\ny']])).toContain('| x y |');
  });
});

describe('renderCsv / renderJson / renderKeyValues', () => {
  it('writes RFC 4180 CSV with a header', () => {
    expect(renderCsv(['A', 'B'], [['1', 'x,y'], ['2', 'say "hi"']])).toBe('A,B\n1,"x,y"\n2,"say ""hi"""\n');
  });

  it('writes one parseable JSON document', () => {
    const text = renderJson({ a: [1, 2], b: null });
    expect(JSON.parse(text)).toEqual({ a: [1, 2], b: null });
    expect(text.endsWith('\n')).toBe(true);
  });

  it('lines up values', () => {
    expect(renderKeyValues([['a', '1'], ['long key', '2']])).toBe('a:        1\nlong key: 2\n');
  });
});

describe('list-peers view', () => {
  const now = Date.parse('2024-01-01T00:00:10Z');
  const ring: RingRecord = { schema: 1, version: 3, replication: 2, members: [{ uuid: 'u1', weight: 100 }, { uuid: 'gone', weight: 100 }] };
  const peers = [
    peerRecord('u1', { address: '127.0.0.1:4001', capacity: 1000, used: 100, updatedAt: '2024-01-01T00:00:07Z' }),
    peerRecord('u2', { address: '127.0.0.1:4002', capacity: 1000, used: 900, updatedAt: '2024-01-01T00:00:09Z' }),
  ];

  it('marks members OK, non-members Avail and silent members DOWN', () => {
    const view = buildPeerView(peers, ring, now, 10);
    expect(view.peers.map((p) => [p.uuid, p.member])).toEqual([['u1', 'OK'], ['u2', 'Avail'], ['gone', 'DOWN']]);
    const rows = peerRows(view, false);
    expect(rows[0]).toEqual(['127.0.0.1:4001', 'u1', '1000 B', '100 B', 'OK', '3s ago', '0 B/sec', '10.00%']);
    expect(rows[2]).toEqual(['', 'gone', '', '', 'DOWN', '', '0 B/sec', '']);
    // Usage counts every reporting peer; balance only the OK members.
    expect(peerFooter(view)).toBe('Balanced: true Usage: 50.00%');
  });

  it('is unbalanced when a member strays more than the tolerance from the mean', () => {
    const both: RingRecord = { ...ring, members: [{ uuid: 'u1', weight: 1 }, { uuid: 'u2', weight: 1 }] };
    expect(buildPeerView(peers, both, now, 10).balanced).toBe(false);
    expect(buildPeerView(peers, both, now, 40).balanced).toBe(true);
  });

  it('formats ages', () => {
    expect([0, 3_400, 119_000, 600_000, 7_300_000, 200 * 3600_000].map(formatAgo)).toEqual(['0s ago', '3s ago', '119s ago', '10m ago', '2h ago', '8d ago']);
  });
});

describe('ring edits', () => {
  const ring: RingRecord = { schema: 1, version: 1, replication: 2, members: [] };
  const peers = [peerRecord('u1', { address: '127.0.0.1:4001', capacity: 5000 }), peerRecord('u2', { address: '127.0.0.1:4002' })];

  it('adds by address (any scheme) or uuid with weight = capacity, each once', () => {
    const plan = planAddMembers(ring, peers, ['tdp://127.0.0.1:4001', 'u1'], false);
    expect(plan.next).toEqual({ ...ring, version: 2, members: [{ uuid: 'u1', weight: 5000 }] });
    const all = planAddMembers(plan.next!, peers, [], true);
    expect(all.added.map((p) => p.uuid)).toEqual(['u2']);
    expect(all.alreadyMembers.map((p) => p.uuid)).toEqual(['u1']);
    expect(planAddMembers(all.next!, peers, ['u1'], false).next).toBeNull();
  });

  it('refuses unknown peers and unsafe removals', async () => {
    await expectCode(Promise.resolve().then(() => planAddMembers(ring, peers, ['nope'], false)), 'TORUS_ERR_PEER_NOT_FOUND');
    const two: RingRecord = { ...ring, members: [{ uuid: 'u1', weight: 1 }, { uuid: 'u2', weight: 1 }] };
    await expectCode(Promise.resolve().then(() => planRemoveMember(two, peers, '127.0.0.1:4001', false)), 'TORUS_ERR_RING_UNSAFE');
    expect(planRemoveMember(two, peers, '127.0.0.1:4001', true).next.members).toEqual([{ uuid: 'u2', weight: 1 }]);
    // A DOWN member (no peer record) is removed by uuid.
    expect(planRemoveMember({ ...two, replication: 1 }, [], 'u2', false).removed.uuid).toBe('u2');
    await expectCode(Promise.resolve().then(() => planRemoveMember(two, peers, 'zzz', true)), 'TORUS_ERR_PEER_NOT_FOUND');
  });

  it('sets replication only when it changes', async () => {
    expect(planSetReplication(ring, 2)).toBeNull();
    expect(planSetReplication(ring, 3)).toEqual({ ...ring, version: 2, replication: 3 });
    await expectCode(Promise.resolve().then(() => planSetReplication(ring, 0)), 'TORUS_ERR_ARG_INVALID');
  });
});

describe('errors and defaults', () => {
  it('turns errors into one line with a code and an exit status', () => {
    expect(describeFailure(new TorusError('TORUS_ERR_VOLUME_IN_USE', 'volume "pad" is in use\nby x'), 'torusctl volume delete')).toEqual({
      line: 'torusctl: volume "pad" is in use by x (TORUS_ERR_VOLUME_IN_USE)',
      exitCode: EXIT_FAILURE,
    });
    expect(describeFailure(new UsageError('say what', 'torusctl peer add'), 'torusctl')).toEqual({
      line: 'torusctl: say what; see "torusctl peer add --help" (TORUS_ERR_ARG_INVALID)',
      exitCode: EXIT_USAGE,
    });
    expect(describeFailure(new Error('boom'), 'torusctl').line).toBe('torusctl: unexpected error: boom (TORUS_ERR_ASSERTION)');
  });

  it('takes the etcd endpoint from ETCD_HOST and ETCD_PORT', () => {
    expect(defaultEtcdEndpoint({})).toBe('127.0.0.1:2379');
    expect(defaultEtcdEndpoint({ ETCD_HOST: 'etcd.local', ETCD_PORT: '32379' })).toBe('etcd.local:32379');
    expect(defaultEtcdEndpoint({ ETCD_HOST: 'etcd.local:1234' })).toBe('etcd.local:1234');
  });
});
