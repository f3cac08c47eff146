import pino from 'pino';
import { moveKey } from '../../src/metadata/keys.js';
import { decodeVolumeMoveRecord } from '../../src/metadata/record-codec.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import type { RingRecord } from '../../src/model/records.js';
import { ownersOf, ringPeers } from '../../src/replication/owners.js';
import { SeededRandom, type Random } from '../../src/util/random.js';
import { Checker, type Guarantee, type Violation } from './checker.js';
import { EventLog } from './event-log.js';
import { FaultInjector, planFaults } from './faults.js';
import { SIM_TIMING, type NodeFactory, type SimTiming, type VolumeIo } from './node-under-test.js';
import { SECTOR_BYTES } from './sectors.js';
import { SimReaders } from './readers.js';
import { runUntil } from './sim-clock.js';
import { SimCluster, type SimPeer } from './sim-cluster.js';
import { CLIENT_TIMEOUT_MS, Workload, type QuietState, type VolumeState } from './workload.js';

/**
 * One seed, start to finish: a cluster of 3 to 5 peers running the real
 * replication code, a workload of at least OPS_DEFAULT requests with
 * faults injected at seeded points, the checkers after every step, then
 * the settle phase (faults stop; every request must succeed; the cluster
 * must reach guarantee 5 within SETTLE_MAX_MS; every peer must read back
 * what the model says). Pure function of (seed, variant, ops).
 */

export const OPS_DEFAULT = 1_000;
/** Block size of simulated clusters: the smallest torus allows, so copies are cheap. */
export const SIM_BLOCK_SIZE = 4096;
/** Virtual time the settle phase may take to reach guarantee 5. */
export const SETTLE_MAX_MS = 10 * 60_000;
/** How often the settle phase looks at the placement. */
const SETTLE_POLL_MS = 5_000;
/** Requests after the faults stop, each of which must succeed. */
const AFTER_FAULT_OPS = 40;
/** Pause between workload requests, ms [min, max]: a run covers many fault cycles. */
const OP_GAP_MS: readonly [number, number] = [20, 280];
/** Blocks each peer other than the full reader reads back at rest. */
const READBACK_SAMPLE_BLOCKS = 8;
/** Peer start (or restart) within this, once etcd answers. */
const START_MAX_MS = 60_000;

export interface SeedConfig {
  readonly seed: number;
  readonly peers: number;
  readonly members: number;
  readonly replication: number;
  readonly volumes: readonly { readonly name: string; readonly blocks: number }[];
  readonly ops: number;
  readonly timing: SimTiming;
}

/** Mixed into the seed for the stream that picks suspended takeovers (faults.ts). */
const SUSPEND_STREAM = 0x5a5e;
/** Mixed into the seed for the readers' picks (readers.ts). */
const READERS_STREAM = 0x4ead;
/** Mixed into the seed for the stream that picks which crashes are orderly stops (faults.ts). */
const STOPS_STREAM = 0x5709;
/** Mixed into the seed for the stream of flaky etcd windows and their calls' fates (faults.ts). */
const FLAKY_STREAM = 0xf1a4;

/** The cluster shape a seed gets: 3 to 5 peers (one may start outside the ring), R = 2 or 3, 1 to 3 volumes of 32 to 128 blocks, a write level. */
export function configFor(seed: number, ops = OPS_DEFAULT): SeedConfig {
  const r = new SeededRandom(seed ^ 0x51ed);
  const peers = 3 + r.int(3);
  const members = peers - r.int(2);
  const replication = members >= 3 && r.int(2) === 0 ? 3 : 2;
  const volumes = Array.from({ length: 1 + r.int(3) }, (_, i) => ({ name: `vol${i}`, blocks: 32 + r.int(97) }));
  // Mostly the default level; a fifth of the seeds acknowledge early (docs/replication.md, "Write levels").
  const level = r.int(10);
  const writeLevel = level < 8 ? 'all' : level === 8 ? 'one' : 'local';
  return { seed, peers, members, replication, volumes, ops, timing: { ...SIM_TIMING, writeLevel } };
}

export interface SeedFailure extends Violation {
  /** Requests issued when it was found. */
  readonly step: number;
  readonly timeMs: number;
  readonly phase: 'start' | 'workload' | 'settle';
}

export interface SeedResult {
  readonly seed: number;
  readonly variant: string | null;
  readonly ok: boolean;
  readonly failure: SeedFailure | null;
  readonly replay: string;
  /** Running hash of every event: equal for equal runs. */
  readonly hash: string;
  readonly opsIssued: number;
  readonly simMs: number;
  readonly events: number;
  readonly faults: Readonly<Record<string, number>>;
  readonly config: SeedConfig;
  /** The last events before the end (for a failure report). */
  readonly tail: readonly string[];
  /** The cluster's state when the failure was found: ring, peers, stale records, the blocks involved. */
  readonly diagnosis: readonly string[];
  /** How often each liveness rule applied, and how many reads the model checked. */
  readonly coverage: Workload['coverage'];
  /** Where the time went (CPU ms of this process, simulated ms): not part of the replayed outcome. */
  readonly timing: { readonly workloadCpuMs: number; readonly settleCpuMs: number; readonly workloadSimMs: number; readonly settleSimMs: number };
}

export interface RunOptions extends SimModes {
  readonly seed: number;
  readonly ops?: number;
  readonly factory: NodeFactory;
  /** Named in the replay command. */
  readonly variant?: string | null;
  readonly verbose?: boolean;
  /** The peers' own logs (pino level; default silent: logging costs more than the simulation). */
  readonly logLevel?: string;
  /** Wraps each writer's io (variants that act at the client boundary). */
  readonly wrapIo?: (io: VolumeIo) => VolumeIo;
}

/** The modes a seed runs in beyond its number: each changes the whole run, so a replay names them. */
export interface SimModes {
  /** Half the lease takeovers pause the old writer as a suspended VM, its clocks stopped too (faults.ts). Default false: SIGSTOP only. */
  readonly suspend?: boolean;
  /** Read-only opens on random peers read while the writers run (readers.ts). Default false. */
  readonly readers?: boolean;
  /** Every etcd call spends a seeded 0-ETCD_DELAY_MAX_MS on the wire each way, so calls are served and answered out of order. Default false: one microtask. */
  readonly etcdDelays?: boolean;
  /** Half the crashes are orderly stops instead (SIGTERM: the peer's clients answered and let go, its locks and lease released, its disk synced), then a restart (faults.ts). Default false. */
  readonly stops?: boolean;
  /** Half the etcd outages and peer cuts are flaky windows instead: calls fail unapplied or are applied with their answer lost, one at a time (faults.ts). Default false. */
  readonly etcdFlaky?: boolean;
}

/** `--etcd-delays`: the longest time on the wire, each way, of an etcd call (a real etcd answers within a few ms on a LAN). */
export const ETCD_DELAY_MAX_MS = 4;

export function replayCommand(seed: number, variant: string | null, ops: number, modes: SimModes = {}): string {
  return `npm run sim -- --seed ${seed}${variant ? ` --variant ${variant}` : ''}${ops !== OPS_DEFAULT ? ` --ops ${ops}` : ''}${modes.suspend === true ? ' --suspend' : ''}${modes.readers === true ? ' --readers' : ''}${modes.etcdDelays === true ? ' --etcd-delays' : ''}${modes.stops === true ? ' --stops' : ''}${modes.etcdFlaky === true ? ' --etcd-flaky' : ''}`;
}

/**
 * Runs one seed. Stack traces are off unless the run is verbose or logs:
 * peers refuse and time out thousands of requests per seed, and every
 * refusal is a new error whose stack costs more than the rest of its trip.
 */
export async function runSeed(opts: RunOptions): Promise<SeedResult> {
  const saved = Error.stackTraceLimit;
  if (!opts.verbose && opts.logLevel === undefined) Error.stackTraceLimit = 0;
  try {
    return await runSeedInner(opts);
  } finally {
    Error.stackTraceLimit = saved;
  }
}

async function runSeedInner(opts: RunOptions): Promise<SeedResult> {
  const cfg = configFor(opts.seed, opts.ops ?? OPS_DEFAULT);
  const variant = opts.variant ?? null;
  let failure: SeedFailure | null = null;
  let phase: SeedFailure['phase'] = 'start';
  // Assigned below; the closures that use them run only after.
  let workload: Workload | undefined;
  let cluster: SimCluster;
  let diagnosis: string[] = [];
  const fail = (v: Violation): void => {
    if (failure !== null) return;
    failure = { ...v, step: workload?.opsIssued ?? 0, timeMs: cluster.clock.monotonic(), phase };
    log.add(`VIOLATION ${v.guarantee}: ${v.message}`);
    diagnosis = diagnose(cluster, v.blocks ?? []);
  };
  const failed = (): boolean => failure !== null;
  const blockSize = SIM_BLOCK_SIZE;
  let checker: Checker;

  cluster = new SimCluster({
    seed: cfg.seed,
    blockSize,
    peers: cfg.peers,
    members: cfg.members,
    replication: cfg.replication,
    capacity: 1024 * blockSize,
    timing: cfg.timing,
    factory: opts.factory,
    logger: pino({ level: opts.logLevel ?? 'silent', base: null, timestamp: () => `,"t":${(cluster?.clock.monotonic() ?? 0).toFixed(3)}` }, pino.destination({ dest: 1, sync: true })),
    network: { delayMinMs: 0.2, delayMaxMs: 3, reorderMaxMs: 300 },
    etcdDelayMaxMs: opts.etcdDelays === true ? ETCD_DELAY_MAX_MS : 0,
    onBug: (where, err) => fail({ guarantee: 'bug', message: `${where}: ${err instanceof Error ? err.message : String(err)}` }),
    onStoreChange: (uuid, c) => {
      const v = checker.checkStoreChange(uuid, c);
      if (v) fail(v);
    },
    onApplied: (uuid, c) => {
      // Not fenced there: a peer etcd names stale for the block, or one no
      // placement of the ring names, whose copies are leftovers (seed 45755
      // with --suspend: a node removed from the ring, suspended with its
      // writer, woke and applied the writer's queued change to its own
      // leftover; no coordinator could tell it the new token).
      // And an old coordinator's copy of a block to a new owner the
      // volume's move has not finished with (seed 2940 with --suspend
      // --readers: a new owner, suspended through a clean handover, took
      // the old writer's queued move copy on waking): nothing reads that
      // copy before the move is done, and the move and every change compare
      // versions first (an install replaces only an older copy; a partial
      // change builds only on the version it names).
      const unfenced = () => cluster.isRecordedStale(c.ref.volumeId, uuid, c.ref.index) || outsideRing(uuid) || (c.kind === 'install' && unmovedNewOwner(uuid, c.ref));
      const v = checker.checkApplied(uuid, c.ref.volumeId, c.token, `${c.kind} of block ${c.ref.index}`, unfenced);
      if (v) fail(v);
    },
  });
  const outsideRing = (uuid: string): boolean => {
    const ring = cluster.ringNow();
    return ring !== null && !ringPeers(ring).includes(uuid);
  };
  /** A new owner of the block in a moving ring whose move of the block's volume is not done. */
  const unmovedNewOwner = (uuid: string, ref: BlockRef): boolean => {
    const ring = cluster.ringNow();
    const t = ring?.transition;
    if (ring == null || t == null || t.phase !== 'moving') return false;
    const o = ownersOf(ring, ref);
    if (o.old === null || o.old.includes(uuid) || !o.now.includes(uuid)) return false;
    const key = moveKey(t.startedVersion, ref.volumeId);
    const entry = cluster.etcd.get(key);
    return entry === undefined || !decodeVolumeMoveRecord(key, entry.value).done;
  };
  const log = new EventLog(() => cluster.clock.monotonic(), opts.verbose ?? false);
  checker = new Checker(blockSize, () => cluster.storeViews());
  const clock = cluster.clock;
  const run = (done: () => boolean, forMs: number) => runUntil(clock, () => failed() || done(), clock.monotonic() + forMs);

  // ---- start: format, first ring, volumes, peers
  log.add(`seed ${cfg.seed} peers ${cfg.peers} members ${cfg.members} R=${cfg.replication} level ${cfg.timing.writeLevel} volumes ${cfg.volumes.map((v) => `${v.name}:${v.blocks}`).join(',')}`);
  let booted = false;
  void cluster.inside(cluster.admin, () => cluster.bootstrap(cfg.volumes.map((v) => ({ name: v.name, size: v.blocks * blockSize })))).then(
    () => (booted = true),
    (err: unknown) => fail({ guarantee: 'bug', message: `bootstrap failed: ${String(err)}` }),
  );
  await run(() => booted, START_MAX_MS);
  const ids = new Map<string, number>();
  for (const v of await cluster.adminMetadata.listVolumes()) ids.set(v.name, v.id);
  for (const p of cluster.peers) void cluster.start(p).catch((err: unknown) => fail({ guarantee: 'bug', message: `peer ${p.index} failed to start: ${String(err)}` }));
  await run(() => cluster.peers.every((p) => p.started), START_MAX_MS);
  if (!failed() && !cluster.peers.every((p) => p.started)) fail({ guarantee: 'liveness', message: `peers did not start within ${START_MAX_MS} ms` });

  // The smallest minReplicas of the rings seen lately: what a write or flush must have reached.
  const rings: RingRecord[] = [];
  void cluster.adminMetadata.watchRing((ring) => {
    rings.push(ring);
    if (rings.length > 4) rings.shift();
    log.add(`ring ${ring.version} ${ring.transition?.phase ?? 'stable'} R=${ring.replication} min=${ring.minReplicas}`);
  });
  const minReplicas = (): number => Math.min(...rings.map((r) => r.minReplicas));
  const owners = (ref: BlockRef): ReadonlySet<string> => {
    const out = new Set<string>();
    for (const r of rings) for (const u of ownersOf(r, ref).all) out.add(u);
    return out;
  };

  const random = cluster.fork();
  // The injector needs the workload and the workload asks the injector about quiet: a late-bound view.
  let injector: FaultInjector | null = null;
  const quiet: QuietState = {
    isQuiet: (): boolean => injector === null || injector.isQuiet(),
    unhealthy: () => injector?.unhealthy() ?? new Set<string>(),
    get epoch(): number {
      return injector?.epoch ?? 0;
    },
    anyActive: (): boolean => injector !== null && injector.anyActive(),
  };
  const wl: Workload = new Workload({
    cluster,
    checker,
    log,
    quiet,
    timing: cfg.timing,
    random,
    volumes: cfg.volumes.map((v) => ({ name: v.name, id: ids.get(v.name)!, blocks: v.blocks })),
    blockSize,
    minReplicas,
    owners,
    rings: () => rings,
    fail,
    ...(opts.wrapIo ? { wrapIo: opts.wrapIo } : {}),
  });
  workload = wl;
  const graceMs = cfg.timing.sessionTtlSeconds * 1000 + cfg.timing.replicaTimeoutMs + cfg.timing.etcdCallTimeoutMs + 5 * cfg.timing.backgroundIntervalMs;
  const faults = new FaultInjector(
    { cluster, workload: wl, checker, log, random: cluster.fork(), suspendRandom: opts.suspend === true ? new SeededRandom((cfg.seed ^ SUSPEND_STREAM) >>> 0) : null, stopsRandom: opts.stops === true ? new SeededRandom((cfg.seed ^ STOPS_STREAM) >>> 0) : null, flakyRandom: opts.etcdFlaky === true ? new SeededRandom((cfg.seed ^ FLAKY_STREAM) >>> 0) : null, fail, timing: cfg.timing, volumeBlocks: (n) => cfg.volumes.find((v) => v.name === n)!.blocks, graceMs },
    planFaults(cluster.fork(), cfg.ops),
  );
  injector = faults;
  const simReaders =
    opts.readers === true
      ? new SimReaders({ cluster, workload: wl, checker, log, quiet, random: new SeededRandom((cfg.seed ^ READERS_STREAM) >>> 0), blockSize, writeLevel: cfg.timing.writeLevel, fail })
      : null;
  wl.ensureWriters();
  await run(() => wl.volumes.every((v) => v.writer !== null), START_MAX_MS);
  if (!failed() && !wl.volumes.every((v) => v.writer !== null)) fail({ guarantee: 'liveness', message: 'writers could not open their volumes on a healthy cluster' });

  // ---- workload with faults
  phase = 'workload';
  const cpuAt = (): number => {
    const c = process.cpuUsage();
    return (c.user + c.system) / 1000;
  };
  const timing = { workloadCpuMs: 0, settleCpuMs: 0, workloadSimMs: 0, settleSimMs: 0 };
  let mark = cpuAt();
  let simMark = clock.monotonic();
  const opsMax = 2 * cfg.ops; // required faults that keep failing to start get this long
  const tick = (): void => {
    if (failed()) return;
    if (wl.opsIssued >= cfg.ops && faults.requiredDone()) return;
    if (wl.opsIssued >= opsMax) return;
    wl.issueRandom();
    simReaders?.tick();
    for (const v of wl.volumes) if (v.writer === null) wl.ensureWriter(v);
    void faults.poll(wl.opsIssued);
    clock.schedule(cluster.admin, OP_GAP_MS[0] + random.int(OP_GAP_MS[1] - OP_GAP_MS[0]), tick);
  };
  tick();
  const workloadDone = (): boolean => (wl.opsIssued >= cfg.ops && faults.requiredDone()) || wl.opsIssued >= opsMax;
  await run(workloadDone, 24 * 3600_000);
  if (!failed() && !faults.requiredDone()) {
    fail({ guarantee: 'bug', message: `the seed could not inject a ring change, a crash and a partition within ${opsMax} requests (harness)` });
  }

  timing.workloadCpuMs = cpuAt() - mark;
  timing.workloadSimMs = clock.monotonic() - simMark;
  mark = cpuAt();
  simMark = clock.monotonic();
  // ---- settle: faults stop; then everything must work and converge
  if (!failed()) await settle();
  timing.settleCpuMs = cpuAt() - mark;
  timing.settleSimMs = clock.monotonic() - simMark;

  const result: SeedResult = {
    seed: cfg.seed,
    variant,
    ok: failure === null,
    failure,
    replay: replayCommand(cfg.seed, variant, cfg.ops, opts),
    hash: log.digest(),
    opsIssued: wl.opsIssued,
    simMs: clock.monotonic(),
    events: log.events,
    faults: faults.report(),
    config: cfg,
    tail: log.lastLines(),
    diagnosis,
    timing,
    coverage: { ...wl.coverage },
  };
  return result;

  /** Reads the given blocks of a volume through a read-only open on `p` and checks them against the model. */
  async function readBack(p: SimPeer, v: VolumeState, blocks: readonly number[]): Promise<Violation | null> {
    let io: VolumeIo | null = null;
    let err: unknown = null;
    void cluster.open(p, v.name, 'ro').then(
      (x) => (io = x),
      (e: unknown) => (err = e),
    );
    await run(() => io !== null || err !== null, CLIENT_TIMEOUT_MS);
    if (failed()) return null;
    if (io === null) return { guarantee: 'liveness', message: `peer ${p.index} could not open ${v.name} read-only at rest: ${String(err)}` };
    const reader: VolumeIo = io;
    for (const b of blocks) {
      let data: Buffer | null = null;
      let rerr: unknown = null;
      void reader.read(b * blockSize, blockSize).then(
        (d) => (data = d),
        (e: unknown) => (rerr = e),
      );
      await run(() => data !== null || rerr !== null, CLIENT_TIMEOUT_MS);
      if (failed()) return null;
      if (data === null) return { guarantee: 'liveness', message: `peer ${p.index} could not read block ${b} of ${v.name} at rest: ${String(rerr)}`, blocks: [[v.id, b]] };
      const bad = checker.checkRead(v.model, (b * blockSize) / SECTOR_BYTES, data);
      if (bad) return { ...bad, message: `read-back through peer ${p.index}: ${bad.message}`, blocks: [[v.id, b]] };
    }
    let closedRo = false;
    void reader.close().finally(() => (closedRo = true));
    await run(() => closedRo, CLIENT_TIMEOUT_MS);
    return null;
  }

  async function settle(): Promise<void> {
    phase = 'settle';
    log.add('settle: faults stop');
    faults.endAll();
    await run(() => wl.inflightCount() === 0, CLIENT_TIMEOUT_MS + 1_000);
    // Readers finish the request they are on, then close (each request is bounded by the client's timeout).
    simReaders?.stop();
    await run(() => simReaders === null || simReaders.idle(), 2 * CLIENT_TIMEOUT_MS + 1_000);
    await run(() => cluster.peers.every((p) => p.started), START_MAX_MS);
    if (failed()) return;
    if (!cluster.peers.every((p) => p.started)) return fail({ guarantee: 'liveness', message: `restarted peers did not start within ${START_MAX_MS} ms of the faults stopping` });
    // Quiet returns after the grace period; from then on every request must succeed.
    await run(() => faults.isQuiet(), graceMs + 1_000);
    wl.ensureWriters();
    const openBound = cfg.timing.sessionTtlSeconds * 1000 + wl.writeBoundMs() + 5_000;
    await run(() => wl.volumes.every((v) => v.writer !== null), openBound);
    if (failed()) return;
    const closed = wl.volumes.filter((v) => v.writer === null);
    if (closed.length > 0) return fail({ guarantee: 'liveness', message: `${closed.map((v) => v.name).join(', ')} could not be opened for writing within ${openBound} ms after the faults stopped` });
    const target = wl.opsIssued + AFTER_FAULT_OPS;
    const more = (): void => {
      if (failed() || wl.opsIssued >= target) return;
      // A writer fenced for good by a fault now over meets it at its first
      // request and is given up: the client attaches again (seed 21919).
      wl.ensureWriters();
      wl.issueRandom();
      clock.schedule(cluster.admin, OP_GAP_MS[0], more);
    };
    more();
    await run(() => wl.opsIssued >= target && wl.inflightCount() === 0, AFTER_FAULT_OPS * 1_000 + CLIENT_TIMEOUT_MS);
    if (failed()) return;
    if (wl.opsIssued < target || wl.inflightCount() > 0) return fail({ guarantee: 'liveness', message: 'requests after the faults stopped did not complete' });

    // Writers close (flushing); maintainers then finish what is left.
    let closedAll = false;
    void Promise.all(wl.volumes.map((v) => wl.closeWriter(v, 'settle'))).then(() => (closedAll = true));
    await run(() => closedAll, CLIENT_TIMEOUT_MS + 1_000);
    if (failed()) return;

    // Guarantee 5 within SETTLE_MAX_MS.
    const vols = wl.volumes.map((v) => ({ id: v.id, name: v.name, blocks: v.blocks }));
    let last: Violation | null = null;
    let converged = false;
    const deadline = clock.monotonic() + SETTLE_MAX_MS;
    while (!failed() && clock.monotonic() < deadline) {
      await run(() => false, SETTLE_POLL_MS);
      const ring = await cluster.ring();
      last = checker.checkPlacement(ring, vols);
      if (last === null) {
        converged = true;
        break;
      }
    }
    if (failed()) return;
    if (!converged) return fail({ guarantee: 'G5', message: `not reached within ${SETTLE_MAX_MS} ms of quiet: ${last?.message ?? ''}` });
    log.add('settle: placement converged');

    // Every volume reads back as the model says: in full through one
    // running peer, and a sample of its blocks through every other one
    // (a full read through each costs as much as the whole workload).
    const readers = cluster.peers.filter((x) => cluster.isRunning(x));
    for (const v of wl.volumes) {
      const full = readers[random.int(readers.length)]!;
      for (const p of readers) {
        const blocks = p === full ? [...Array(v.blocks).keys()] : sample(random, v.blocks, READBACK_SAMPLE_BLOCKS);
        const bad = await readBack(p, v, blocks);
        if (bad !== null) return fail(bad);
        if (failed()) return;
      }
    }
    log.add('settle: read-back matches the model');
  }
}

/** The state a failure is judged against, read straight from the twins (no client, no fault in the way). */
function diagnose(cluster: SimCluster, blocks: readonly (readonly [number, number])[]): string[] {
  const out: string[] = [];
  const ringEntry = cluster.etcd.get('ring');
  out.push(`ring: ${ringEntry?.value ?? 'none'}`);
  for (const p of cluster.peers) {
    const state = p.process === null ? 'never started' : p.process.state;
    const fence = [...p.fences.durable()].map(([v, t]) => `${v}:${t}`).join(',');
    out.push(`peer ${p.index} ${p.uuid.slice(0, 8)} ${state}${p.started ? ' started' : ''} incarnation ${p.incarnations} fences ${fence}`);
  }
  for (const { key, entry } of cluster.etcd.range('stale/')) out.push(`${key}: ${entry.value}`);
  for (const { key, entry } of cluster.etcd.range('volume-locks/')) out.push(`${key}: ${entry.value}`);
  for (const { key, entry } of cluster.etcd.range('volume-maint/')) out.push(`${key}: ${entry.value}`);
  for (const { key, entry } of cluster.etcd.range('volume-fence/')) out.push(`${key}: ${entry.value}`);
  for (const { key, entry } of cluster.etcd.range('moves/')) out.push(`${key}: ${entry.value}`);
  for (const [volumeId, index] of blocks) {
    const ref = { volumeId, generation: 1, index };
    for (const p of cluster.peers) {
      const m = p.store.meta(ref);
      const i = p.store.inspect(ref);
      out.push(`volume ${volumeId} block ${index} on peer ${p.index}: ${m.state} v${m.version} (t${Math.floor(m.version / 2 ** 32)}.${m.version % 2 ** 32})${m.suspect ? ' suspect' : ''} durable ${i.durable ? `${i.durable.state} v${i.durable.version}` : 'absent'}`);
    }
  }
  return out;
}

/** k distinct numbers below n, in random order. */
function sample(random: Random, n: number, k: number): number[] {
  const all = [...Array(n).keys()];
  for (let i = 0; i < Math.min(k, n); i++) {
    const j = i + random.int(n - i);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, Math.min(k, n));
}

/** One line for a failed seed: what, where, and how to replay it. */
export function describeFailure(r: SeedResult): string {
  const f = r.failure;
  if (f === null) return `seed ${r.seed}: ok`;
  return `seed ${r.seed}${r.variant ? ` (variant ${r.variant})` : ''}: ${f.guarantee} violated at step ${f.step} (${f.phase}, t=${(f.timeMs / 1000).toFixed(3)} s): ${f.message}\n  replay: ${r.replay}`;
}

export type { Guarantee };
