import { describe, expect, it } from 'vitest';
import { describeFailure, EXIT_FAILURE, EXIT_USAGE, UsageError } from '../../src/cli/errors.js';
import { buildClusterStatus, moveProgress, unbalancedReasons } from '../../src/cli/cluster-view.js';
import { formatAgo, formatBytes, formatRate, renderCsv, renderJson, renderKeyValues, renderPlainTable, renderTable } from '../../src/cli/output.js';
import { buildPeerView, PEER_ALIGN, PEER_HEADERS, peerFooter, peerRows } from '../../src/cli/peer-view.js';
import { describeDrain, progressBar, ProgressReporter, type DrainState } from '../../src/cli/progress.js';
import { planAddMembers, planManualChange, planRemoveMember, planSetReplication, type ManualChange } from '../../src/cli/ring-edit.js';
import { defaultEtcdEndpoint } from '../../src/cli/defaults.js';
import { TorusError } from '../../src/errors/torus-error.js';
import type { RingRecord, StaleRecord, VolumeHealthRecord, VolumeMoveRecord, VolumeRecord } from '../../src/model/records.js';
import { planRingChange } from '../../src/ring/transition.js';
import { expectCode, ManualClock, peerRecord } from '../helpers/metadata-contract.js';

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

describe('plain tables, sizes, rates and ages', () => {
  it('renders columns without borders, two spaces apart, trailing spaces trimmed', () => {
    expect(renderPlainTable(['A', 'LONG HEADER', 'N'], [['x', 'y', '1'], ['wider', '', '100']], { align: ['left', 'left', 'right'] })).toBe(
      ['A      LONG HEADER  N', 'x      y              1', 'wider               100', ''].join('\n'),
    );
  });

  it('formats sizes with one decimal from KiB up, and rates per second', () => {
    expect([0, 512, 1024, 5 * 1024 ** 3, 1.25 * 1024 ** 2].map((b) => formatBytes(b))).toEqual(['0 B', '512 B', '1.0 KiB', '5.0 GiB', '1.3 MiB']);
    expect(formatBytes(5 * 1024 ** 3, true)).toBe('5.4 GB');
    expect(formatRate(12 * 1024 ** 2)).toBe('12.0 MiB/s');
    expect(formatRate(0)).toBe('0 B/s');
  });

  it('formats ages as Torus did', () => {
    expect([0, 999, 1_000, 4_400, 59_000, 60_000, 600_000, 3_600_000, 7_300_000, 86_400_000, 200 * 3600_000].map(formatAgo)).toEqual([
      'now',
      'now',
      '1 second ago',
      '4 seconds ago',
      '59 seconds ago',
      '1 minute ago',
      '10 minutes ago',
      '1 hour ago',
      '2 hours ago',
      '1 day ago',
      '8 days ago',
    ]);
  });
});

describe('list-peers view', () => {
  const now = Date.parse('2024-01-01T00:00:10Z');
  const ring: RingRecord = { schema: 2, version: 3, replication: 2, minReplicas: 1, members: [{ uuid: 'u1', weight: 100 }, { uuid: 'gone', weight: 100 }], transition: null };
  const peers = [
    peerRecord('u1', { address: '127.0.0.1:4001', capacity: 5 * 1024 ** 3, used: 1024 ** 3, updatedAt: '2024-01-01T00:00:06Z', rebalanceBytesPerSec: 12 * 1024 ** 2 }),
    peerRecord('u2', { address: '127.0.0.1:4002', capacity: 5 * 1024 ** 3, used: 4 * 1024 ** 3, updatedAt: '2024-01-01T00:00:09Z' }),
  ];

  it('marks members OK, non-members Avail and silent members DOWN, in Torus columns', () => {
    const view = buildPeerView(peers, ring, now, []);
    expect(view.peers.map((p) => [p.uuid, p.member])).toEqual([['u1', 'OK'], ['u2', 'Avail'], ['gone', 'DOWN']]);
    const rows = peerRows(view, false);
    expect(PEER_HEADERS).toEqual(['ADDRESS', 'UUID', 'SIZE', 'USED', 'MEMBER', 'UPDATED', 'REB/REP DATA']);
    expect(rows[0]).toEqual(['127.0.0.1:4001', 'u1', '5.0 GiB', '1.0 GiB', 'OK', '4 seconds ago', '12.0 MiB/s']);
    expect(rows[1]).toEqual(['127.0.0.1:4002', 'u2', '5.0 GiB', '4.0 GiB', 'Avail', '1 second ago', '0 B/s']);
    expect(rows[2]).toEqual(['', 'gone', '', '', 'DOWN', '', '']);
    // Usage counts every reporting peer.
    expect(peerFooter(view)).toBe('Balanced: true Usage: 50.00%');
    const table = renderPlainTable(PEER_HEADERS, rows, { align: PEER_ALIGN });
    expect(table.split('\n')[0]).toBe('ADDRESS         UUID  SIZE     USED     MEMBER  UPDATED        REB/REP DATA');
  });

  it('is unbalanced for the reasons it is given', () => {
    const view = buildPeerView(peers, ring, now, ['the ring is in transition (moving)']);
    expect(peerFooter(view)).toBe('Balanced: false Usage: 50.00%');
    expect(view.unbalancedBecause).toEqual(['the ring is in transition (moving)']);
  });
});

describe('cluster view', () => {
  const MiB = 1024 ** 2;
  const vol = (id: number, name: string, blocks: number): VolumeRecord => ({ schema: 1, id, name, type: 'block', size: blocks * MiB, blockSize: MiB, generation: 1, createdAt: 't' });
  const volumes = [vol(1, 'a', 100), vol(2, 'b', 10)];
  const stableRing: RingRecord = { schema: 2, version: 5, replication: 2, minReplicas: 1, members: [{ uuid: 'p1', weight: 1 }, { uuid: 'p2', weight: 1 }], transition: null };
  const health = (volumeId: number, ringVersion: number, short = 0): VolumeHealthRecord => ({ schema: 1, volumeId, ringVersion, blocks: 1, short, repaired: 0, divergent: 0, checkedAt: 't' });
  const staleRec = (volumeId: number, peer: string, ranges: [number, number][], all = false): StaleRecord => ({ schema: 1, volumeId, peer, all, ranges, updatedAt: 't' });
  const move = (ringVersion: number, volumeId: number, done: boolean, scanned: number, copied: number, unavailable = 0): VolumeMoveRecord => ({
    schema: 1,
    ringVersion,
    volumeId,
    done,
    scanned,
    copied,
    unavailable,
    updatedAt: 't',
  });

  it('balanced needs a stable ring, no stale record, and every volume checked at this version with nothing short', () => {
    expect(unbalancedReasons(stableRing, volumes, [], [health(1, 5), health(2, 5)])).toEqual([]);
    expect(unbalancedReasons(stableRing, [], [], [])).toEqual([]);
    expect(unbalancedReasons(stableRing, volumes, [], [health(1, 5), health(2, 4)])).toEqual(['1 volume(s) not checked at ring version 5']);
    expect(unbalancedReasons(stableRing, volumes, [], [health(1, 5, 3), health(2, 5)])).toEqual(['1 volume(s) with blocks short of 2 copies']);
    expect(unbalancedReasons(stableRing, volumes, [staleRec(1, 'p1', [[0, 1]])], [health(1, 5), health(2, 5)])).toEqual(['1 stale record(s)']);
    // A record of a deleted volume does not count.
    expect(unbalancedReasons(stableRing, volumes, [staleRec(9, 'p1', [[0, 1]])], [health(1, 5), health(2, 5)])).toEqual([]);
    const moving = planRingChange(stableRing, [{ uuid: 'p1', weight: 1 }], 2, 1, 'peer remove p2', 0)!;
    expect(unbalancedReasons(moving, [], [], [])).toEqual(['the ring is in transition (moving)']);
  });

  it('move progress counts done volumes of this transition only', () => {
    const moving = planRingChange(stableRing, [{ uuid: 'p1', weight: 1 }, { uuid: 'p3', weight: 1 }], 2, 1, 'x', 0)!;
    expect(moveProgress(stableRing, volumes, [])).toBeNull();
    const p = moveProgress(moving, volumes, [move(6, 1, true, 100, 40), move(6, 2, false, 3, 1, 2), move(5, 2, true, 9, 9), move(6, 9, true, 1, 1)])!;
    // In blocks: volume a (100 blocks) done, volume b (10) with no record of how far it went (an older release's).
    expect(p).toEqual({ ringVersion: 6, phase: 'moving', volumes: 2, volumesDone: 1, scanned: 103, copied: 41, unavailable: 2, percent: (100 / 110) * 100 });
    // Volume b's pass went through 5 of its 10 blocks; volume a has not started.
    expect(moveProgress(moving, volumes, [{ ...move(6, 2, false, 3, 1), reached: 5 }])!.percent).toBeCloseTo((5 / 110) * 100, 9);
    // A pass never counts past the volume's end.
    expect(moveProgress(moving, volumes, [{ ...move(6, 2, false, 3, 1), reached: 50 }])!.percent).toBeCloseTo((10 / 110) * 100, 9);
    expect(moveProgress(moving, [], [])!.percent).toBe(100);
  });

  it('builds the status: stale blocks per volume and peer, degraded volumes, down members, rates, acks', () => {
    const moving = planRingChange(stableRing, [{ uuid: 'p1', weight: 1 }, { uuid: 'p3', weight: 1 }], 2, 1, 'peer add p3', Date.parse('2024-01-01T00:00:00Z'))!;
    const status = buildClusterStatus({
      ring: moving,
      peers: [peerRecord('p1', { rebalanceBytesPerSec: 100 }), peerRecord('p3', { rebalanceBytesPerSec: 23 })],
      volumes,
      stale: [staleRec(1, 'p2', [[0, 10], [95, 200]]), staleRec(1, 'p3', [[5, 20]]), staleRec(2, 'p1', [], true), staleRec(7, 'p1', [[0, 1]])],
      moves: [move(6, 1, false, 50, 10)],
      health: [health(2, 6, 4)],
      acks: [
        { schema: 1, lease: '1', peer: 'p1', kind: 'peer', ringVersion: 6, fenceRevision: 9, updatedAt: 't' },
        { schema: 1, lease: '2', peer: null, kind: 'client', ringVersion: 5, fenceRevision: 0, updatedAt: 't' },
      ],
    });
    expect(status.ring).toEqual({
      version: 6,
      phase: 'moving',
      replication: 2,
      minReplicas: 1,
      members: ['p1', 'p3'],
      transition: { startedVersion: 6, startedAt: '2024-01-01T00:00:00.000Z', reason: 'peer add p3', fromReplication: 2, fromMembers: ['p1', 'p2'] },
    });
    expect(status.stale).toEqual([
      { volume: 'a', volumeId: 1, peer: 'p2', all: false, blocks: 15 },
      { volume: 'a', volumeId: 1, peer: 'p3', all: false, blocks: 15 },
      { volume: 'b', volumeId: 2, peer: 'p1', all: true, blocks: 10 },
    ]);
    expect(status.degraded).toEqual([
      { volume: 'a', volumeId: 1, shortBlocks: 25, stalePeers: ['p2', 'p3'], healthShort: null },
      { volume: 'b', volumeId: 2, shortBlocks: 10, stalePeers: ['p1'], healthShort: 4 },
    ]);
    expect(status.down).toEqual([]);
    expect(status.rebalanceBytesPerSec).toBe(123);
    expect(status.acks).toEqual({ live: 2, current: 1, behind: [{ lease: '2', peer: null, ringVersion: 5 }] });
    expect(status.progress).toMatchObject({ volumesDone: 0, volumes: 2, scanned: 50, copied: 10 });
    expect(status.balanced).toBe(false);
    expect(buildClusterStatus({ ring: stableRing, peers: [peerRecord('p1')], volumes: [], stale: [], moves: [], health: [], acks: [] })).toMatchObject({
      down: ['p2'],
      balanced: true,
      progress: null,
      degraded: [],
    });
  });
});

describe('drain progress', () => {
  const state = (over: Partial<DrainState> = {}): DrainState => ({
    uuid: 'p2',
    ringVersion: 6,
    phase: 'moving',
    progress: { ringVersion: 6, phase: 'moving', volumes: 4, volumesDone: 1, scanned: 10, copied: 3, unavailable: 0, percent: 25 },
    member: false,
    acks: { live: 2, current: 1 },
    ...over,
  });

  it('describes each phase in one line', () => {
    expect(describeDrain(state())).toBe('draining p2: ring version 6 moving: 25% of the blocks gone through, 1/4 volume(s) moved, 10 block(s) scanned, 3 copied');
    expect(describeDrain(state({ ringVersion: 7, phase: 'settled' }))).toBe('draining p2: ring version 7 settled: every volume moved; 1/2 live process(es) use this ring version');
    expect(describeDrain(state({ ringVersion: 8, phase: 'stable', progress: null }))).toBe('peer p2 has left the ring (ring version 8, stable)');
    expect(progressBar(25, 8)).toBe('[##......]');
  });

  it('redraws one line on a terminal', () => {
    let out = '';
    const r = new ProgressReporter((t) => void (out += t), 'tty', new ManualClock());
    r.update(state());
    r.update(state({ progress: { ...state().progress!, volumesDone: 2, percent: 50 } }));
    r.finish(state({ ringVersion: 8, phase: 'stable', progress: null }));
    expect(out).toBe(
      `\rdraining p2: ring version 6 moving: 25% of the blocks gone through, 1/4 volume(s) moved, 10 block(s) scanned, 3 copied ${progressBar(25)}\x1b[K` +
        `\rdraining p2: ring version 6 moving: 50% of the blocks gone through, 2/4 volume(s) moved, 10 block(s) scanned, 3 copied ${progressBar(50)}\x1b[K` +
        '\r\x1b[Kpeer p2 has left the ring (ring version 8, stable)\n',
    );
  });

  it('prints plain lines at an interval, and at once when the phase changes', async () => {
    const clock = new ManualClock();
    const lines: string[] = [];
    const r = new ProgressReporter((t) => void lines.push(t), 'lines', clock, 10_000);
    r.update(state());
    await clock.advance(5_000);
    r.update(state());
    expect(lines).toHaveLength(1);
    await clock.advance(5_000);
    r.update(state());
    expect(lines).toHaveLength(2);
    r.update(state({ ringVersion: 7, phase: 'settled' }));
    expect(lines).toHaveLength(3);
    expect(lines.every((l) => l.endsWith('\n') && !l.includes('\r'))).toBe(true);
  });

  it('prints one JSON object per line with -o json', () => {
    const lines: string[] = [];
    const r = new ProgressReporter((t) => void lines.push(t), 'json', new ManualClock());
    r.update(state());
    r.finish(state({ ringVersion: 8, phase: 'stable', progress: null }));
    expect(lines.map((l) => JSON.parse(l))).toMatchObject([
      { event: 'progress', uuid: 'p2', phase: 'moving', progress: { volumesDone: 1 } },
      { event: 'done', phase: 'stable', member: false },
    ]);
  });
});

describe('ring edits', () => {
  const NOW = Date.parse('2024-01-01T00:00:00Z');
  const ring: RingRecord = { schema: 2, version: 1, replication: 2, minReplicas: 1, members: [], transition: null };
  const peers = [peerRecord('u1', { address: '127.0.0.1:4001', capacity: 5000 }), peerRecord('u2', { address: '127.0.0.1:4002' })];
  const two: RingRecord = { ...ring, version: 4, members: [{ uuid: 'u1', weight: 1 }, { uuid: 'u2', weight: 1 }] };

  it('adds by address (any scheme) or uuid with weight = capacity, each once; a join to a non-empty ring is a transition', () => {
    const plan = planAddMembers(ring, peers, ['tdp://127.0.0.1:4001', 'u1'], false, NOW);
    // The first member of an empty ring: nothing to move, stable at once.
    expect(plan.next).toEqual({ ...ring, version: 2, members: [{ uuid: 'u1', weight: 5000 }] });
    const all = planAddMembers(plan.next!, peers, [], true, NOW);
    expect(all.added.map((p) => p.uuid)).toEqual(['u2']);
    expect(all.alreadyMembers.map((p) => p.uuid)).toEqual(['u1']);
    expect(all.next!.transition).toMatchObject({ phase: 'moving', startedVersion: 3, reason: 'peer add u2', from: { members: [{ uuid: 'u1', weight: 5000 }] } });
    expect(planAddMembers(all.next!, peers, ['u1'], false, NOW).next).toBeNull();
  });

  it('removes by transition; refuses unknown peers, DOWN members and too few members without --force', async () => {
    await expectCode(Promise.resolve().then(() => planAddMembers(ring, peers, ['nope'], false, NOW)), 'TORUS_ERR_PEER_NOT_FOUND');
    await expectCode(Promise.resolve().then(() => planRemoveMember(two, peers, '127.0.0.1:4001', false, NOW)), 'TORUS_ERR_RING_UNSAFE');
    const forced = planRemoveMember(two, peers, '127.0.0.1:4001', true, NOW);
    expect(forced.next.members).toEqual([{ uuid: 'u2', weight: 1 }]);
    expect(forced.next.transition).toMatchObject({ phase: 'moving', reason: 'peer remove u1', from: { members: two.members } });
    // A DOWN member (no peer record) needs --force even when enough members remain.
    const down = await expectCode(Promise.resolve().then(() => planRemoveMember({ ...two, replication: 1 }, [peers[0]!], 'u2', false, NOW)), 'TORUS_ERR_RING_UNSAFE');
    expect(down.message).toContain('is DOWN');
    const gone = planRemoveMember({ ...two, replication: 1 }, [peers[0]!], 'u2', true, NOW);
    expect(gone).toMatchObject({ removed: { uuid: 'u2' }, wasDown: true });
    expect(planRemoveMember({ ...two, replication: 1 }, peers, 'u2', false, NOW).wasDown).toBe(false);
    await expectCode(Promise.resolve().then(() => planRemoveMember(two, peers, 'zzz', true, NOW)), 'TORUS_ERR_PEER_NOT_FOUND');
  });

  it('sets replication and minReplicas; min defaults to R - floor(R/2) and stays within 1..R', async () => {
    expect(planSetReplication(two, 2, undefined, NOW)).toBeNull();
    const three = planSetReplication(two, 3, undefined, NOW)!;
    expect(three).toMatchObject({ version: 5, replication: 3, minReplicas: 2, transition: { phase: 'moving', from: { replication: 2 } } });
    expect(planSetReplication(two, 2, 2, NOW)).toEqual({ ...two, version: 5, minReplicas: 2 });
    for (const [n, m] of [[2, 3], [2, 0], [0, undefined]] as const) {
      await expectCode(Promise.resolve().then(() => planSetReplication(two, n, m, NOW)), 'TORUS_ERR_ARG_INVALID');
    }
  });

  it('manual-change: empty needs --force with volumes, single exactly one uuid, mod/ketama the members named', async () => {
    const change = (over: Partial<ManualChange>): ManualChange => ({ type: 'mod', replication: 2, min: undefined, uuids: [], allPeers: false, force: false, ...over });
    await expectCode(Promise.resolve().then(() => planManualChange(two, peers, change({ type: 'empty' }), 3, NOW)), 'TORUS_ERR_RING_UNSAFE');
    expect(planManualChange(two, peers, change({ type: 'empty', force: true }), 3, NOW)).toMatchObject({ members: [], transition: { phase: 'moving' } });
    expect(planManualChange(two, peers, change({ type: 'empty' }), 0, NOW)!.members).toEqual([]);
    await expectCode(Promise.resolve().then(() => planManualChange(two, peers, change({ type: 'empty', uuids: ['u1'] }), 0, NOW)), 'TORUS_ERR_ARG_INVALID');
    await expectCode(Promise.resolve().then(() => planManualChange(two, peers, change({ type: 'single', uuids: ['u1', 'u2'] }), 0, NOW)), 'TORUS_ERR_ARG_INVALID');
    const single = planManualChange(two, peers, change({ type: 'single', replication: 1, uuids: ['u1'] }), 0, NOW)!;
    expect(single).toMatchObject({ replication: 1, minReplicas: 1, members: [{ uuid: 'u1', weight: 5000 }] });
    const all = planManualChange(ring, peers, change({ type: 'ketama', allPeers: true }), 0, NOW)!;
    expect(all.members.map((m) => m.uuid)).toEqual(['u1', 'u2']);
    // A member that does not report keeps its ring weight; an unknown uuid is refused.
    const down = planManualChange({ ...two, members: [{ uuid: 'gone', weight: 7 }] }, peers, change({ uuids: ['gone', 'u1'] }), 0, NOW)!;
    expect(down.members).toEqual([{ uuid: 'gone', weight: 7 }, { uuid: 'u1', weight: 5000 }]);
    await expectCode(Promise.resolve().then(() => planManualChange(two, peers, change({ uuids: ['nobody'] }), 0, NOW)), 'TORUS_ERR_PEER_NOT_FOUND');
    await expectCode(Promise.resolve().then(() => planManualChange(two, peers, change({ uuids: [] }), 0, NOW)), 'TORUS_ERR_ARG_INVALID');
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
