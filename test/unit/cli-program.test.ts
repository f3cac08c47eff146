import { PassThrough } from 'node:stream';
import { beforeEach, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/program.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { MetadataService } from '../../src/metadata/metadata-service.js';
import type { RingRecord, VolumeMoveRecord } from '../../src/model/records.js';
import { advanceRing } from '../../src/ring/transition.js';
import { ManualClock, peerRecord } from '../helpers/metadata-contract.js';

/** Lets every torusctl run share one twin: the CLI closes what it opens. */
function unclosable(md: MetadataService): MetadataService {
  return new Proxy(md, {
    get(target, prop, receiver) {
      if (prop === 'close') return async () => undefined;
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

interface Run {
  code: number;
  out: string;
  err: string;
}

describe('torusctl in-process', () => {
  let md: MemoryMetadata;
  let clock: ManualClock;

  async function run(args: string[], stdin: PassThrough & { isTTY?: boolean } = new PassThrough(), tty = false): Promise<Run> {
    let out = '';
    let err = '';
    const code = await runCli(args, {
      io: { stdout: (t) => void (out += t), stderr: (t) => void (err += t), stdin, env: {}, now: () => clock.now(), clock, stdoutIsTTY: tty },
      metadataFactory: () => unclosable(md),
    });
    return { code, out, err };
  }

  function tty(answer: string): PassThrough & { isTTY: boolean } {
    const s = Object.assign(new PassThrough(), { isTTY: true });
    s.end(answer);
    return s;
  }

  /** What the transition driver in torusd does: moving -> settled -> stable, one version each. */
  async function settle(): Promise<void> {
    await md.setRing(advanceRing(await md.getRing()));
    await md.setRing(advanceRing(await md.getRing()));
  }

  beforeEach(() => {
    clock = new ManualClock(Date.parse('2024-05-01T12:00:00Z'));
    md = new MemoryMetadata({ clock });
  });

  it('init, --view and the refusal to re-initialise', async () => {
    expect(await run(['init', '--view'])).toMatchObject({ code: 1, out: '' });
    const r = await run(['init', '--block-size', '512KiB', '--replication', '3']);
    expect(r).toMatchObject({ code: 0, err: '' });
    expect(r.out).toContain('block size 512 KiB, replication 3');
    const again = await run(['init']);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/^torusctl: .*already initialised.*--force.* \(TORUS_ERR_CLUSTER_ALREADY_INITIALISED\)\n$/);
    const view = await run(['-o', 'json', 'init', '--view']);
    expect(JSON.parse(view.out).config).toMatchObject({ blockSize: 512 * 1024, replication: 3 });
    expect((await run(['init', '--block-size', '3KiB', '--force'])).err).toContain('(TORUS_ERR_SIZE_INVALID)');
  });

  it('wipe asks on a terminal and deletes only after YES', async () => {
    await run(['init']);
    const no = await run(['wipe'], tty('no\n'));
    expect(no.code).toBe(1);
    expect(no.err).toContain('type YES to delete all torus data in etcd at 127.0.0.1:2379: ');
    expect(no.err).toContain('(TORUS_ERR_CONFIRMATION_REQUIRED)');
    expect(await md.getClusterConfig()).not.toBeNull();
    const yes = await run(['wipe'], tty('YES\n'));
    expect(yes.code).toBe(0);
    expect(yes.out).toMatch(/wiped torus data in etcd at 127\.0\.0\.1:2379: \d+ key\(s\) deleted/);
    expect(await md.getClusterConfig()).toBeNull();
  });

  it('list-peers shows Avail, then OK after peer add, then DOWN when the peer goes', async () => {
    await run(['init', '--replication', '1']);
    const s = await md.openSession({ ttlSeconds: 10 });
    await s.putPeer(peerRecord('p-1', { address: '127.0.0.1:4001', capacity: 4 * 1024 ** 3, used: 1024 ** 3, updatedAt: '2024-05-01T11:59:57Z', rebalanceBytesPerSec: 3 * 1024 ** 2 }));
    const before = await run(['list-peers']);
    expect(before.out).toBe(
      [
        'ADDRESS         UUID  SIZE     USED     MEMBER  UPDATED        REB/REP DATA',
        '127.0.0.1:4001  p-1   4.0 GiB  1.0 GiB  Avail   3 seconds ago     3.0 MiB/s',
        'Balanced: true Usage: 25.00%',
        '',
      ].join('\n'),
    );
    expect(await run(['peer', 'add', '127.0.0.1:4001'])).toMatchObject({ code: 0 });
    const json = JSON.parse((await run(['peer', 'list', '-o', 'json'])).out);
    expect(json.peers[0]).toMatchObject({ uuid: 'p-1', member: 'OK', weight: 4 * 1024 ** 3, rebalanceBytesPerSec: 3 * 1024 ** 2 });
    expect(json).toMatchObject({ balanced: true, ringPhase: 'stable', ringVersion: 2 });
    expect((await run(['peer', 'remove', 'p-1'])).err).toContain('(TORUS_ERR_RING_UNSAFE)');
    await s.close();
    const after = await run(['list-peers', '--csv']);
    expect(after.out).toBe('ADDRESS,UUID,SIZE,USED,MEMBER,UPDATED,REB/REP DATA\n,p-1,,,DOWN,,\n');
    const down = await run(['peer', 'remove', 'p-1', '--no-wait']);
    expect(down.err).toContain('is DOWN');
    expect(down.code).toBe(1);
    expect((await run(['peer', 'remove', 'p-1', '--force', '--no-wait'])).code).toBe(0);
    // Leaving the only member empties the ring: nothing held blocks elsewhere, so it is a transition to no owners.
    const ring = JSON.parse((await run(['-o', 'json', 'ring', 'get'])).out);
    expect(ring).toMatchObject({ members: [], transition: { phase: 'moving', reason: 'peer remove p-1 (DOWN, forced)' } });
  });

  it('Balanced is false while the ring moves, a replica is stale or a volume is unchecked', async () => {
    await run(['init', '--replication', '2']);
    const s = await md.openSession({ ttlSeconds: 60 });
    await s.putPeer(peerRecord('p-1', { address: '127.0.0.1:4001' }));
    await s.putPeer(peerRecord('p-2', { address: '127.0.0.1:4002' }));
    await run(['peer', 'add', 'p-1']);
    const footer = async (): Promise<string> => (await run(['list-peers'])).out.trimEnd().split('\n').pop()!;
    expect(await footer()).toMatch(/^Balanced: true /);
    await run(['peer', 'add', 'p-2']);
    expect(await footer()).toMatch(/^Balanced: false /);
    expect(JSON.parse((await run(['-o', 'json', 'list-peers'])).out).unbalancedBecause).toEqual(['the ring is in transition (moving)']);
    await settle();
    expect(await footer()).toMatch(/^Balanced: true /);
    const vol = await md.createVolume('pad', 1024 ** 2);
    expect(await footer()).toMatch(/^Balanced: false /);
    const lock = await s.lockVolume('pad', 'w');
    const ring = await md.getRing();
    await md.putVolumeHealth({ schema: 1, volumeId: vol.id, ringVersion: ring.version, blocks: 1, short: 0, repaired: 0, divergent: 0, checkedAt: 't' });
    expect(await footer()).toMatch(/^Balanced: true /);
    await md.addStale(vol.id, 'p-2', { ranges: [[0, 1]] });
    expect(await footer()).toMatch(/^Balanced: false /);
    await md.removeStale(vol.id, 'p-2', 'all', lock.token);
    expect(await footer()).toMatch(/^Balanced: true /);
  });

  it('ring set-replication and manual-change start transitions; ring get shows them', async () => {
    await run(['init', '--replication', '2']);
    const s = await md.openSession({ ttlSeconds: 60 });
    for (const u of ['p-1', 'p-2', 'p-3']) await s.putPeer(peerRecord(u, { address: `127.0.0.1:400${u.slice(2)}`, capacity: 1024 ** 3 }));
    expect((await run(['peer', 'add', '--all-peers'])).code).toBe(0); // first members of an empty ring: stable
    const set = await run(['ring', 'set-replication', '3']);
    expect(set).toMatchObject({ code: 0, err: '' });
    expect(set.out).toBe('ring version 2 -> 3: replication 3, minReplicas 2, 3 member(s), moving; the peers move blocks to the new placement ("torusctl cluster status" shows progress)\n');
    const get = await run(['ring', 'get']);
    expect(get.out).toContain('ring version 3, moving, replication 3, minReplicas 2, 3 member(s)\n');
    expect(get.out).toContain('transition: moving, started at ring version 3 on 2024-05-01T12:00:00.000Z: set-replication 3 (min 2)\n');
    expect(get.out).toContain('  from: replication 2, member(s) p-1, p-2, p-3\n');
    const min = await run(['ring', 'set-replication', '3', '--min', '3']);
    expect(min.out).toContain('minReplicas 3');
    expect(min.out).toContain('no block moves');
    expect((await run(['ring', 'set-replication', '3', '--min', '4'])).err).toMatch(/invalid --min 4.*\(TORUS_ERR_ARG_INVALID\)\n$/);
    expect((await run(['ring', 'set-replication', '3', '--min', '3'])).out).toMatch(/^nothing changed: ring version 4: moving/);
    await md.createVolume('pad', 1024 ** 2);
    expect((await run(['ring', 'manual-change', '--type', 'empty', '--replication', '2'])).err).toContain('(TORUS_ERR_RING_UNSAFE)');
    expect((await run(['ring', 'manual-change', '--type', 'single', '--replication', '1', '--uuids', 'p-1,p-2'])).err).toContain('exactly one member');
    expect((await run(['ring', 'manual-change', '--type', 'mod', '--replication', '2', '--uuids', 'p-1', '--all-peers'])).code).toBe(2);
    expect((await run(['ring', 'manual-change', '--type', 'frob', '--replication', '2', '--all-peers'])).code).toBe(2);
    expect((await run(['ring', 'manual-change', '--type', 'mod', '--all-peers'])).code).toBe(2);
    const single = await run(['-o', 'json', 'ring', 'manual-change', '--type', 'single', '--replication', '1', '--uuids', 'p-2']);
    expect(JSON.parse(single.out)).toMatchObject({ changed: true, type: 'single', ring: { replication: 1, minReplicas: 1, members: [{ uuid: 'p-2' }], transition: { phase: 'moving', reason: 'manual-change --type single' } } });
    const help = await run(['ring', 'manual-change', '--help']);
    expect(help.out).toContain('always places blocks by weighted rendezvous hashing');
  });

  it('peer remove drains: it waits for the ring to settle and go stable, showing progress', async () => {
    await run(['init', '--replication', '2']);
    const s = await md.openSession({ ttlSeconds: 600 });
    for (const u of ['p-1', 'p-2', 'p-3']) await s.putPeer(peerRecord(u, { address: `127.0.0.1:400${u.slice(2)}` }));
    await run(['peer', 'add', '--all-peers']);
    const a = await md.createVolume('a', 1024 ** 2);
    const b = await md.createVolume('b', 1024 ** 2);
    const la = await s.lockVolume('a', 'w');
    const lb = await s.lockVolume('b', 'w');
    const removing = run(['peer', 'remove', 'p-3']);
    const ringAt = async (phase: string): Promise<RingRecord> => {
      for (let i = 0; i < 50; i++) {
        const r = await md.getRing();
        if ((r.transition?.phase ?? 'stable') === phase) return r;
        await clock.advance(100);
      }
      throw new Error(`ring never reached ${phase}`);
    };
    const moving = await ringAt('moving');
    await clock.advance(1_000);
    // The transition driver's work, as torusd would record it.
    const move = (volumeId: number, done: boolean): VolumeMoveRecord => ({ schema: 1, ringVersion: moving.transition!.startedVersion, volumeId, done, scanned: 8, copied: 3, unavailable: 0, updatedAt: 't' });
    await md.putVolumeMove(move(a.id, true), la.token);
    await md.putVolumeMove(move(b.id, false), lb.token);
    await clock.advance(11_000);
    await md.setRing(advanceRing(moving));
    await clock.advance(1_000);
    await md.setRing(advanceRing(await md.getRing()));
    await clock.advance(1_000);
    const r = await removing;
    expect(r.code, r.err).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    expect(lines[0]).toBe('removing peer p-3 from the ring: its blocks move to the other members');
    expect(lines).toContain('draining p-3: ring version 3 moving: 0% of the blocks gone through, 0/2 volume(s) moved, 0 block(s) scanned, 0 copied');
    expect(lines).toContain('draining p-3: ring version 3 moving: 50% of the blocks gone through, 1/2 volume(s) moved, 16 block(s) scanned, 6 copied');
    expect(lines.some((l) => l.startsWith('draining p-3: ring version 4 settled: every volume moved'))).toBe(true);
    expect(lines[lines.length - 1]).toBe('peer p-3 has left the ring (ring version 5, stable)');
    expect(r.out).not.toContain('\r');
    expect(r.err).toContain('interrupting stops the waiting, not the drain');
  });

  it('peer remove on a terminal redraws one line; with -o json it prints JSON lines', async () => {
    await run(['init', '--replication', '1']);
    const s = await md.openSession({ ttlSeconds: 600 });
    for (const u of ['p-1', 'p-2']) await s.putPeer(peerRecord(u, { address: `127.0.0.1:400${u.slice(2)}` }));
    await run(['peer', 'add', '--all-peers']);
    const finish = async (p: Promise<Run>): Promise<Run> => {
      for (let i = 0; i < 20; i++) await clock.advance(500);
      await settle();
      await clock.advance(1_000);
      return p;
    };
    const tty = await finish(run(['peer', 'remove', 'p-2'], new PassThrough(), true));
    expect(tty.code, tty.err).toBe(0);
    expect(tty.out).toContain('\rdraining p-2: ring version 3 moving: 100% of the blocks gone through, 0/0 volume(s) moved');
    expect(tty.out).toContain('\x1b[K');
    expect(tty.out.endsWith('\r\x1b[Kpeer p-2 has left the ring (ring version 5, stable)\n')).toBe(true);
    await s.putPeer(peerRecord('p-2', { address: '127.0.0.1:4002' }));
    await run(['peer', 'add', 'p-2']);
    await settle();
    const json = await finish(run(['-o', 'json', 'peer', 'remove', 'p-2']));
    const events = json.out.trimEnd().split('\n').map((l) => JSON.parse(l) as { event: string });
    expect(events[0]).toMatchObject({ event: 'removed', removed: 'p-2', wasDown: false });
    expect(events.some((e) => e.event === 'progress')).toBe(true);
    expect(events[events.length - 1]).toMatchObject({ event: 'done', uuid: 'p-2', phase: 'stable', member: false });
  });

  it('cluster status shows the transition, moves, stale and degraded volumes, down members and the rebalance rate', async () => {
    await run(['init', '--replication', '2']);
    const s = await md.openSession({ ttlSeconds: 600 });
    await s.putPeer(peerRecord('p-1', { address: '127.0.0.1:4001', rebalanceBytesPerSec: 10 * 1024 ** 2 }));
    await s.putPeer(peerRecord('p-2', { address: '127.0.0.1:4002', rebalanceBytesPerSec: 2 * 1024 ** 2 }));
    await run(['peer', 'add', 'p-1']);
    await run(['peer', 'add', 'p-2']);
    const vol = await md.createVolume('pad', 8 * 1024 ** 2);
    const lock = await s.lockVolume('pad', 'w');
    await md.addStale(vol.id, 'p-2', { ranges: [[0, 3]] });
    const ring = await md.getRing();
    await md.putVolumeMove({ schema: 1, ringVersion: ring.transition!.startedVersion, volumeId: vol.id, done: false, scanned: 5, copied: 2, unavailable: 1, updatedAt: 't' }, lock.token);
    await s.ackRing({ peer: 'p-1', kind: 'peer', ringVersion: ring.version, fenceRevision: 0 });
    const text = await run(['cluster', 'status']);
    expect(text.code, text.err).toBe(0);
    expect(text.out).toContain('ring:       version 3, moving, replication 2, minReplicas 1, 2 member(s)\n');
    expect(text.out).toContain('transition: started at version 3 on 2024-05-01T12:00:00.000Z: peer add p-2; from replication 2 over 1 member(s)\n');
    expect(text.out).toContain('moves:      0.0% of the blocks gone through, 0/1 volume(s) moved, 5 block(s) scanned, 2 copied, 1 block(s) with no reachable current copy (the move cannot finish)\n');
    expect(text.out).toContain('ring acks:  1/1 live process(es) use version 3\n');
    expect(text.out).toContain('rebalance:  12.0 MiB/s\n');
    expect(text.out).toContain('down:       none\n');
    expect(text.out).toContain('balanced:   false (the ring is in transition (moving); 1 stale record(s); 1 volume(s) not checked at ring version 3)\n');
    expect(text.out).toContain('VOLUME  ID  PEER  BLOCKS  ALL\npad      1  p-2        3  no\n');
    expect(text.out).toContain('VOLUME  ID  SHORT BLOCKS  STALE PEERS  LAST CHECK SHORT\npad      1             3  p-2                         -\n');
    await s.close();
    const json = JSON.parse((await run(['-o', 'json', 'cluster', 'status'])).out);
    expect(json).toMatchObject({ down: ['p-1', 'p-2'], rebalanceBytesPerSec: 0, stale: [{ volume: 'pad', peer: 'p-2', blocks: 3 }], degraded: [{ volume: 'pad', shortBlocks: 3 }] });
    const help = await run(['cluster', 'status', '--help']);
    for (const field of ['ring:', 'moves:', 'ring acks:', 'rebalance:', 'down:', 'stale:', 'degraded:', 'balanced:']) expect(help.out).toContain(field);
  });

  it('volume list names the holder of an in-use volume in JSON', async () => {
    await run(['init']);
    await run(['volume', 'create-block', 'pad', '1GiB']);
    await run(['volume', 'create-block', 'free-one', '500MiB']);
    const s = await md.openSession({ ttlSeconds: 10 });
    await s.lockVolume('pad', 'torusd abc on node-1 (pid 42)');
    const table = await run(['volume', 'list', '--si']);
    expect(table.out).toContain('| pad      |   1.1 GB | block | in-use |');
    const json = JSON.parse((await run(['volume', 'list', '-o', 'json'])).out);
    expect(json.volumes[0]).toMatchObject({ id: 1, name: 'pad', status: 'in-use', holder: 'torusd abc on node-1 (pid 42)', lockToken: 1 });
    expect(json.volumes[1]).toMatchObject({ name: 'free-one', status: 'free' });
    expect(json.volumes[1].holder).toBeUndefined();
    const del = await run(['volume', 'delete', 'pad']);
    expect(del.code).toBe(1);
    expect(del.err).toBe('torusctl: volume "pad" is in use by torusd abc on node-1 (pid 42) since 2024-05-01T12:00:00.000Z (TORUS_ERR_VOLUME_IN_USE)\n');
  });

  it('every command has --help with an example, exit 0', async () => {
    for (const cmd of [[], ['init'], ['wipe'], ['list-peers'], ['peer', 'add'], ['peer', 'remove'], ['peer', 'list'], ['ring', 'get'], ['ring', 'set-replication'], ['ring', 'manual-change'], ['cluster'], ['cluster', 'status'], ['volume', 'create-block'], ['volume', 'list'], ['volume', 'delete']]) {
      const r = await run([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.out, cmd.join(' ')).toContain('Examples:\n  $ torusctl');
    }
  });

  it('usage errors are one line with exit 2', async () => {
    for (const args of [['frob'], ['volume', 'list', '--frob'], ['volume'], ['volume', 'create-block', 'x'], ['-o', 'yaml', 'volume', 'list'], ['ring', 'set-replication', 'two'], ['peer', 'add'], ['-C', 'nohost', 'volume', 'list']]) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.out, args.join(' ')).toBe('');
      expect(r.err, args.join(' ')).toMatch(/^torusctl: [^\n]+; see "torusctl[^"]*--help" \(TORUS_ERR_ARG_INVALID\)\n$/);
    }
  });
});
