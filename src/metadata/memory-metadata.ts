import type { Logger } from 'pino';
import { assert } from '../util/assert.js';
import { TorusError } from '../errors/torus-error.js';
import { addToStale, narrowStaleSet, newStaleRecord, removeFromStale, staleRecordOf, type BlockRange, type StaleSet } from '../model/ranges.js';
import type {
  ClusterConfig,
  PeerRecord,
  RingAck,
  RingRecord,
  StaleRecord,
  VolumeHealthRecord,
  VolumeLockRecord,
  VolumeMoveRecord,
  VolumeRecord,
} from '../model/records.js';
import { minReplicasDefault } from '../ring/transition.js';
import { systemClock, type Clock } from '../util/clock.js';
import { systemIds, systemRandom, type Ids, type Random } from '../util/random.js';
import { formatSize } from '../util/size.js';
import {
  fenceIdOf,
  healthKey,
  KEYS,
  moveKey,
  movesVersionPrefix,
  parseMoveKey,
  peerKey,
  ringAckKey,
  staleKey,
  staleVolumePrefix,
  volumeFenceKey,
  volumeReleasedKey,
  volumeExpiredKey,
  volumeKey,
  volumeLockKey,
  volumeMaintKey,
  volumeReaderKey,
  volumeReadersPrefix,
} from './keys.js';
import { MemoryEtcd, type KvEvent, type KvOp } from './memory-etcd.js';
import { UnansweredLocks } from './unanswered-locks.js';
import { EarlierRunLocks } from './earlier-run-locks.js';
import type { MaintenanceLockOptions, MetadataService, MetadataSession, SessionEvent, VolumeLock, VolumeReaderLock } from './metadata-service.js';
import {
  decodeClusterConfig,
  decodeClusterSecret,
  decodeCounter,
  decodePeerRecord,
  decodeRingAck,
  decodeRingRecord,
  decodeStaleRecord,
  decodeVolumeHealthRecord,
  decodeVolumeLockRecord,
  decodeVolumeMoveRecord,
  decodeVolumeRecord,
  encodeRecord,
} from './record-codec.js';
import { assertSessionUsable, SessionListeners, type SessionState } from './session-listeners.js';
import {
  checkStaleAdd,
  type StaleAdd,
  checkStaleNarrow,
  checkStaleRemove,
  notInitialisedError,
  validateClusterParams,
  validateHolder,
  validateMoveRecord,
  validateHealthRecord,
  validatePeerUuid,
  validateRing,
  validateRingAck,
  validateVolumeId,
  validateVolumeName,
  validateVolumeSize,
  volumeFencedError,
  volumeInUseError,
  volumeNotFoundError,
  volumeIdNotFoundError,
  VOLUME_ID_MAX,
  CLUSTER_SECRET_BYTES,
  SESSION_TTL_MAX_SECONDS,
  volumeReadersError,
  checkExpiredForMaintenance,
} from './validate.js';

/**
 * How this client's link to "etcd" fails (simulation and tests):
 * - none: calls are answered;
 * - unavailable: every call fails at once with TORUS_ERR_ETCD_UNAVAILABLE;
 * - hang: every call waits the call timeout on the clock, then fails the same way, changing nothing;
 * - lose-replies: every call takes effect, then fails after the call timeout as if the answer were lost.
 * In every mode but none, keepalives fail (the lease runs out at its TTL) and
 * watches lose their stream; when the fault clears, each watch re-reads what
 * it watches and goes on from there (as EtcdMetadata's watches do).
 */
export type MemoryFault = 'none' | 'unavailable' | 'hang' | 'lose-replies';

/**
 * Calls that go wrong one at a time while the link is otherwise up (a
 * flaky network, an overloaded etcd): each call, drawn on its own, fails
 * before etcd applies it, or is applied and its answer lost (the caller
 * sees a timeout), or goes through. Watches are not touched.
 */
export interface MemoryFlakiness {
  readonly random: Random;
  /** Percent of calls that fail unapplied: the caller sees TORUS_ERR_ETCD_UNAVAILABLE at once. */
  readonly failPercent: number;
  /** Percent of calls applied whose answer is lost: the caller sees a timeout after the call timeout. */
  readonly losePercent: number;
  /** Counted here when given: calls failed, answers lost. */
  readonly counts?: { failed: number; lost: number };
}

export interface MemoryMetadataOptions {
  /** Drives lease expiry, keepalives, call timeouts and watch delivery; tests and simulations pass a virtual clock. */
  readonly clock?: Clock;
  readonly logger?: Logger;
  /** Share one "etcd" between several clients (peers of a simulated cluster); default: a new one. */
  readonly server?: MemoryEtcd;
  /** How long a hung call takes to fail, as EtcdMetadata's bound on each call. Default 5000 ms. */
  readonly callTimeoutMs?: number;
  /** For the cluster secret. */
  readonly random?: Random;
  /** For the cluster id. */
  readonly ids?: Ids;
  /**
   * Time on the wire, each way, of every call: uniform in [0, maxMs), drawn
   * from `random`. Calls made one after the other may then be served, and
   * answered, in another order, as by a real etcd (a read served before a
   * transaction commits, answered after it). Default: none, a call is
   * served and answered one microtask later.
   */
  readonly delays?: { readonly random: Random; readonly maxMs: number };
}

export const MEMORY_CALL_TIMEOUT_MS_DEFAULT = 5_000;
const ENDPOINT = 'memory';

interface Stoppable {
  /** The link is down: drop the stream. */
  suspend(): void;
  /** The link is back: re-read and watch again. */
  resume(): void;
  stop(): void;
}

/**
 * In-memory twin of EtcdMetadata for unit and simulation tests: the same key
 * layout (records are the same JSON text under the same keys), validation,
 * errors, lease semantics and fencing, on a MemoryEtcd and a Clock.
 *
 * Test hooks (not in MetadataService): setFault / setAvailable, revokeLease,
 * leaseIds, compact, and `server` for sharing or inspecting the store.
 */
export class MemoryMetadata implements MetadataService {
  readonly server: MemoryEtcd;
  private readonly clock: Clock;
  private readonly log: Logger | undefined;
  private readonly callTimeoutMs: number;
  private readonly random: Random;
  private readonly delays: { readonly random: Random; readonly maxMs: number } | null;
  private readonly ids: Ids;
  private readonly sessions = new Set<MemorySession>();
  private readonly watches = new Set<Stoppable>();
  private fault: MemoryFault = 'none';
  private flaky: MemoryFlakiness | null = null;
  private closed = false;

  constructor(opts: MemoryMetadataOptions = {}) {
    this.clock = opts.clock ?? systemClock;
    this.server = opts.server ?? new MemoryEtcd({ clock: this.clock });
    this.log = opts.logger?.child({ module: 'metadata', backend: 'memory' });
    this.callTimeoutMs = opts.callTimeoutMs ?? MEMORY_CALL_TIMEOUT_MS_DEFAULT;
    this.random = opts.random ?? systemRandom;
    this.delays = opts.delays ?? null;
    this.ids = opts.ids ?? systemIds;
  }

  // ---- test hooks ----

  setFault(fault: MemoryFault): void {
    const was = this.fault;
    this.fault = fault;
    if (was === 'none' && fault !== 'none') for (const w of this.watches) w.suspend();
    if (was !== 'none' && fault === 'none') {
      // Through the clock, like every delivery: the watches resume in order.
      this.clock.setTimeout(() => {
        if (this.fault === 'none' && !this.closed) for (const w of [...this.watches]) w.resume();
      }, 0);
    }
  }

  /** While the link is up (fault 'none'), calls fail or lose their answers one at a time; null: never. */
  setFlaky(flaky: MemoryFlakiness | null): void {
    this.flaky = flaky;
  }

  /** setFault('unavailable') or setFault('none'). */
  setAvailable(available: boolean): void {
    this.setFault(available ? 'none' : 'unavailable');
  }

  /** As if an operator (or etcd) revoked the lease: its keys vanish, its session is lost. */
  revokeLease(id: string): void {
    this.server.revokeLease(id, 'lease revoked');
  }

  leaseIds(): string[] {
    return this.server.leaseIds();
  }

  /** Drops the server's event history, as `etcdctl compact` does. */
  compact(): void {
    this.server.compact();
  }

  // ---- internals shared with sessions ----

  isAvailable(): boolean {
    return this.fault === 'none' && !this.closed;
  }

  nowIso(): string {
    return new Date(this.clock.now()).toISOString();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.clock.setTimeout(resolve, ms));
  }

  private timedOut(op: string): TorusError {
    return new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd at ${ENDPOINT} did not answer ${op} within ${this.callTimeoutMs} ms`, {
      details: { endpoints: ENDPOINT, op, timeoutMs: this.callTimeoutMs },
    });
  }

  private assertOpen(op: string): void {
    if (this.closed) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd client for ${ENDPOINT} is closed (${op})`);
  }

  /**
   * Every call is one of these: a round trip that may fail, around a body
   * that runs in one synchronous step (so it is atomic, like a transaction).
   */
  async op<T>(op: string, body: () => T): Promise<T> {
    // The link as it is when the call is made decides its fate, and a hung
    // call's timeout runs from then, as withEtcd's does. A flaky link that
    // is otherwise up gives this one call a fault of its own.
    const fault = this.fault === 'none' && this.flaky !== null ? this.drawFlaky(this.flaky) : this.fault;
    const timeout = fault === 'hang' || fault === 'lose-replies' ? this.sleep(this.callTimeoutMs) : null;
    await Promise.resolve();
    this.assertOpen(op);
    switch (fault) {
      case 'none': {
        if (this.delays === null) return body();
        await this.sleep(this.delays.random.next() * this.delays.maxMs);
        this.assertOpen(op);
        const result = body();
        await this.sleep(this.delays.random.next() * this.delays.maxMs);
        return result;
      }
      case 'unavailable':
        throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd at ${ENDPOINT} is unavailable (${op}): simulated outage`, { details: { endpoints: ENDPOINT, op } });
      case 'hang':
        await timeout;
        throw this.timedOut(op);
      case 'lose-replies':
        try {
          body();
        } catch {
          // The answer is lost either way.
        }
        await timeout;
        throw this.timedOut(op);
    }
  }

  /** One call's fate on a flaky link: refused unapplied, applied with its answer lost, or through. */
  private drawFlaky(f: MemoryFlakiness): MemoryFault {
    const x = f.random.int(100);
    const fate: MemoryFault = x < f.failPercent ? 'unavailable' : x < f.failPercent + f.losePercent ? 'lose-replies' : 'none';
    if (f.counts !== undefined && fate === 'unavailable') f.counts.failed++;
    if (f.counts !== undefined && fate === 'lose-replies') f.counts.lost++;
    return fate;
  }

  private getJson(key: string): string | null {
    return this.server.get(key)?.value ?? null;
  }

  private requireConfig(): ClusterConfig {
    const text = this.getJson(KEYS.config);
    if (text === null) throw notInitialisedError();
    return decodeClusterConfig(KEYS.config, text);
  }

  /** The volume with this id, by listing (volume keys are by name). */
  volumeById(volumeId: number): VolumeRecord | null {
    for (const { key, entry } of this.server.range(KEYS.volumesPrefix)) {
      const v = decodeVolumeRecord(key, entry.value);
      if (v.id === volumeId) return v;
    }
    return null;
  }

  fenceOf(volumeId: number): number {
    return decodeCounter(volumeFenceKey(volumeId), this.getJson(volumeFenceKey(volumeId)));
  }

  /** Whether the volume's newest token was let go cleanly (never locked counts). */
  newestReleased(volumeId: number): boolean {
    return decodeCounter(volumeReleasedKey(volumeId), this.getJson(volumeReleasedKey(volumeId))) === this.fenceOf(volumeId);
  }

  /** The newest token recorded as ended without a clean release (volume-expired/<id>, 0 when none). */
  expiredOf(volumeId: number): number {
    return decodeCounter(volumeExpiredKey(volumeId), this.getJson(volumeExpiredKey(volumeId)));
  }

  /**
   * What a lock transaction taking the next token writes besides the lock
   * and the fence: the newest token as expired when its lock did not end
   * cleanly. Returns those writes and the expired token the lock starts with.
   */
  private expiry(volumeId: number, previousReleased: boolean): { ops: KvOp[]; expiredToken: number } {
    const expired = this.expiredOf(volumeId);
    if (previousReleased) return { ops: [], expiredToken: expired };
    const fence = this.fenceOf(volumeId);
    return { ops: [{ type: 'put', key: volumeExpiredKey(volumeId), value: String(fence) }], expiredToken: Math.max(expired, fence) };
  }

  /** The reader locks of a volume, as stored. */
  readersOf(volumeId: number): VolumeLockRecord[] {
    return this.server.range(volumeReadersPrefix(volumeId)).map(({ key, entry }) => decodeVolumeLockRecord(key, entry.value));
  }

  /** Writer locks and reader locks exclude each other: a maintainer never blocks a writer. */
  tryLock(name: string, holder: string, leaseId: string): { volume: VolumeRecord; record: VolumeLockRecord; previousReleased: boolean; expiredToken: number } {
    const vText = this.getJson(volumeKey(name));
    if (vText === null) throw volumeNotFoundError(name);
    const volume = decodeVolumeRecord(volumeKey(name), vText);
    const held = this.getJson(volumeLockKey(volume.id));
    if (held !== null) throw volumeInUseError(name, decodeVolumeLockRecord(volumeLockKey(volume.id), held));
    const readers = this.readersOf(volume.id);
    if (readers.length > 0) throw volumeReadersError(name, readers, readers.length);
    const token = this.fenceOf(volume.id) + 1;
    const previousReleased = this.newestReleased(volume.id);
    const { ops, expiredToken } = this.expiry(volume.id, previousReleased);
    const record: VolumeLockRecord = { schema: 1, volumeId: volume.id, holder, token, acquiredAt: this.nowIso(), kind: 'writer' };
    this.server.commit([
      { type: 'put', key: volumeLockKey(volume.id), value: encodeRecord(record), lease: leaseId },
      { type: 'put', key: volumeFenceKey(volume.id), value: String(token) },
      ...ops,
    ]);
    return { volume, record, previousReleased, expiredToken };
  }

  /** A reader lock: refused while a writer holds the volume; readers share it. */
  tryLockForReading(name: string, holder: string, leaseId: string): { volume: VolumeRecord; key: string } {
    const vText = this.getJson(volumeKey(name));
    if (vText === null) throw volumeNotFoundError(name);
    const volume = decodeVolumeRecord(volumeKey(name), vText);
    const held = this.getJson(volumeLockKey(volume.id));
    if (held !== null) throw volumeInUseError(name, decodeVolumeLockRecord(volumeLockKey(volume.id), held));
    const record: VolumeLockRecord = { schema: 1, volumeId: volume.id, holder, token: this.fenceOf(volume.id), acquiredAt: this.nowIso(), kind: 'reader' };
    const key = volumeReaderKey(volume.id, leaseId);
    this.server.commit([{ type: 'put', key, value: encodeRecord(record), lease: leaseId }]);
    return { volume, key };
  }

  readerKeyHeld(key: string, leaseId: string): boolean {
    return this.server.get(key)?.lease === leaseId;
  }

  tryLockForMaintenance(volumeId: number, holder: string, leaseId: string, opts: MaintenanceLockOptions | undefined): { volume: VolumeRecord; record: VolumeLockRecord; previousReleased: boolean; expiredToken: number } {
    const volume = this.volumeById(volumeId);
    if (volume === null) throw volumeIdNotFoundError(volumeId);
    for (const key of [volumeLockKey(volumeId), volumeMaintKey(volumeId)]) {
      const held = this.getJson(key);
      if (held !== null) throw volumeInUseError(volume.name, decodeVolumeLockRecord(key, held));
    }
    const token = this.fenceOf(volumeId) + 1;
    const previousReleased = this.newestReleased(volumeId);
    checkExpiredForMaintenance(volume, token - 1, previousReleased, opts);
    const { ops, expiredToken } = this.expiry(volumeId, previousReleased);
    const record: VolumeLockRecord = { schema: 1, volumeId, holder, token, acquiredAt: this.nowIso(), kind: 'maintainer' };
    this.server.commit([
      { type: 'put', key: volumeMaintKey(volumeId), value: encodeRecord(record), lease: leaseId },
      { type: 'put', key: volumeFenceKey(volumeId), value: String(token) },
      ...ops,
    ]);
    return { volume, record, previousReleased, expiredToken };
  }

  lockKeyHeld(key: string, leaseId: string, token: number): boolean {
    const entry = this.server.get(key);
    return entry !== undefined && entry.lease === leaseId && decodeVolumeLockRecord(key, entry.value).token === token;
  }

  /** The lock record when `leaseId` holds the volume's writer lock under `token`; else TORUS_ERR_VOLUME_LOCK_LOST. */
  adoptLock(name: string, token: number, leaseId: string): { volume: VolumeRecord; record: VolumeLockRecord; previousReleased: boolean; expiredToken: number } {
    const vText = this.getJson(volumeKey(name));
    if (vText === null) throw volumeNotFoundError(name);
    const volume = decodeVolumeRecord(volumeKey(name), vText);
    const key = volumeLockKey(volume.id);
    const entry = this.server.get(key);
    if (entry === undefined) throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}" is no longer locked: the lock of lease ${leaseId} is gone`);
    const record = decodeVolumeLockRecord(key, entry.value);
    if (entry.lease !== leaseId || record.token !== token) {
      throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}" is locked by ${record.holder} (token ${record.token}, lease ${String(entry.lease)}), not by lease ${leaseId} with token ${token}`);
    }
    // The lock itself lives on: only its predecessor can have been let go.
    const previousReleased = decodeCounter(volumeReleasedKey(volume.id), this.getJson(volumeReleasedKey(volume.id))) === token - 1;
    // The run that wrote under this token is gone with what it knew of its
    // changes that failed half way: its token counts as expired.
    if (this.fenceOf(volume.id) !== token) throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}": a newer token than ${token} was handed out; the lock is no longer ours`);
    this.server.commit([{ type: 'put', key: volumeExpiredKey(volume.id), value: String(token) }]);
    return { volume, record, previousReleased, expiredToken: token };
  }

  /** Keeps a lock under its lease with the next token. */
  renewLockKey(key: string, leaseId: string, volumeId: number): VolumeLockRecord {
    const entry = this.server.get(key);
    if (entry === undefined || entry.lease !== leaseId) {
      throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `the lock ${key} is no longer held under lease ${leaseId}`);
    }
    const old = decodeVolumeLockRecord(key, entry.value);
    const token = this.fenceOf(volumeId) + 1;
    const record: VolumeLockRecord = { ...old, token, acquiredAt: this.nowIso() };
    this.server.commit([
      { type: 'put', key, value: encodeRecord(record), lease: leaseId },
      { type: 'put', key: volumeFenceKey(volumeId), value: String(token) },
    ]);
    return record;
  }

  unlockKey(key: string, leaseId: string): void {
    if (this.server.get(key)?.lease === leaseId) this.server.commit([{ type: 'delete', key }]);
  }

  /** A fenced lock let go while still held and still the newest token: recorded for the next holder. */
  unlockReleased(key: string, leaseId: string, volumeId: number, token: number): void {
    if (this.server.get(key)?.lease !== leaseId) return;
    if (this.fenceOf(volumeId) !== token) return this.unlockKey(key, leaseId);
    this.server.commit([
      { type: 'delete', key },
      { type: 'put', key: volumeReleasedKey(volumeId), value: String(token) },
    ]);
  }

  /**
   * A watch that survives lost streams and compaction: `resync` re-reads
   * the watched state (telling the caller when not `initial`) and returns
   * the revision it read at; the watch then goes on from the next revision.
   */
  private openWatch(spec: {
    readonly prefix: string;
    readonly exact: boolean;
    /** Start from this revision instead of re-reading first. */
    readonly startRevision: number | null;
    readonly resync: (initial: boolean) => number;
    readonly onEvents: (events: KvEvent[]) => void;
  }): Stoppable {
    let sub: { cancel(): void } | null = null;
    let stopped = false;
    const subscribe = (from: number): void => {
      sub = this.server.watch(
        spec.prefix,
        { exact: spec.exact, startRevision: from },
        (events) => {
          if (!stopped) spec.onEvents(events);
        },
        () => {
          sub = null;
          if (!stopped && this.isAvailable()) subscribe(spec.resync(false) + 1);
        },
      );
    };
    const handle: Stoppable = {
      suspend: () => {
        sub?.cancel();
        sub = null;
      },
      resume: () => {
        if (stopped || sub !== null) return;
        subscribe(spec.resync(false) + 1);
      },
      stop: () => {
        stopped = true;
        sub?.cancel();
        sub = null;
        this.watches.delete(handle);
      },
    };
    this.watches.add(handle);
    if (spec.startRevision === null) subscribe(spec.resync(true) + 1);
    else subscribe(spec.startRevision);
    return handle;
  }

  // ---- MetadataService ----

  async getClusterConfig(): Promise<ClusterConfig | null> {
    return this.op('get config', () => {
      const text = this.getJson(KEYS.config);
      return text === null ? null : decodeClusterConfig(KEYS.config, text);
    });
  }

  async initCluster(config: { blockSize: number; replication: number }, opts: { force: boolean }): Promise<ClusterConfig> {
    validateClusterParams(config);
    if (opts.force) await this.wipe();
    return this.op('init cluster', () => {
      const existing = this.getJson(KEYS.config);
      if (existing !== null) {
        const cfg = decodeClusterConfig(KEYS.config, existing);
        throw new TorusError(
          'TORUS_ERR_CLUSTER_ALREADY_INITIALISED',
          `the cluster in etcd at ${ENDPOINT} is already initialised (block size ${formatSize(cfg.blockSize)}, replication ${cfg.replication}, created ${cfg.createdAt}); re-initialising needs force, which deletes every volume`,
          { details: { ...cfg } },
        );
      }
      const record: ClusterConfig = { schema: 1, id: this.ids.uuid(), blockSize: config.blockSize, replication: config.replication, createdAt: this.nowIso() };
      const ring: RingRecord = { schema: 2, version: 1, replication: config.replication, minReplicas: minReplicasDefault(config.replication), members: [], transition: null };
      const ops: KvOp[] = [
        { type: 'put', key: KEYS.config, value: encodeRecord(record) },
        { type: 'put', key: KEYS.ring, value: encodeRecord(ring) },
      ];
      // A secret made before init (ensureClusterSecret) is kept: peers may use it already.
      if (this.getJson(KEYS.secret) === null) ops.push({ type: 'put', key: KEYS.secret, value: this.newSecret() });
      this.server.commit(ops);
      return record;
    });
  }

  private newSecret(): string {
    return this.random.bytes(CLUSTER_SECRET_BYTES).toString('hex');
  }

  async wipe(): Promise<number> {
    return this.op('wipe', () => {
      const n = this.server.range('').length;
      this.server.commit([{ type: 'deletePrefix', prefix: '' }]);
      return n;
    });
  }

  async listPeers(): Promise<PeerRecord[]> {
    return this.op('list peers', () => this.server.range(KEYS.peersPrefix).map(({ key, entry }) => decodePeerRecord(key, entry.value)));
  }

  async getRing(): Promise<RingRecord> {
    return this.op('get ring', () => {
      const text = this.getJson(KEYS.ring);
      if (text === null) throw notInitialisedError();
      return decodeRingRecord(KEYS.ring, text);
    });
  }

  async setRing(next: RingRecord): Promise<void> {
    validateRing(next);
    await this.op('set ring', () => {
      const text = this.getJson(KEYS.ring);
      if (text === null) throw notInitialisedError();
      const current = decodeRingRecord(KEYS.ring, text);
      if (next.version !== current.version + 1) {
        throw new TorusError(
          'TORUS_ERR_CLUSTER_CONFLICT',
          `ring changed concurrently: a change to ring version ${current.version} must carry version ${current.version + 1}, not ${next.version}; re-read the ring and retry`,
          { details: { currentVersion: current.version, proposedVersion: next.version } },
        );
      }
      this.server.commit([{ type: 'put', key: KEYS.ring, value: encodeRecord(next) }]);
    });
  }

  async watchRing(onChange: (ring: RingRecord) => void): Promise<() => Promise<void>> {
    let lastVersion = 0;
    const deliver = (text: string): void => {
      let ring: RingRecord;
      try {
        ring = decodeRingRecord(KEYS.ring, text);
      } catch (err) {
        this.log?.error({ err }, 'ignoring a ring record that does not decode');
        return;
      }
      if (ring.version <= lastVersion) return;
      lastVersion = ring.version;
      try {
        onChange(ring);
      } catch (err) {
        this.log?.error({ err }, 'ring watch callback threw');
      }
    };
    const watch = await this.op('watch ring', () => {
      if (this.getJson(KEYS.ring) === null) throw notInitialisedError();
      return this.openWatch({
        prefix: KEYS.ring,
        exact: true,
        startRevision: null,
        resync: () => {
          const text = this.getJson(KEYS.ring);
          if (text === null) lastVersion = 0;
          else deliver(text);
          return this.server.revision();
        },
        onEvents: (events) => {
          for (const e of events) {
            if (e.value === null) lastVersion = 0; // wiped: a new cluster starts again at version 1
            else deliver(e.value);
          }
        },
      });
    });
    return async () => watch.stop();
  }

  // ---- cluster secret

  async getClusterSecret(): Promise<string | null> {
    return this.op('get secret', () => {
      const text = this.getJson(KEYS.secret);
      return text === null ? null : decodeClusterSecret(KEYS.secret, text);
    });
  }

  async ensureClusterSecret(): Promise<string> {
    return this.op('ensure secret', () => {
      const text = this.getJson(KEYS.secret);
      if (text !== null) return decodeClusterSecret(KEYS.secret, text);
      const secret = this.newSecret();
      this.server.commit([{ type: 'put', key: KEYS.secret, value: secret }]);
      return secret;
    });
  }

  // ---- fencing tokens

  async getFence(volumeId: number): Promise<number> {
    return this.op(`get fence ${volumeId}`, () => this.fenceOf(volumeId));
  }

  private readFences(): { fences: Map<number, number>; revision: number } {
    const fences = new Map<number, number>();
    for (const { key, entry } of this.server.range(KEYS.volumeFencePrefix)) fences.set(fenceIdOf(key), decodeCounter(key, entry.value));
    return { fences, revision: this.server.revision() };
  }

  async listFences(): Promise<{ fences: Map<number, number>; revision: number }> {
    return this.op('list fences', () => this.readFences());
  }

  async watchFences(
    revision: number,
    onFence: (volumeId: number, token: number, revision: number) => void,
    onResync: (all: { fences: Map<number, number>; revision: number }) => void,
  ): Promise<() => Promise<void>> {
    const safely = (fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        this.log?.error({ err }, 'fence watch callback threw');
      }
    };
    const watch = await this.op('watch fences', () =>
      this.openWatch({
        prefix: KEYS.volumeFencePrefix,
        exact: false,
        startRevision: revision + 1,
        resync: () => {
          const all = this.readFences();
          safely(() => onResync(all));
          return all.revision;
        },
        onEvents: (events) => {
          for (const e of events) {
            // Deletes come with deleted volumes: no token to learn.
            if (e.value === null) continue;
            let id: number;
            let token: number;
            try {
              id = fenceIdOf(e.key);
              token = decodeCounter(e.key, e.value);
            } catch (err) {
              this.log?.error({ err }, 'ignoring a fence that does not decode');
              continue;
            }
            safely(() => onFence(id, token, e.revision));
          }
        },
      }),
    );
    return async () => watch.stop();
  }

  // ---- stale records

  async getStale(volumeId: number): Promise<StaleRecord[]> {
    return this.op(`get stale ${volumeId}`, () => this.server.range(staleVolumePrefix(volumeId)).map(({ key, entry }) => decodeStaleRecord(key, entry.value)));
  }

  async listStale(): Promise<StaleRecord[]> {
    return this.op('list stale', () => this.server.range(KEYS.stalePrefix).map(({ key, entry }) => decodeStaleRecord(key, entry.value)));
  }

  async addStale(volumeId: number, peer: string, add: StaleAdd): Promise<void> {
    const { ranges, unsure } = checkStaleAdd(volumeId, peer, add);
    await this.op(`add stale ${volumeId}/${peer}`, () => {
      if (this.getJson(volumeFenceKey(volumeId)) === null) throw volumeIdNotFoundError(volumeId);
      if (add.token !== undefined && this.fenceOf(volumeId) !== add.token) throw volumeFencedError(volumeId, add.token, this.fenceOf(volumeId));
      const key = staleKey(volumeId, peer);
      const text = this.getJson(key);
      const current = text === null ? null : decodeStaleRecord(key, text);
      const next = addToStale(current, { all: add.all === true, ranges, unsure });
      if (current !== null && current.all === next.all && sameRanges(current.ranges, next.ranges) && sameRanges(current.unsure ?? [], next.unsure ?? [])) return;
      this.server.commit([{ type: 'put', key, value: encodeRecord(newStaleRecord(volumeId, peer, next, this.nowIso())) }]);
    });
  }

  async removeStale(volumeId: number, peer: string, ranges: readonly BlockRange[] | 'all', token: number): Promise<void> {
    const remove = checkStaleRemove(volumeId, peer, ranges, token);
    await this.changeStale(volumeId, peer, token, 'remove', (current) => removeFromStale(current, remove));
  }

  async narrowStale(volumeId: number, peer: string, keep: readonly BlockRange[], token: number): Promise<void> {
    const kept = checkStaleNarrow(volumeId, peer, keep, token);
    await this.changeStale(volumeId, peer, token, 'narrow', (current) => narrowStaleSet(current, kept));
  }

  /** A fenced change of one stale record (null: none): `next` returns the record itself when nothing changes. */
  private async changeStale(volumeId: number, peer: string, token: number, what: string, next: (current: StaleRecord | null) => StaleSet | null): Promise<void> {
    await this.op(`${what} stale ${volumeId}/${peer}`, () => {
      const fence = this.fenceOf(volumeId);
      if (fence !== token) throw volumeFencedError(volumeId, token, fence);
      const key = staleKey(volumeId, peer);
      const text = this.getJson(key);
      const current = text === null ? null : decodeStaleRecord(key, text);
      const after = next(current);
      if (after === current) return;
      if (after === null) this.server.commit([{ type: 'delete', key }]);
      else if (current === null) this.server.commit([{ type: 'put', key, value: encodeRecord(newStaleRecord(volumeId, peer, after, this.nowIso())) }]);
      else this.server.commit([{ type: 'put', key, value: encodeRecord(staleRecordOf(current, after, this.nowIso())) }]);
    });
  }

  // ---- ring transitions

  async listRingAcks(): Promise<RingAck[]> {
    return this.op('list ring acks', () => this.server.range(KEYS.ringAcksPrefix).map(({ key, entry }) => decodeRingAck(key, entry.value)));
  }

  async listVolumeMoves(ringVersion: number): Promise<VolumeMoveRecord[]> {
    return this.op(`list moves ${ringVersion}`, () =>
      this.server
        .range(movesVersionPrefix(ringVersion))
        .map(({ key, entry }) => decodeVolumeMoveRecord(key, entry.value))
        .sort((a, b) => a.volumeId - b.volumeId),
    );
  }

  async putVolumeMove(record: VolumeMoveRecord, token: number): Promise<void> {
    validateMoveRecord(record, token);
    await this.op(`put move ${record.ringVersion}/${record.volumeId}`, () => {
      const fence = this.fenceOf(record.volumeId);
      if (fence !== token) throw volumeFencedError(record.volumeId, token, fence);
      this.server.commit([{ type: 'put', key: moveKey(record.ringVersion, record.volumeId), value: encodeRecord(record) }]);
    });
  }

  async pruneVolumeMoves(belowRingVersion: number): Promise<void> {
    await this.op(`prune moves below ${belowRingVersion}`, () => {
      const old = this.server.range(KEYS.movesPrefix).filter(({ key }) => {
        const k = parseMoveKey(key);
        return k === null || k.ringVersion < belowRingVersion;
      });
      this.server.commit(old.map(({ key }) => ({ type: 'delete', key })));
    });
  }

  // ---- health

  async listVolumeHealth(): Promise<VolumeHealthRecord[]> {
    return this.op('list health', () =>
      this.server
        .range(KEYS.healthPrefix)
        .map(({ key, entry }) => decodeVolumeHealthRecord(key, entry.value))
        .sort((a, b) => a.volumeId - b.volumeId),
    );
  }

  async putVolumeHealth(record: VolumeHealthRecord): Promise<void> {
    validateHealthRecord(record);
    await this.op(`put health ${record.volumeId}`, () => {
      if (this.getJson(volumeFenceKey(record.volumeId)) === null) throw volumeIdNotFoundError(record.volumeId);
      this.server.commit([{ type: 'put', key: healthKey(record.volumeId), value: encodeRecord(record) }]);
    });
  }

  // ---- volumes

  async createVolume(name: string, size: number, opts: { readonly admit?: (volumes: readonly VolumeRecord[]) => void } = {}): Promise<VolumeRecord> {
    validateVolumeName(name);
    validateVolumeSize(size);
    return this.op(`create volume ${name}`, () => {
      const config = this.requireConfig();
      if (this.getJson(volumeKey(name)) !== null) throw new TorusError('TORUS_ERR_VOLUME_EXISTS', `a volume named "${name}" already exists`, { details: { volume: name } });
      // One synchronous step: the listing and the create are one transaction.
      opts.admit?.(this.server.range(KEYS.volumesPrefix).map(({ key, entry }) => decodeVolumeRecord(key, entry.value)));
      const id = decodeCounter(KEYS.volumeIdCounter, this.getJson(KEYS.volumeIdCounter)) + 1;
      if (id > VOLUME_ID_MAX) throw new TorusError('TORUS_ERR_ARG_INVALID', 'no volume ids are left in this cluster');
      const record: VolumeRecord = { schema: 1, id, name, type: 'block', size, blockSize: config.blockSize, generation: 1, createdAt: this.nowIso() };
      this.server.commit([
        { type: 'put', key: KEYS.volumeIdCounter, value: String(id) },
        { type: 'put', key: volumeKey(name), value: encodeRecord(record) },
      ]);
      return record;
    });
  }

  async getVolume(name: string): Promise<VolumeRecord> {
    validateVolumeName(name);
    return this.op(`get volume ${name}`, () => {
      const text = this.getJson(volumeKey(name));
      if (text === null) throw volumeNotFoundError(name);
      return decodeVolumeRecord(volumeKey(name), text);
    });
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    return this.op('list volumes', () =>
      this.server
        .range(KEYS.volumesPrefix)
        .map(({ key, entry }) => decodeVolumeRecord(key, entry.value))
        .sort((a, b) => a.id - b.id),
    );
  }

  async deleteVolume(name: string, opts: { readonly id?: number } = {}): Promise<VolumeRecord> {
    validateVolumeName(name);
    return this.op(`delete volume ${name}`, () => {
      const text = this.getJson(volumeKey(name));
      if (text === null) throw volumeNotFoundError(name);
      const record = decodeVolumeRecord(volumeKey(name), text);
      if (opts.id !== undefined && record.id !== opts.id) throw volumeNotFoundError(name);
      const lock = this.getJson(volumeLockKey(record.id));
      if (lock !== null) throw volumeInUseError(name, decodeVolumeLockRecord(volumeLockKey(record.id), lock));
      const readers = this.readersOf(record.id);
      if (readers.length > 0) throw volumeReadersError(name, readers, readers.length);
      // Ids are never reused: every record keyed by this id can go, and a
      // maintainer still at work finds its lock and fence gone.
      const moves = this.server.range(KEYS.movesPrefix).filter(({ key }) => parseMoveKey(key)?.volumeId === record.id);
      this.server.commit([
        { type: 'delete', key: volumeKey(name) },
        { type: 'delete', key: volumeFenceKey(record.id) },
        { type: 'delete', key: volumeReleasedKey(record.id) },
        { type: 'delete', key: volumeExpiredKey(record.id) },
        { type: 'delete', key: volumeMaintKey(record.id) },
        { type: 'delete', key: healthKey(record.id) },
        { type: 'deletePrefix', prefix: staleVolumePrefix(record.id) },
        ...moves.map(({ key }): KvOp => ({ type: 'delete', key })),
      ]);
      return record;
    });
  }

  async getVolumeExpired(volumeId: number): Promise<number> {
    return this.op(`get expired token of volume ${volumeId}`, () => this.expiredOf(volumeId));
  }

  async getVolumeLock(volumeId: number): Promise<VolumeLockRecord | null> {
    return this.op(`get volume lock ${volumeId}`, () => {
      const text = this.getJson(volumeLockKey(volumeId));
      return text === null ? null : decodeVolumeLockRecord(volumeLockKey(volumeId), text);
    });
  }

  async listVolumeReaders(volumeId: number): Promise<VolumeLockRecord[]> {
    return this.op(`list readers of volume ${volumeId}`, () => this.readersOf(volumeId).sort((a, b) => (a.acquiredAt < b.acquiredAt ? -1 : a.acquiredAt > b.acquiredAt ? 1 : 0)));
  }

  async volumeIdsForGc(): Promise<{ live: number[]; lastId: number }> {
    return this.op('list volume ids', () => {
      const lastId = decodeCounter(KEYS.volumeIdCounter, this.getJson(KEYS.volumeIdCounter));
      const live = this.server
        .range(KEYS.volumesPrefix)
        .map(({ key, entry }) => decodeVolumeRecord(key, entry.value).id)
        .sort((a, b) => a - b);
      return { live, lastId };
    });
  }

  async watchVolumeDeletes(onDelete: () => void): Promise<() => Promise<void>> {
    const safely = (): void => {
      try {
        onDelete();
      } catch (err) {
        this.log?.error({ err }, 'volume watch callback threw');
      }
    };
    const watch = await this.op('watch volumes', () =>
      this.openWatch({
        prefix: KEYS.volumesPrefix,
        exact: false,
        startRevision: null,
        // After a lost stream a deletion may have been missed: say so once.
        resync: (initial) => {
          if (!initial) safely();
          return this.server.revision();
        },
        onEvents: (events) => {
          for (const e of events) if (e.type === 'delete') safely();
        },
      }),
    );
    return async () => watch.stop();
  }

  async revokeStaleLease(id: string): Promise<void> {
    if (!/^[0-9]+$/.test(id)) throw new TorusError('TORUS_ERR_ARG_INVALID', `lease id "${id}" is not a decimal number`);
    await this.op(`revoke lease ${id}`, () => this.server.revokeLease(id, 'lease revoked'));
  }

  async openSession(opts: { ttlSeconds: number }): Promise<MetadataSession> {
    const ttl = opts.ttlSeconds;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > SESSION_TTL_MAX_SECONDS) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `session TTL ${String(ttl)} s must be a whole number from 1 to ${SESSION_TTL_MAX_SECONDS}`);
    }
    const grantedAt = this.clock.monotonic();
    const leaseId = await this.op('grant lease', () => this.server.grantLease(ttl * 1000));
    const session = new MemorySession(this, leaseId, ttl * 1000, grantedAt, this.clock, () => this.sessions.delete(session));
    this.sessions.add(session);
    return session;
  }

  async resumeSession(opts: { leaseId: string; ttlSeconds: number }): Promise<MetadataSession> {
    const ttl = opts.ttlSeconds;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > SESSION_TTL_MAX_SECONDS) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `session TTL ${String(ttl)} s must be a whole number from 1 to ${SESSION_TTL_MAX_SECONDS}`);
    }
    const sentAt = this.clock.monotonic();
    // A keepalive answered for the lease is the proof it still exists; the deadline runs from it.
    const alive = await this.op(`resume lease ${opts.leaseId}`, () => (this.server.keepalive(opts.leaseId) ? this.server.revision() : null));
    if (alive === null) throw new TorusError('TORUS_ERR_SESSION_LOST', `etcd lease ${opts.leaseId} has expired or was revoked`);
    const session = new MemorySession(this, opts.leaseId, ttl * 1000, sentAt, this.clock, () => this.sessions.delete(session), BigInt(alive));
    this.sessions.add(session);
    return session;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    for (const s of [...this.sessions]) s.stopAndRevoke();
    for (const w of [...this.watches]) w.stop();
    this.closed = true;
  }
}

function sameRanges(a: readonly BlockRange[], b: readonly BlockRange[]): boolean {
  return a.length === b.length && a.every((r, i) => r[0] === b[i]![0] && r[1] === b[i]![1]);
}

class MemorySession implements MetadataSession {
  readonly id: string;
  private readonly listeners = new SessionListeners();
  private state: SessionState = 'healthy';
  private deadline: number;
  private timer: { cancel(): void } | undefined;
  private readonly intervalMs: number;
  private readonly unsubscribe: () => void;
  private readonly unanswered: UnansweredLocks;
  /** The earlier run's locks on a resumed lease; null for a session of its own. */
  private readonly earlierRun: EarlierRunLocks | null;

  constructor(
    private readonly md: MemoryMetadata,
    leaseId: string,
    private readonly ttlMs: number,
    grantedAt: number,
    private readonly clock: Clock,
    private readonly onClosed: () => void,
    /** The revision when resumeSession found the lease alive; null for a session of its own. */
    resumedAt: bigint | null = null,
  ) {
    this.id = leaseId;
    this.earlierRun = resumedAt === null ? null : new EarlierRunLocks(leaseId, resumedAt);
    this.deadline = grantedAt + ttlMs;
    this.unanswered = new UnansweredLocks(clock);
    // Same cadence as the etcd3 client: a third of the TTL.
    this.intervalMs = Math.max(1, Math.floor(ttlMs / 3));
    this.unsubscribe = md.server.onLeaseGone(leaseId, (why) => this.markLost(why));
    this.schedule();
  }

  private schedule(): void {
    this.timer = this.clock.setTimeout(() => this.tick(), this.intervalMs);
  }

  private tick(): void {
    if (this.state === 'lost' || this.state === 'closed') return;
    const sentAt = this.clock.monotonic();
    if (!this.md.isAvailable()) {
      if (this.state === 'healthy') {
        this.state = 'degraded';
        this.emit({ type: 'degraded', err: new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd at ${ENDPOINT} is unavailable (lease keepalive): simulated outage`) });
      }
      // The server expires the lease at its deadline whatever this side thinks.
      if (sentAt >= this.deadline || !this.md.server.hasLease(this.id)) {
        this.markLost('no keepalive answered before the lease deadline');
        return;
      }
    } else if (this.md.server.keepalive(this.id)) {
      this.deadline = sentAt + this.ttlMs;
      if (this.state === 'degraded') {
        this.state = 'healthy';
        this.emit({ type: 'healthy' });
      }
    } else {
      this.markLost('lease expired');
      return;
    }
    this.schedule();
  }

  private markLost(why: string): void {
    if (this.state === 'lost' || this.state === 'closed') return;
    this.state = 'lost';
    this.timer?.cancel();
    this.unsubscribe();
    this.emit({ type: 'lost', err: new TorusError('TORUS_ERR_SESSION_LOST', `etcd session ${this.id} lost its lease: ${why}`) });
  }

  private emit(event: SessionEvent): void {
    this.listeners.emit(event);
  }

  private assertUsable(op: string): void {
    assertSessionUsable(this.state, this.id, op);
  }

  /** A call under the lease: "etcd" saying the lease is gone makes the session lost at once. */
  private async leased<T>(op: string, body: () => T): Promise<T> {
    this.assertUsable(op);
    try {
      return await this.md.op(op, () => {
        if (!this.md.server.hasLease(this.id)) throw new TorusError('TORUS_ERR_SESSION_LOST', `${op}: the session's etcd lease has expired or was revoked`);
        return body();
      });
    } catch (err) {
      if (err instanceof TorusError && err.code === 'TORUS_ERR_SESSION_LOST') this.markLost(`etcd no longer knows the lease (${op})`);
      throw err;
    }
  }

  on(listener: (event: SessionEvent) => void): () => void {
    return this.listeners.on(listener);
  }

  leaseDeadline(): number {
    return this.deadline;
  }

  async putPeer(record: PeerRecord): Promise<void> {
    validatePeerUuid(record.uuid);
    await this.leased(`put peer ${record.uuid}`, () => {
      this.md.server.commit([{ type: 'put', key: peerKey(record.uuid), value: encodeRecord(record), lease: this.id }]);
    });
  }

  async lockVolume(name: string, holder: string): Promise<VolumeLock> {
    validateVolumeName(name);
    validateHolder(holder);
    await this.reclaimQuietly();
    const { volume, record, previousReleased, expiredToken } = await this.lockTxn(`lock volume ${name}`, () => {
      const got = this.md.tryLock(name, holder, this.id);
      return { got, key: volumeLockKey(got.volume.id), value: encodeRecord(got.record) };
    });
    return new MemoryVolumeLock(this.md, this.id, volume, record, volumeLockKey(volume.id), previousReleased, expiredToken);
  }

  async lockVolumeForReading(name: string, holder: string): Promise<VolumeReaderLock> {
    validateVolumeName(name);
    validateHolder(holder);
    await this.reclaimQuietly();
    const { volume, key } = await this.lockTxn(`lock volume ${name} for reading`, () => {
      const got = this.md.tryLockForReading(name, holder, this.id);
      return { got, key: got.key, value: this.md.server.get(got.key)!.value };
    });
    return new MemoryVolumeReaderLock(this.md, this.id, volume, holder, key);
  }

  async lockVolumeForMaintenance(volumeId: number, holder: string, opts?: MaintenanceLockOptions): Promise<VolumeLock> {
    validateVolumeId(volumeId);
    validateHolder(holder);
    await this.reclaimQuietly();
    const { volume, record, previousReleased, expiredToken } = await this.lockTxn(`lock volume ${volumeId} for maintenance`, () => {
      const got = this.md.tryLockForMaintenance(volumeId, holder, this.id, opts);
      return { got, key: volumeMaintKey(volumeId), value: encodeRecord(got.record) };
    });
    return new MemoryVolumeLock(this.md, this.id, volume, record, volumeMaintKey(volume.id), previousReleased, expiredToken);
  }

  /**
   * A lock call under the lease. When the call took effect and its answer
   * was lost (the twin's lose-replies), what it wrote is remembered for
   * reclaimUnansweredLocks, as EtcdSession does for a call without answer.
   */
  private async lockTxn<T>(op: string, body: () => { got: T; key: string; value: string }): Promise<T> {
    const wrote: { key: string; value: string }[] = [];
    try {
      const { got } = await this.leased(op, () => {
        const r = body();
        wrote.push(r);
        return r;
      });
      return got;
    } catch (err) {
      for (const w of wrote) this.unanswered.add(w.key, w.value);
      throw err;
    }
  }

  async reclaimUnansweredLocks(): Promise<number> {
    if (this.state === 'lost' || this.state === 'closed') {
      this.unanswered.clear();
      return 0;
    }
    let released = 0;
    for (const lock of this.unanswered.list()) {
      const letGo = await this.md.op(`let go of unanswered lock ${lock.key}`, () => {
        const entry = this.md.server.get(lock.key);
        if (entry === undefined || entry.lease !== this.id || entry.value !== lock.value) return false;
        this.md.server.commit([{ type: 'delete', key: lock.key }]);
        return true;
      });
      this.unanswered.settle(lock, letGo);
      if (letGo) released++;
    }
    if (this.earlierRun?.wanted === true) released += await this.releaseLocksOfEarlierRun();
    return released;
  }

  async releaseLocksOfEarlierRun(): Promise<number> {
    if (this.earlierRun === null || this.state === 'lost' || this.state === 'closed') return 0;
    const server = this.md.server;
    return this.earlierRun.release({
      list: (p) => this.md.op(`list ${p}`, () => server.range(p).map(({ key, entry }) => ({ key, lease: entry.lease, modRevision: BigInt(entry.modRevision) }))),
      letGo: (kv) =>
        this.md.op(`let go of ${kv.key} left by the earlier run`, () => {
          const entry = server.get(kv.key);
          if (entry === undefined || entry.lease !== this.id || BigInt(entry.modRevision) !== kv.modRevision) return false;
          server.commit([{ type: 'delete', key: kv.key }]);
          return true;
        }),
    });
  }

  /** reclaimUnansweredLocks before a lock call: a failure leaves the entries for the next try. */
  private async reclaimQuietly(): Promise<void> {
    if (this.unanswered.size === 0) return;
    await this.reclaimUnansweredLocks().catch(() => undefined);
  }

  async ackRing(ack: { readonly peer: string | null; readonly kind: 'peer' | 'client'; readonly ringVersion: number; readonly fenceRevision: number }): Promise<void> {
    const record: RingAck = { schema: 1, lease: this.id, peer: ack.peer, kind: ack.kind, ringVersion: ack.ringVersion, fenceRevision: ack.fenceRevision, updatedAt: this.md.nowIso() };
    validateRingAck(record);
    await this.leased('ack ring', () => {
      this.md.server.commit([{ type: 'put', key: ringAckKey(this.id), value: encodeRecord(record), lease: this.id }]);
    });
  }

  async adoptVolumeLock(name: string, token: number): Promise<VolumeLock> {
    validateVolumeName(name);
    const { volume, record, previousReleased, expiredToken } = await this.leased(`adopt lock of volume ${name}`, () => this.md.adoptLock(name, token, this.id));
    return new MemoryVolumeLock(this.md, this.id, volume, record, volumeLockKey(volume.id), previousReleased, expiredToken);
  }

  /** Stops keepalives without revoking: the lease and its keys live until the TTL (see resumeSession). */
  async suspend(): Promise<void> {
    if (this.state === 'closed' || this.state === 'lost') return;
    await this.md.op(`keepalive lease ${this.id}`, () => this.md.server.keepalive(this.id)).catch(() => undefined);
    this.state = 'closed';
    this.timer?.cancel();
    this.unsubscribe();
    this.onClosed();
  }

  /** The client is closing: no more keepalives, and the lease goes without a 'lost' event. */
  stopAndRevoke(): void {
    const wasLive = this.state !== 'lost' && this.state !== 'closed';
    this.state = 'closed';
    this.timer?.cancel();
    this.unsubscribe();
    this.onClosed();
    if (wasLive) this.md.server.revokeLease(this.id, 'revoked by owner');
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    const wasLost = this.state === 'lost';
    this.state = 'closed';
    this.timer?.cancel();
    this.unsubscribe();
    this.onClosed();
    if (wasLost) return;
    await this.md.op(`revoke lease ${this.id}`, () => this.md.server.revokeLease(this.id, 'revoked by owner'));
  }
}

class MemoryVolumeLock implements VolumeLock {
  readonly token: number;
  readonly holder: string;
  readonly kind: 'writer' | 'maintainer';
  private released = false;
  private fenced = false;
  /** markUnsettled: a change under this lock may lack a record; never let go cleanly. */
  private unsettled = false;

  get session(): string {
    return this.leaseId;
  }

  constructor(
    private readonly md: MemoryMetadata,
    private readonly leaseId: string,
    readonly volume: VolumeRecord,
    record: VolumeLockRecord,
    private readonly key: string,
    readonly previousReleased: boolean,
    readonly expiredToken: number,
  ) {
    this.token = record.token;
    this.holder = record.holder;
    const kind = record.kind ?? 'writer';
    // Reader locks are VolumeReaderLocks: a writer or maintainer lock is never made from a reader record.
    assert(kind !== 'reader', `lock ${key} made from a reader record`);
    this.kind = kind;
  }

  markFenced(): void {
    this.fenced = true;
  }

  markUnsettled(): void {
    this.unsettled = true;
  }

  async stillHeld(): Promise<boolean> {
    return this.md.op(`check lock ${this.key}`, () => this.md.lockKeyHeld(this.key, this.leaseId, this.token));
  }

  async renew(): Promise<VolumeLock> {
    const record = await this.md.op(`renew ${this.key}`, () => this.md.renewLockKey(this.key, this.leaseId, this.volume.id));
    // The previous token was ours, held without a gap.
    return new MemoryVolumeLock(this.md, this.leaseId, this.volume, record, this.key, true, this.expiredToken);
  }

  async release(): Promise<void> {
    if (this.released) return;
    await this.md.op(`unlock ${this.key}`, () => (this.fenced && !this.unsettled ? this.md.unlockReleased(this.key, this.leaseId, this.volume.id, this.token) : this.md.unlockKey(this.key, this.leaseId)));
    this.released = true;
  }
}

class MemoryVolumeReaderLock implements VolumeReaderLock {
  readonly kind = 'reader' as const;
  private released = false;

  constructor(
    private readonly md: MemoryMetadata,
    private readonly leaseId: string,
    readonly volume: VolumeRecord,
    readonly holder: string,
    private readonly key: string,
  ) {}

  async stillHeld(): Promise<boolean> {
    return this.md.op(`check lock ${this.key}`, () => this.md.readerKeyHeld(this.key, this.leaseId));
  }

  async release(): Promise<void> {
    if (this.released) return;
    await this.md.op(`unlock ${this.key}`, () => this.md.unlockKey(this.key, this.leaseId));
    this.released = true;
  }
}
