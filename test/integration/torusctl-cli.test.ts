import { spawn } from 'node:child_process';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EtcdMetadata } from '../../src/metadata/etcd-metadata.js';
import { DIST, ROOT, ensureBuilt } from '../helpers/build.js';
import { startEtcd, type EtcdHandle } from '../helpers/etcd.js';
import { advanceRing } from '../../src/ring/transition.js';
import { peerRecord } from '../helpers/metadata-contract.js';
import { waitFor } from '../helpers/wait.js';

const CLI = path.join(DIST, 'cmd/torusctl.js');
const RUN_TIMEOUT_MS = 20_000;
const ONE_ERROR_LINE = /^torusctl: [^\n]+ \((TORUS_ERR_[A-Z_]+)\)\n$/;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs the compiled torusctl as a real process; stdin is a pipe (never a TTY). */
function torusctl(args: string[], opts: { endpoint?: string; input?: string; env?: Record<string, string>; onStdout?: (soFar: string) => void } = {}): Promise<Result> {
  const t0 = Date.now();
  const argv = opts.endpoint === undefined ? args : ['-C', opts.endpoint, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...argv], { cwd: ROOT, env: { ...process.env, ETCD_HOST: '', ETCD_PORT: '', ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      opts.onStdout?.(stdout);
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`torusctl ${argv.join(' ')} did not exit within ${RUN_TIMEOUT_MS} ms; stderr: ${stderr}`));
    }, RUN_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - t0 });
    });
    child.stdin.end(opts.input ?? '');
  });
}

function expectOneErrorLine(r: Result, code: string, exitCode = 1): void {
  expect(r.code, r.stderr).toBe(exitCode);
  expect(r.stdout).toBe('');
  const m = ONE_ERROR_LINE.exec(r.stderr);
  expect(m, r.stderr).not.toBeNull();
  expect(m?.[1]).toBe(code);
}

let etcd: EtcdHandle;
let md: EtcdMetadata;
const logger = pino({ level: 'silent' });

beforeAll(async () => {
  ensureBuilt();
  etcd = await startEtcd();
  md = new EtcdMetadata({ endpoints: [etcd.endpoint], logger });
});

afterAll(async () => {
  await md?.close();
  await etcd?.stop();
});

beforeEach(async () => {
  await md.wipe();
});

describe('torusctl against a real etcd', () => {
  it('init formats once, --view shows it, re-init is refused, --force starts over', async () => {
    const ep = etcd.endpoint;
    expectOneErrorLine(await torusctl(['init', '--view'], { endpoint: ep }), 'TORUS_ERR_CLUSTER_NOT_INITIALISED');

    const init = await torusctl(['init', '--block-size', '512KiB', '--replication', '3'], { endpoint: ep });
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toBe(`initialised torus in etcd at ${ep}: block size 512 KiB, replication 3\n`);
    expect(await md.getClusterConfig()).toMatchObject({ blockSize: 512 * 1024, replication: 3 });
    expect(await md.getRing()).toMatchObject({ schema: 2, replication: 3, minReplicas: 2, transition: null });
    const secret = await md.getClusterSecret();
    expect(secret).toMatch(/^[0-9a-f]{64}$/);

    const view = await torusctl(['init', '--view'], { endpoint: ep });
    expect(view.code).toBe(0);
    expect(view.stdout).toMatch(/^etcd: +\S+\nblock size: +512 KiB \(524288 bytes\)\nreplication: +3\n/);

    const again = await torusctl(['init'], { endpoint: ep });
    expectOneErrorLine(again, 'TORUS_ERR_CLUSTER_ALREADY_INITIALISED');
    expect(again.stderr).toContain('--force');
    expect((await md.getClusterConfig())?.blockSize).toBe(512 * 1024);

    await md.createVolume('old', 4096 * 512);
    const forced = await torusctl(['-o', 'json', 'init', '--force'], { endpoint: ep });
    expect(forced.code, forced.stderr).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ etcd: ep, forced: true, config: { blockSize: 1024 * 1024, replication: 2 } });
    expect(await md.listVolumes()).toEqual([]);
    const fresh = await md.getClusterSecret();
    expect(fresh).toMatch(/^[0-9a-f]{64}$/);
    expect(fresh).not.toBe(secret);
  });

  it('takes the endpoint from ETCD_HOST and ETCD_PORT', async () => {
    const [host, port] = etcd.endpoint.split(':') as [string, string];
    const r = await torusctl(['init'], { env: { ETCD_HOST: host, ETCD_PORT: port } });
    expect(r.code, r.stderr).toBe(0);
    expect(await md.getClusterConfig()).not.toBeNull();
  });

  it('creates block volumes, refusing bad names and sizes with one line and a stable code', async () => {
    const ep = etcd.endpoint;
    expectOneErrorLine(await torusctl(['volume', 'create-block', 'pad', '1GiB'], { endpoint: ep }), 'TORUS_ERR_CLUSTER_NOT_INITIALISED');
    expect((await torusctl(['init'], { endpoint: ep })).code).toBe(0);

    const ok = await torusctl(['volume', 'create-block', 'pad', '1GiB'], { endpoint: ep });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toBe('created block volume "pad" (id 1): 1 GiB, block size 1 MiB\n');
    const j = await torusctl(['volume', 'create-block', 'db.2', '2G', '-o', 'json'], { endpoint: ep });
    expect(JSON.parse(j.stdout)).toMatchObject({ id: 2, name: 'db.2', size: 2 * 1024 ** 3, type: 'block', generation: 1 });

    expectOneErrorLine(await torusctl(['volume', 'create-block', 'pad', '1GiB'], { endpoint: ep }), 'TORUS_ERR_VOLUME_EXISTS');
    expectOneErrorLine(await torusctl(['volume', 'create-block', 'bad/name', '1GiB'], { endpoint: ep }), 'TORUS_ERR_NAME_INVALID');
    expectOneErrorLine(await torusctl(['volume', 'create-block', '-x', '1GiB'], { endpoint: ep }), 'TORUS_ERR_ARG_INVALID', 2);
    expectOneErrorLine(await torusctl(['volume', 'create-block', 'odd', '1000'], { endpoint: ep }), 'TORUS_ERR_SIZE_INVALID');
    expectOneErrorLine(await torusctl(['volume', 'create-block', 'odd', 'lots'], { endpoint: ep }), 'TORUS_ERR_SIZE_INVALID');
    expectOneErrorLine(await torusctl(['volume', 'create-block', 'odd', '0'], { endpoint: ep }), 'TORUS_ERR_SIZE_INVALID');
    expect((await md.listVolumes()).map((v) => v.name)).toEqual(['pad', 'db.2']);
  });

  it('lists volumes as a table, CSV and JSON, and deletes them', async () => {
    const ep = etcd.endpoint;
    await md.initCluster({ blockSize: 1024 * 1024, replication: 2 }, { force: false });
    await md.createVolume('pad', 1024 ** 3);
    await md.createVolume('scratch', 500 * 1024 ** 2);

    const table = await torusctl(['volume', 'list'], { endpoint: ep });
    expect(table.code).toBe(0);
    expect(table.stdout).toBe(
      [
        '+--------+---------+---------+-------+--------+',
        '| VOLUME |  NAME   |  SIZE   | TYPE  | STATUS |',
        '+--------+---------+---------+-------+--------+',
        '|      1 | pad     |   1 GiB | block | free   |',
        '|      2 | scratch | 500 MiB | block | free   |',
        '+--------+---------+---------+-------+--------+',
        '',
      ].join('\n'),
    );
    const csv = await torusctl(['volume', 'list', '--csv', '--si'], { endpoint: ep });
    expect(csv.stdout).toBe('VOLUME,NAME,SIZE,TYPE,STATUS\n1,pad,1.1 GB,block,free\n2,scratch,524.3 MB,block,free\n');
    const json = JSON.parse((await torusctl(['-o', 'json', 'volume', 'list'], { endpoint: ep })).stdout);
    expect(json.volumes.map((v: { name: string; status: string }) => [v.name, v.status])).toEqual([['pad', 'free'], ['scratch', 'free']]);

    const del = await torusctl(['volume', 'delete', 'scratch'], { endpoint: ep });
    expect(del.code, del.stderr).toBe(0);
    expect(del.stdout).toContain('deleted volume "scratch" (id 2');
    expect(del.stdout).toContain('the peers free its blocks');
    expectOneErrorLine(await torusctl(['volume', 'delete', 'scratch'], { endpoint: ep }), 'TORUS_ERR_VOLUME_NOT_FOUND');
    expect((await md.listVolumes()).map((v) => v.name)).toEqual(['pad']);
  });

  it('refuses to delete a volume while a writer holds it, naming the holder', async () => {
    const ep = etcd.endpoint;
    await md.initCluster({ blockSize: 1024 * 1024, replication: 2 }, { force: false });
    await md.createVolume('pad', 1024 ** 3);
    const session = await md.openSession({ ttlSeconds: 10 });
    try {
      const lock = await session.lockVolume('pad', 'torusd 3f2a on node-1 (pid 42)');
      const list = JSON.parse((await torusctl(['volume', 'list', '-o', 'json'], { endpoint: ep })).stdout);
      expect(list.volumes[0]).toMatchObject({ name: 'pad', status: 'in-use', holder: 'torusd 3f2a on node-1 (pid 42)', lockToken: lock.token });
      expect((await torusctl(['volume', 'list'], { endpoint: ep })).stdout).toMatch(/\| pad\s+\|\s+1 GiB \| block \| in-use \|/);

      const del = await torusctl(['volume', 'delete', 'pad'], { endpoint: ep });
      expectOneErrorLine(del, 'TORUS_ERR_VOLUME_IN_USE');
      expect(del.stderr).toContain('in use by torusd 3f2a on node-1 (pid 42) since');
      await lock.release();
      expect((await torusctl(['volume', 'delete', 'pad'], { endpoint: ep })).code).toBe(0);
    } finally {
      await session.close();
    }
  });

  it('list-peers shows a reporting peer as Avail, then OK once added to the ring', async () => {
    const ep = etcd.endpoint;
    await md.initCluster({ blockSize: 1024 * 1024, replication: 1 }, { force: false });
    const session = await md.openSession({ ttlSeconds: 10 });
    try {
      const uuid = '5726a9c4-1d7b-11e6-9e26-5cf9388d5d60';
      await session.putPeer(peerRecord(uuid, { address: '127.0.0.1:40000', capacity: 8 * 1024 ** 3, used: 2 * 1024 ** 3, updatedAt: new Date().toISOString() }));
      const before = await torusctl(['list-peers'], { endpoint: ep });
      expect(before.code, before.stderr).toBe(0);
      const lines = before.stdout.split('\n');
      expect(lines[0]).toMatch(/^ADDRESS\s+UUID\s+SIZE\s+USED\s+MEMBER\s+UPDATED\s+REB\/REP DATA$/);
      expect(lines[1]).toMatch(new RegExp(`^127\\.0\\.0\\.1:40000  ${uuid}  8\\.0 GiB  2\\.0 GiB  Avail   (now|\\d+ seconds? ago)\\s+0 B/s$`));
      expect(before.stdout).toContain('Balanced: true Usage: 25.00%\n');

      const add = await torusctl(['peer', 'add', '127.0.0.1:40000'], { endpoint: ep });
      expect(add.code, add.stderr).toBe(0);
      expect(add.stdout).toContain(`added peer ${uuid}`);
      expect((await md.getRing()).members).toEqual([{ uuid, weight: 8 * 1024 ** 3 }]);

      const after = await torusctl(['peer', 'list', '--csv'], { endpoint: ep });
      expect(after.stdout.split('\n')[1]).toMatch(new RegExp(`^127\\.0\\.0\\.1:40000,${uuid},8\\.0 GiB,2\\.0 GiB,OK,(now|\\d+ seconds? ago),0 B/s$`));
      const json = JSON.parse((await torusctl(['-o', 'json', 'list-peers'], { endpoint: ep })).stdout);
      expect(json).toMatchObject({ balanced: true, ringVersion: 2, ringPhase: 'stable', peers: [{ uuid, member: 'OK', capacity: 8 * 1024 ** 3 }] });

      const ring = JSON.parse((await torusctl(['ring', 'get', '-o', 'json'], { endpoint: ep })).stdout);
      expect(ring).toMatchObject({ schema: 2, version: 2, replication: 1, minReplicas: 1, members: [{ uuid }], transition: null });
      const set = await torusctl(['ring', 'set-replication', '2'], { endpoint: ep });
      expect(set.code, set.stderr).toBe(0);
      expect(set.stderr).toContain('blocks get min(2, members) copies');
      expect(await md.getRing()).toMatchObject({ version: 3, replication: 2, minReplicas: 1, transition: { phase: 'moving', from: { replication: 1 } } });
      expectOneErrorLine(await torusctl(['ring', 'set-replication', '2', '--min', '3'], { endpoint: ep }), 'TORUS_ERR_ARG_INVALID');
      expectOneErrorLine(await torusctl(['peer', 'remove', uuid], { endpoint: ep }), 'TORUS_ERR_RING_UNSAFE');
      const removed = await torusctl(['-o', 'json', 'peer', 'remove', uuid, '--force', '--no-wait'], { endpoint: ep });
      expect(removed.code, removed.stderr).toBe(0);
      expect(JSON.parse(removed.stdout)).toMatchObject({ changed: true, removed: uuid, wasDown: false, ring: { members: [] } });
      expect((await md.getRing()).members).toEqual([]);
    } finally {
      await session.close();
    }
  });

  it('peer remove waits for the drain, printing plain progress lines when stdout is not a terminal', async () => {
    const ep = etcd.endpoint;
    await md.initCluster({ blockSize: 1024 * 1024, replication: 1 }, { force: false });
    const session = await md.openSession({ ttlSeconds: 30 });
    try {
      for (const u of ['peer-1', 'peer-2']) await session.putPeer(peerRecord(u, { address: `127.0.0.1:${u === 'peer-1' ? 40001 : 40002}` }));
      expect((await torusctl(['peer', 'add', '--all-peers'], { endpoint: ep })).code).toBe(0);
      const vol = await md.createVolume('pad', 1024 ** 2);
      const lock = await session.lockVolume('pad', 'test');
      let shown = '';
      const child = torusctl(['peer', 'remove', 'peer-2'], { endpoint: ep, onStdout: (t) => (shown = t) });
      // Play the transition driver once the drain shows progress: record the move, advance the ring.
      await waitFor('first progress line', () => shown.includes('draining peer-2: ring version 3 moving'));
      const moving = await md.getRing();
      await md.putVolumeMove({ schema: 1, ringVersion: moving.version, volumeId: vol.id, done: true, scanned: 1, copied: 1, unavailable: 0, updatedAt: new Date().toISOString() }, lock.token);
      await md.setRing(advanceRing(moving));
      await md.setRing(advanceRing(await md.getRing()));
      const r = await child;
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain('removing peer peer-2 from the ring: its blocks move to the other members\n');
      expect(r.stdout).toMatch(/draining peer-2: ring version \d+ (moving|settled)/);
      expect(r.stdout.endsWith('peer peer-2 has left the ring (ring version 5, stable)\n')).toBe(true);
      expect(r.stdout).not.toContain('\r');
      const status = JSON.parse((await torusctl(['-o', 'json', 'cluster', 'status'], { endpoint: ep })).stdout);
      expect(status).toMatchObject({ ring: { version: 5, phase: 'stable', members: ['peer-1'] }, progress: null, down: [], stale: [], balanced: false });
      expect(status.unbalancedBecause).toEqual(['1 volume(s) not checked at ring version 5']);
    } finally {
      await session.close();
    }
  });

  it('usage errors print one line and exit 2', async () => {
    const ep = etcd.endpoint;
    const cases: [string[], RegExp][] = [
      [['frobnicate'], /unknown command 'frobnicate'/],
      [['volume', 'list', '--bogus'], /unknown option '--bogus'; see "torusctl volume list --help"/],
      [['volume', 'create-block'], /missing required argument 'name'/],
      [['volume', 'create-block', 'pad', '1GiB', 'extra'], /too many arguments/],
      [['-o', 'yaml', 'volume', 'list'], /Allowed choices are table, json/],
      [['volume'], /"torusctl volume" needs a subcommand/],
    ];
    for (const [args, what] of cases) {
      const r = await torusctl(args, { endpoint: ep });
      expectOneErrorLine(r, 'TORUS_ERR_ARG_INVALID', 2);
      expect(r.stderr).toMatch(what);
    }
    const help = await torusctl(['volume', 'create-block', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('$ torusctl volume create-block pad 1GiB');
  });

  it('wipe refuses without a terminal or the flag, and deletes everything with --yes-i-am-sure', async () => {
    const ep = etcd.endpoint;
    await md.initCluster({ blockSize: 1024 * 1024, replication: 2 }, { force: false });
    await md.createVolume('pad', 1024 ** 2);
    const refused = await torusctl(['wipe'], { endpoint: ep, input: 'YES\n' });
    expectOneErrorLine(refused, 'TORUS_ERR_CONFIRMATION_REQUIRED');
    expect(refused.stderr).toContain('--yes-i-am-sure');
    expect(await md.getClusterConfig()).not.toBeNull();

    const wiped = await torusctl(['wipe', '--yes-i-am-sure', '-o', 'json'], { endpoint: ep });
    expect(wiped.code, wiped.stderr).toBe(0);
    expect(JSON.parse(wiped.stdout)).toEqual({ etcd: ep, keysDeleted: 5 }); // config, ring, secret, volume id counter, volume
    expect(await md.getClusterConfig()).toBeNull();
    expect(await md.listVolumes()).toEqual([]);
  });
});

describe('torusctl without etcd', () => {
  it('fails fast with one TORUS_ERR_ETCD_UNAVAILABLE line naming the endpoint', async () => {
    const own = await startEtcd();
    const ep = own.endpoint;
    await own.stop();
    for (const args of [['volume', 'list'], ['init', '--view'], ['list-peers'], ['cluster', 'status'], ['peer', 'remove', 'x']]) {
      const r = await torusctl(args, { endpoint: ep });
      expectOneErrorLine(r, 'TORUS_ERR_ETCD_UNAVAILABLE');
      expect(r.stderr).toContain(ep);
      expect(r.ms).toBeLessThan(8_000);
    }
  });
});
