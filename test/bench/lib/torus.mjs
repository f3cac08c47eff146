// torus under the bench: an etcd, torusd peers on it, and what torusctl and
// torusd's HTTP endpoint say about them. One TorusCluster per etcd: the
// single-peer target and the 3-peer replicated target each have their own.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { BenchError, httpJson, httpText, waitFor } from './procs.mjs';
import { freePorts } from './ports.mjs';

const READY_TIMEOUT_MS = 60_000;
/** How long "balanced but for stale records of removed peers" must hold before a wait accepts it. */
const ORPHAN_GRACE_MS = 15_000;
const CLI_TIMEOUT_MS = 60_000;
const DELETE_TIMEOUT_MS = 60_000;

export class TorusCluster {
  /**
   * name: the target's name (also the RSS target and log prefix). peerArgs:
   * torusd flags every peer gets (--write-level, --rebalance-rate, ...).
   */
  constructor({ name, repo, work, sup, sampler, say, replication, size, peerArgs = [] }) {
    Object.assign(this, { name, repo, work, sup, sampler, say, replication, size, peerArgs });
    this.peers = [];
    this.etcd = null;
    this.endpoint = null;
    this.commandLines = [];
    this.peerSeq = 0;
  }

  node() {
    return process.execPath;
  }

  async startEtcd() {
    const [client, peer] = await freePorts(2);
    this.endpoint = `127.0.0.1:${client}`;
    const url = `http://${this.endpoint}`;
    const env = { ...process.env, ...(process.arch === 'arm64' ? { ETCD_UNSUPPORTED_ARCH: 'arm64' } : {}) };
    const args = [
      '--name', this.name, '--data-dir', path.join(this.work, `${this.name}-etcd`),
      '--listen-client-urls', url, '--advertise-client-urls', url,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `${this.name}=http://127.0.0.1:${peer}`, '--log-level', 'error', '--logger', 'zap',
    ];
    this.etcd = this.sup.start(`etcd-${this.name}`, 'etcd', args, { logFile: path.join(this.work, `${this.name}-etcd.log`), env });
    this.sampler.track('etcd', `etcd-${this.name}`, this.etcd.pid);
    await waitFor(`etcd for ${this.name}`, async () => (await httpText(`${url}/health`, 1000)).includes('"health":"true"'), {
      timeoutMs: READY_TIMEOUT_MS,
      alive: [this.etcd],
    });
    await this.ctlOk(['init', '--replication', String(this.replication)]);
  }

  /**
   * torusctl -C <this etcd> ARGS, resolving to { code, stdout, stderr }. It
   * runs torusctl's own entry (runCli from the build) inside this process:
   * the same code and output as the command, without starting a Node
   * process per call, which takes one to two seconds on a loaded 2-core
   * machine and is called between every two jobs.
   */
  async ctl(args, timeoutMs = CLI_TIMEOUT_MS) {
    const runCli = await loadRunCli(this.repo);
    let stdout = '';
    let stderr = '';
    const io = {
      stdout: (t) => void (stdout += t),
      stderr: (t) => void (stderr += t),
      stdin: Readable.from([]),
      env: {},
      now: () => Date.now(),
      stdoutIsTTY: false,
    };
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new BenchError(`torusctl ${args.join(' ')} did not finish within ${timeoutMs / 1000}s`)), timeoutMs);
    });
    try {
      const code = await Promise.race([runCli(['-C', this.endpoint, ...args], { io }), timeout]);
      return { code, stdout, stderr };
    } finally {
      clearTimeout(timer);
    }
  }

  async ctlOk(args, timeoutMs) {
    const r = await this.ctl(args, timeoutMs);
    if (r.code !== 0) throw new BenchError(`${this.name}: torusctl ${args.join(' ')} exited ${r.code}\n${(r.stderr || r.stdout).trim()}`);
    return r;
  }

  async ctlJson(args) {
    return JSON.parse((await this.ctlOk([...args, '-o', 'json'])).stdout);
  }

  ring() {
    return this.ctlJson(['ring', 'get']);
  }

  status() {
    return this.ctlJson(['cluster', 'status']);
  }

  /** Starts one more peer with a fresh data dir and waits until it is ready. */
  async addPeer(extraArgs = []) {
    const label = `${this.name}-p${++this.peerSeq}`;
    const peer = { label, dataDir: path.join(this.work, `${label}-data`), starts: 0 };
    await this.#launch(peer, extraArgs);
    this.peers.push(peer);
    return peer;
  }

  /** Stops a peer cleanly (SIGTERM) and starts it again on the same data dir with these flags. */
  async restartPeer(peer, extraArgs = []) {
    await this.sup.stop(peer.handle);
    await this.#launch(peer, extraArgs);
  }

  async #launch(peer, extraArgs) {
    peer.starts++;
    const logFile = path.join(this.work, `${peer.label}${peer.starts > 1 ? `-start${peer.starts}` : ''}.log`);
    const args = [
      path.join(this.repo, 'dist/cmd/torusd.js'), '-C', this.endpoint, '--data-dir', peer.dataDir, '--size', this.size,
      '--peer-address', '127.0.0.1:0', '--port', '0', '--nbd-address', '127.0.0.1:0', '--auto-join',
      ...this.peerArgs, ...extraArgs,
    ];
    const handle = this.sup.start(peer.label, this.node(), args, { logFile });
    peer.handle = handle;
    peer.logFile = logFile;
    peer.args = extraArgs;
    this.commandLines.push(handle.commandLine);
    this.sampler.track(this.name, peer.label, handle.pid);
    const ready = await waitFor(`${peer.label} ready`, () => readyLine(logFile), { timeoutMs: READY_TIMEOUT_MS, alive: [handle] });
    Object.assign(peer, { uuid: ready.uuid, http: ready.http, nbd: ready.nbd, peerAddress: ready.peer, blockSize: ready.blockSize });
  }

  live() {
    return this.peers.filter((p) => !p.handle.done);
  }

  /** Waits until the ring is stable with exactly the live peers as members. */
  async waitRingOf(peers, timeoutMs = 120_000) {
    const want = peers.map((p) => p.uuid).sort().join(',');
    return waitFor(
      `${this.name}: ring stable with ${peers.length} member(s)`,
      async () => {
        const ring = await this.ring();
        return ring.transition === null && ring.members.map((m) => m.uuid).sort().join(',') === want ? ring : null;
      },
      { timeoutMs, intervalMs: 300, alive: peers.map((p) => p.handle) },
    );
  }

  /**
   * Waits until `cluster status` says balanced: stable ring, no stale
   * replica, every volume checked at this ring version. torusd scrubs a
   * volume after it first sees it at a ring version; the bench waits for
   * that background work before timing anything, on every target.
   *
   * A stale record naming a peer that is no longer a ring member keeps the
   * cluster from ever being balanced (seen after a force-remove); once that
   * is the only reason for ORPHAN_GRACE_MS, the wait ends with `orphanStale`
   * set, for the caller to report.
   */
  async waitBalanced(timeoutMs) {
    const t0 = Date.now();
    let last = null;
    let orphanSince = null;
    try {
      await waitFor(
        `${this.name}: cluster balanced`,
        async () => {
          last = await this.status();
          const q = quietState(last);
          if (q.balanced) return true;
          if (!q.onlyOrphanStale) {
            orphanSince = null;
            return false;
          }
          orphanSince ??= Date.now();
          return Date.now() - orphanSince >= ORPHAN_GRACE_MS;
        },
        { timeoutMs, intervalMs: 300, alive: this.live().map((p) => p.handle) },
      );
      const q = quietState(last);
      return { ok: true, balanced: q.balanced, orphanStale: q.orphanStale, waitedMs: Date.now() - t0, status: last };
    } catch (err) {
      if (!(err instanceof BenchError) || this.live().some((p) => p.handle.done)) throw err;
      const q = last ? quietState(last) : { orphanStale: [] };
      return { ok: false, balanced: false, orphanStale: q.orphanStale, waitedMs: Date.now() - t0, because: last?.unbalancedBecause ?? [err.message], status: last };
    }
  }

  async createVolume(name, size) {
    await this.ctlOk(['volume', 'create-block', name, size]);
    const list = await this.ctlJson(['volume', 'list']);
    const v = list.volumes.find((x) => x.name === name);
    if (!v) throw new BenchError(`${this.name}: volume ${name} not listed after create`);
    return { id: v.id, name, generation: v.generation, blockSize: v.blockSize, size: v.size, blocks: Math.ceil(v.size / v.blockSize) };
  }

  /** Deletes a volume, retrying while a torusd still holds it (the NBD client just left, or a maintenance pass has it). */
  async deleteVolume(name) {
    await waitFor(
      `${this.name}: delete volume ${name}`,
      async () => {
        const r = await this.ctl(['volume', 'delete', name]);
        if (r.code === 0) return true;
        if (/in use|IN_USE|LOCK/i.test(r.stderr + r.stdout)) return false;
        throw new BenchError(`torusctl volume delete ${name} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
      },
      { timeoutMs: DELETE_TIMEOUT_MS, intervalMs: 500 },
    );
  }

  async metrics(peer) {
    return parseMetrics(await httpText(`http://${peer.http}/metrics`));
  }

  async peerStatus(peer, timeoutMs = 10_000) {
    return httpJson(`http://${peer.http}/v1/status`, timeoutMs);
  }

  async blocksOf(peer, volumeId) {
    return (await httpJson(`http://${peer.http}/v1/blocks?volume=${volumeId}`, 30_000)).blocks;
  }

  /** uuid -> copies, from every live peer. */
  async copiesByPeer(volumeId, peers = this.live()) {
    const lists = await Promise.all(peers.map((p) => this.blocksOf(p, volumeId)));
    return Object.fromEntries(peers.map((p, i) => [p.uuid, lists[i]]));
  }
}

let runCliPromise = null;
function loadRunCli(repo) {
  runCliPromise ??= import(pathToFileURL(path.join(repo, 'dist/src/cli/program.js')).href).then((m) => m.runCli);
  return runCliPromise;
}

/** The parsed `"msg":"torusd ready"` line of a log, or null. */
function readyLine(logFile) {
  if (!existsSync(logFile)) return null;
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.includes('"msg":"torusd ready"')) continue;
    try {
      return JSON.parse(line);
    } catch {
      return null;
    }
  }
  return null;
}

/**
 * What `cluster status -o json` says about quiet: balanced, or the only
 * thing in the way is stale records of peers that are not ring members
 * (orphans: nobody will ever catch them up or clear them). Pure.
 */
export function quietState(status) {
  const members = new Set(status.ring.members);
  const orphanStale = status.stale.filter((s) => !members.has(s.peer));
  const memberStale = status.stale.filter((s) => members.has(s.peer));
  const orphans = new Set(orphanStale.map((s) => s.peer));
  // Reasons that the orphan records alone explain: the records themselves.
  const otherReasons = status.unbalancedBecause.filter((r) => !/stale record/.test(r));
  const degradedByOthers = status.degraded.filter((d) => (d.healthShort ?? 0) > 0 || d.stalePeers.some((p) => !orphans.has(p)));
  return {
    balanced: status.balanced === true,
    orphanStale,
    memberStale,
    degradedByOthers,
    onlyOrphanStale: status.balanced !== true && status.ring.transition === null && orphanStale.length > 0 && memberStale.length === 0 && otherReasons.length === 0 && degradedByOthers.length === 0,
  };
}

/** Prometheus text -> { name: value } for unlabelled samples, { 'name{labels}': value } for the rest. */
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

