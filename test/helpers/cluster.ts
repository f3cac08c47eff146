/**
 * A cluster of real torusd processes on one real etcd, for the replication
 * end-to-end suites: start N peers (initialised with a chosen block size
 * and replication), add more, read `torusctl cluster status` / `list-peers`
 * / `ring get` as JSON, each peer's copies of a volume (GET /v1/blocks),
 * and check block by block that every block has exactly R equal copies on
 * exactly the peers the ring names for it (docs/replication.md, guarantee 5).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ClusterStatus } from '../../src/cli/cluster-view.js';
import type { PeerView } from '../../src/cli/peer-view.js';
import type { RingRecord, VolumeRecord } from '../../src/model/records.js';
import { replicasOf } from '../../src/ring/placement.js';
import { startEtcd, type EtcdHandle } from './etcd.js';
import { run } from './nbd-exec.js';
import { requireTool } from './tools.js';
import { httpGet, startTorusd, torusctl, type CliResult, type TorusdHandle, type TorusdOptions } from './torusd.js';
import { waitFor } from './wait.js';

/** One copy as GET /v1/blocks lists it. */
export interface BlockCopy {
  readonly index: number;
  readonly generation: number;
  readonly state: 'data' | 'zero';
  readonly version: number;
  readonly digest: number;
  readonly suspect: boolean;
}

export interface ClusterOptions {
  /** Peers started (each with --auto-join, one after another). */
  readonly peers: number;
  /** `torusctl init --block-size`, e.g. 256KiB. */
  readonly blockSize: string;
  readonly replication: number;
  /** --size of each peer (default 1GiB). */
  readonly size?: string;
  /** Extra torusd flags for every peer (e.g. --replica-timeout 3s). */
  readonly peerArgs?: readonly string[];
  /** Extra environment for every peer (e.g. TORUS_LEASE_TTL_SECONDS); a peer's own `env` wins. */
  readonly peerEnv?: NodeJS.ProcessEnv;
}

export type PeerOptions = Omit<TorusdOptions, 'etcd'> & { readonly etcd?: string };

export interface CopyCheck {
  /** Blocks at least one peer holds a copy of. */
  readonly blocks: number;
  /** Copies counted over all peers. */
  readonly copies: number;
  /** What is wrong, one line per block (empty when every block is as it should be). */
  readonly problems: string[];
}

export class TestCluster {
  readonly peers: TorusdHandle[] = [];
  private readonly peerArgs: readonly string[];
  private readonly peerEnv: NodeJS.ProcessEnv;
  private readonly size: string;

  private constructor(
    readonly etcd: EtcdHandle,
    opts: ClusterOptions,
  ) {
    this.peerArgs = opts.peerArgs ?? [];
    this.peerEnv = opts.peerEnv ?? {};
    this.size = opts.size ?? '1GiB';
  }

  /** etcd, `torusctl init`, then the peers; resolves once the ring is stable with all of them. */
  static async start(opts: ClusterOptions): Promise<TestCluster> {
    requireTool('etcdctl', 'etcd-client');
    const etcd = await startEtcd();
    const c = new TestCluster(etcd, opts);
    try {
      await c.ctl(['init', '--block-size', opts.blockSize, '--replication', String(opts.replication)]);
      for (let i = 0; i < opts.peers; i++) await c.addPeer();
      if (opts.peers > 0) await c.waitStable(opts.peers);
    } catch (err) {
      await c.destroy();
      throw err;
    }
    return c;
  }

  get endpoint(): string {
    return this.etcd.endpoint;
  }

  /** Starts one more torusd on this cluster's etcd (--auto-join unless told otherwise). */
  async addPeer(opts: PeerOptions = {}): Promise<TorusdHandle> {
    const p = await startTorusd({
      size: this.size,
      ...opts,
      etcd: opts.etcd ?? this.etcd.endpoint,
      extraArgs: [...this.peerArgs, ...(opts.extraArgs ?? [])],
      env: { ...this.peerEnv, ...(opts.env ?? {}) },
    });
    this.peers.push(p);
    return p;
  }

  /** `torusctl ARGS`; fails with its output unless it exits 0. */
  async ctl(args: string[], timeoutMs?: number): Promise<CliResult> {
    const r = await torusctl(this.etcd.endpoint, args, timeoutMs);
    if (r.code !== 0) throw new Error(`torusctl ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r;
  }

  async ctlJson<T>(args: string[]): Promise<T> {
    return JSON.parse((await this.ctl(['-o', 'json', ...args])).stdout) as T;
  }

  ring(): Promise<RingRecord> {
    return this.ctlJson<RingRecord>(['ring', 'get']);
  }

  status(): Promise<ClusterStatus> {
    return this.ctlJson<ClusterStatus>(['cluster', 'status']);
  }

  peerList(): Promise<PeerView> {
    return this.ctlJson<PeerView>(['list-peers']);
  }

  /** `list-peers` says the peer is DOWN (a ring member with no live record) and `cluster status` names it down. */
  async shownDown(uuid: string): Promise<boolean> {
    const [view, status] = await Promise.all([this.peerList(), this.status()]);
    return view.peers.some((p) => p.uuid === uuid && p.member === 'DOWN') && status.down.includes(uuid);
  }

  /** A raw etcd value under /torus/ (etcdctl), or null. */
  async etcdGet(key: string): Promise<string | null> {
    const r = await run('etcdctl', ['--endpoints', `http://${this.etcd.endpoint}`, 'get', '--print-value-only', `/torus/${key}`]);
    if (r.code !== 0) throw new Error(`etcdctl get /torus/${key} exited ${r.code}: ${r.stderr}`);
    const v = r.stdout.replace(/\n$/, '');
    return v === '' ? null : v;
  }

  async createVolume(name: string, size: string): Promise<VolumeRecord> {
    await this.ctl(['volume', 'create-block', name, size]);
    return this.volume(name);
  }

  /** Deletes a volume once no one holds it (a writer that just hung up lets go within moments). */
  async deleteVolume(name: string): Promise<void> {
    await waitFor(`volume ${name} to be deleted`, async () => {
      const r = await torusctl(this.etcd.endpoint, ['volume', 'delete', name]);
      if (r.code === 0) return true;
      if (!r.stderr.includes('TORUS_ERR_VOLUME_IN_USE')) throw new Error(`torusctl volume delete ${name}: ${r.stderr}`);
      return false;
    }, 30_000, 250);
  }

  async volume(name: string): Promise<VolumeRecord> {
    const v = await this.etcdGet(`volumes/${name}`);
    if (v === null) throw new Error(`no volume ${name} in etcd`);
    return JSON.parse(v) as VolumeRecord;
  }

  /** Waits until the ring is stable with exactly `members` members. */
  async waitStable(members: number, timeoutMs = 60_000): Promise<RingRecord> {
    return waitFor(`the ring to be stable with ${members} member(s)`, async () => {
      const r = await this.ring();
      return r.transition === null && r.members.length === members ? r : null;
    }, timeoutMs, 250);
  }

  /** Waits for `Balanced: true` (stable ring, no stale record, every volume checked at this ring version with nothing short). */
  async waitBalanced(timeoutMs = 60_000): Promise<ClusterStatus> {
    let last: ClusterStatus | null = null;
    try {
      return await waitFor('the cluster to be balanced', async () => {
        last = await this.status();
        return last.balanced ? last : null;
      }, timeoutMs, 250);
    } catch (err) {
      throw new Error(`${(err as Error).message}; last status: ${JSON.stringify(last)}`);
    }
  }

  /** The stale blocks etcd records for a peer (all volumes). */
  async staleBlocks(uuid: string): Promise<number> {
    return (await this.status()).stale.filter((x) => x.peer === uuid).reduce((n, x) => n + x.blocks, 0);
  }

  /** One peer's copies of a volume's blocks (GET /v1/blocks). */
  async copies(peer: TorusdHandle, volumeId: number): Promise<BlockCopy[]> {
    const r = await httpGet(`${peer.httpUrl}/v1/blocks?volume=${volumeId}`, 10_000);
    if (r.status !== 200) throw new Error(`GET /v1/blocks on ${peer.uuid} answered ${r.status}: ${r.body}`);
    return (JSON.parse(r.body) as { blocks: BlockCopy[] }).blocks;
  }

  /**
   * Block by block: under a stable ring, every block some peer holds has
   * exactly R copies, on exactly its owners, all at one version with one
   * state and digest, none suspect. Looks at every running peer of this
   * cluster (a non-member's copy is a leftover and counts as a problem);
   * every ring member must be running.
   */
  async checkCopies(volumeName: string): Promise<CopyCheck> {
    const [ring, vol] = await Promise.all([this.ring(), this.volume(volumeName)]);
    if (ring.transition !== null) return { blocks: 0, copies: 0, problems: [`the ring is in transition (${ring.transition.phase})`] };
    const running = this.peers.filter((p) => p.running);
    const problems: string[] = [];
    for (const m of ring.members) {
      if (!running.some((p) => p.uuid === m.uuid)) problems.push(`ring member ${m.uuid} is not running: its copies cannot be checked`);
    }
    const held = new Map<number, { peer: string; copy: BlockCopy }[]>();
    let copies = 0;
    for (const p of running) {
      for (const c of await this.copies(p, vol.id)) {
        if (c.generation !== vol.generation) {
          problems.push(`peer ${p.uuid} holds block ${c.index} of generation ${c.generation}, not the volume's ${vol.generation}`);
          continue;
        }
        copies++;
        let list = held.get(c.index);
        if (list === undefined) held.set(c.index, (list = []));
        list.push({ peer: p.uuid, copy: c });
      }
    }
    const r = Math.min(ring.replication, ring.members.length);
    for (const [index, list] of [...held.entries()].sort((a, b) => a[0] - b[0])) {
      const owners = replicasOf(ring, { volumeId: vol.id, generation: vol.generation, index });
      const holders = list.map((x) => x.peer);
      const missing = owners.filter((u) => !holders.includes(u));
      const extra = holders.filter((u) => !owners.includes(u));
      const what: string[] = [];
      if (list.length !== r) what.push(`${list.length} copies, not ${r}`);
      if (missing.length > 0) what.push(`missing on owner(s) ${missing.join(',')}`);
      if (extra.length > 0) what.push(`copies on non-owner(s) ${extra.join(',')}`);
      const suspect = list.filter((x) => x.copy.suspect).map((x) => x.peer);
      if (suspect.length > 0) what.push(`suspect on ${suspect.join(',')}`);
      const kinds = new Set(list.map((x) => `${x.copy.state}@${x.copy.version}#${x.copy.state === 'data' ? x.copy.digest : 0}`));
      if (kinds.size > 1) what.push(`copies differ: ${list.map((x) => `${x.peer}=${x.copy.state}@${x.copy.version}#${x.copy.digest}`).join(' ')}`);
      if (what.length > 0) problems.push(`block ${index}: ${what.join('; ')}`);
    }
    return { blocks: held.size, copies, problems };
  }

  /** Waits until checkCopies finds nothing wrong (leftovers are dropped by each peer's garbage collection, every 30 s). */
  async waitCopiesExact(volumeName: string, timeoutMs = 75_000): Promise<CopyCheck> {
    let last: CopyCheck | null = null;
    try {
      return await waitFor(`every block of ${volumeName} to have exactly R equal copies on its owners`, async () => {
        last = await this.checkCopies(volumeName);
        return last.problems.length === 0 ? last : null;
      }, timeoutMs, 500);
    } catch (err) {
      const p = last === null ? [] : (last as CopyCheck).problems;
      throw new Error(`${(err as Error).message}; ${p.length} problem(s), first: ${p.slice(0, 10).join(' | ')}`);
    }
  }

  /**
   * With TORUS_E2E_LOGS=<dir> set, writes each peer's output (the current
   * run's, bounded) to <dir>/<label>-<n>-<uuid>.log: for diagnosing a failure.
   */
  async saveLogs(label: string): Promise<void> {
    const dir = process.env.TORUS_E2E_LOGS;
    if (dir === undefined || dir === '') return;
    await mkdir(dir, { recursive: true });
    await Promise.all(this.peers.map((p, i) => writeFile(path.join(dir, `${label}-${i}-${p.uuid}.log`), p.output()).catch(() => undefined)));
  }

  async destroy(): Promise<void> {
    for (const p of this.peers) {
      // A frozen peer would not see SIGTERM.
      if (p.running && p.pid > 0) {
        try {
          process.kill(p.pid, 'SIGCONT');
        } catch {
          // gone
        }
      }
    }
    await Promise.all(this.peers.map((p) => p.destroy()));
    await this.etcd.stop();
  }
}
