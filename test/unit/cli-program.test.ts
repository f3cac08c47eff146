import { PassThrough } from 'node:stream';
import { beforeEach, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/program.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { MetadataService } from '../../src/metadata/metadata-service.js';
import { ManualClock, peerRecord } from '../helpers/metadata-contract.js';

/** Lets every torusctl run share one twin: the CLI closes what it opens. */
function unclosable(md: MetadataService): MetadataService {
  return {
    getClusterConfig: () => md.getClusterConfig(),
    initCluster: (c, o) => md.initCluster(c, o),
    wipe: () => md.wipe(),
    listPeers: () => md.listPeers(),
    getRing: () => md.getRing(),
    setRing: (r) => md.setRing(r),
    watchRing: (f) => md.watchRing(f),
    createVolume: (n, s) => md.createVolume(n, s),
    getVolume: (n) => md.getVolume(n),
    listVolumes: () => md.listVolumes(),
    deleteVolume: (n) => md.deleteVolume(n),
    getVolumeLock: (id) => md.getVolumeLock(id),
    openSession: (o) => md.openSession(o),
    close: async () => undefined,
  };
}

interface Run {
  code: number;
  out: string;
  err: string;
}

describe('torusctl in-process', () => {
  let md: MemoryMetadata;
  let clock: ManualClock;

  async function run(args: string[], stdin: PassThrough & { isTTY?: boolean } = new PassThrough()): Promise<Run> {
    let out = '';
    let err = '';
    const code = await runCli(args, {
      io: { stdout: (t) => void (out += t), stderr: (t) => void (err += t), stdin, env: {}, now: () => clock.now() },
      metadataFactory: () => unclosable(md),
    });
    return { code, out, err };
  }

  function tty(answer: string): PassThrough & { isTTY: boolean } {
    const s = Object.assign(new PassThrough(), { isTTY: true });
    s.end(answer);
    return s;
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
    await s.putPeer(peerRecord('p-1', { address: '127.0.0.1:4001', capacity: 4 * 1024 ** 3, used: 1024 ** 3, updatedAt: '2024-05-01T11:59:57Z' }));
    const before = await run(['list-peers']);
    expect(before.out).toMatch(/\| 127\.0\.0\.1:4001 \| p-1\s+\|\s+4 GiB \|\s+1 GiB \| Avail\s+\| 3s ago\s+\|\s+0 B\/sec \|\s+25\.00% \|/);
    expect(before.out).toContain('Balanced: true Usage: 25.00%');
    expect(await run(['peer', 'add', '127.0.0.1:4001'])).toMatchObject({ code: 0 });
    const json = JSON.parse((await run(['peer', 'list', '-o', 'json'])).out);
    expect(json.peers[0]).toMatchObject({ uuid: 'p-1', member: 'OK', weight: 4 * 1024 ** 3 });
    expect((await run(['peer', 'remove', 'p-1'])).err).toContain('(TORUS_ERR_RING_UNSAFE)');
    await s.close();
    const after = await run(['list-peers', '--csv']);
    expect(after.out).toBe('ADDRESS,UUID,SIZE,USED,MEMBER,UPDATED,REB/REP,DATA\n,p-1,,,DOWN,,0 B/sec,\n');
    expect((await run(['peer', 'remove', 'p-1', '--force'])).code).toBe(0);
    expect(JSON.parse((await run(['-o', 'json', 'ring', 'get'])).out).members).toEqual([]);
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
    for (const cmd of [[], ['init'], ['wipe'], ['list-peers'], ['peer', 'add'], ['peer', 'remove'], ['peer', 'list'], ['ring', 'get'], ['ring', 'set-replication'], ['volume', 'create-block'], ['volume', 'list'], ['volume', 'delete']]) {
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
