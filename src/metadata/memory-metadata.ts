import { randomUUID } from 'node:crypto';
import { assertSessionUsable, SessionListeners, type SessionState } from './session-listeners.js';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { ClusterConfig, PeerRecord, RingRecord, VolumeLockRecord, VolumeRecord } from '../model/records.js';
import { systemClock, type Clock } from '../util/clock.js';
import { formatSize } from '../util/size.js';
import type { MetadataService, MetadataSession, SessionEvent, VolumeLock } from './metadata-service.js';
import {
  decodeClusterConfig,
  decodePeerRecord,
  decodeRingRecord,
  decodeVolumeLockRecord,
  decodeVolumeRecord,
  encodeRecord,
} from './record-codec.js';
import {
  notInitialisedError,
  validateClusterParams,
  validatePeerUuid,
  validateRing,
  validateVolumeName,
  validateVolumeSize,
  volumeInUseError,
  volumeNotFoundError,
  VOLUME_ID_MAX,
} from './validate.js';

export interface MemoryMetadataOptions {
  /** Drives lease expiry and keepalives; tests pass a manual clock. */
  readonly clock?: Clock;
  readonly logger?: Logger;
}

interface Lease {
  readonly id: string;
  readonly ttlMs: number;
  expiresAt: number; // monotonic ms
  expiryTimer: { cancel(): void } | undefined;
  onGone: ((why: string) => void) | undefined;
}

interface Leased {
  readonly json: string;
  readonly leaseId: string;
}

const SESSION_TTL_MAX_SECONDS = 3600;
const HOLDER_CHARS_MAX = 512;

/**
 * In-memory twin of EtcdMetadata for unit and simulation tests: the same
 * validation, errors, lease semantics and fencing, with time from a Clock.
 * Records are kept as JSON text, as in etcd, so no caller can alias them.
 *
 * Test hooks (not in MetadataService): setAvailable(false) makes every call
 * fail with TORUS_ERR_ETCD_UNAVAILABLE and keepalives fail (the lease then
 * expires at its TTL); revokeLease(id) revokes a lease behind its owner's back.
 */
export class MemoryMetadata implements MetadataService {
  private readonly clock: Clock;
  private readonly log: Logger | undefined;
  private config: string | null = null;
  private ring: string | null = null;
  private volumeIdCounter = 0;
  private readonly volumes = new Map<string, string>();
  private readonly locks = new Map<number, Leased>();
  private readonly fences = new Map<number, number>();
  private readonly peers = new Map<string, Leased>();
  private readonly leases = new Map<string, Lease>();
  private readonly ringWatchers = new Set<(json: string | null) => void>();
  private readonly sessions = new Set<MemorySession>();
  private readonly volumeDeleteWatchers = new Set<() => void>();
  private nextLeaseId = 7_000_000_001n;
  private available = true;
  private closed = false;

  constructor(opts: MemoryMetadataOptions = {}) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger?.child({ module: 'metadata', backend: 'memory' });
  }

  // ---- test hooks ----

  setAvailable(available: boolean): void {
    this.available = available;
  }

  /** As if an operator (or etcd) revoked the lease: its keys vanish, its session is lost. */
  revokeLease(id: string): void {
    this.dropLease(id, 'lease revoked');
  }

  leaseIds(): string[] {
    return [...this.leases.keys()];
  }

  // ---- internals shared with sessions ----

  /** Every call starts here: like a round trip, it can fail. */
  async enter(op: string): Promise<void> {
    await Promise.resolve();
    if (this.closed) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `metadata client is closed (${op})`);
    if (!this.available) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd at memory is unavailable (${op}): simulated outage`);
    this.expireDue();
  }

  isAvailable(): boolean {
    return this.available && !this.closed;
  }

  private expireDue(): void {
    const now = this.clock.monotonic();
    for (const lease of [...this.leases.values()]) {
      if (lease.expiresAt <= now) this.dropLease(lease.id, 'lease expired');
    }
  }

  private dropLease(id: string, why: string): void {
    const lease = this.leases.get(id);
    if (lease === undefined) return;
    this.leases.delete(id);
    lease.expiryTimer?.cancel();
    for (const [k, v] of this.locks) if (v.leaseId === id) this.locks.delete(k);
    for (const [k, v] of this.peers) if (v.leaseId === id) this.peers.delete(k);
    lease.onGone?.(why);
  }

  grantLease(ttlSeconds: number): Lease {
    const id = String(this.nextLeaseId++);
    const lease: Lease = { id, ttlMs: ttlSeconds * 1000, expiresAt: 0, expiryTimer: undefined, onGone: undefined };
    this.leases.set(id, lease);
    this.refreshLease(lease);
    return lease;
  }

  /** Returns false when the lease no longer exists. */
  keepalive(id: string): boolean {
    this.expireDue();
    const lease = this.leases.get(id);
    if (lease === undefined) return false;
    this.refreshLease(lease);
    return true;
  }

  private refreshLease(lease: Lease): void {
    lease.expiresAt = this.clock.monotonic() + lease.ttlMs;
    lease.expiryTimer?.cancel();
    lease.expiryTimer = this.clock.setTimeout(() => this.expireDue(), lease.ttlMs);
  }

  hasLease(id: string): boolean {
    this.expireDue();
    return this.leases.has(id);
  }

  putPeerRecord(record: PeerRecord, leaseId: string): void {
    if (!this.leases.has(leaseId)) throw new TorusError('TORUS_ERR_SESSION_LOST', `put peer: lease ${leaseId} has expired or was revoked`);
    this.peers.set(record.uuid, { json: encodeRecord(record), leaseId });
  }

  tryLock(name: string, holder: string, leaseId: string): { volume: VolumeRecord; record: VolumeLockRecord } {
    if (!this.leases.has(leaseId)) throw new TorusError('TORUS_ERR_SESSION_LOST', `lock volume ${name}: lease ${leaseId} has expired or was revoked`);
    const vJson = this.volumes.get(name);
    if (vJson === undefined) throw volumeNotFoundError(name);
    const volume = decodeVolumeRecord(`volumes/${name}`, vJson);
    const held = this.locks.get(volume.id);
    if (held !== undefined) throw volumeInUseError(name, decodeVolumeLockRecord(`volume-locks/${volume.id}`, held.json));
    const token = (this.fences.get(volume.id) ?? 0) + 1;
    const record: VolumeLockRecord = { schema: 1, volumeId: volume.id, holder, token, acquiredAt: new Date(this.clock.now()).toISOString() };
    this.fences.set(volume.id, token);
    this.locks.set(volume.id, { json: encodeRecord(record), leaseId });
    return { volume, record };
  }

  /** The lease for a resumed session, or null when it is gone. */
  findLease(id: string): Lease | null {
    this.expireDue();
    return this.leases.get(id) ?? null;
  }

  /** The lock record when `leaseId` holds the volume's lock under `token`; else TORUS_ERR_VOLUME_LOCK_LOST. */
  adoptLock(name: string, token: number, leaseId: string): { volume: VolumeRecord; record: VolumeLockRecord } {
    const vJson = this.volumes.get(name);
    if (vJson === undefined) throw volumeNotFoundError(name);
    const volume = decodeVolumeRecord(`volumes/${name}`, vJson);
    const held = this.locks.get(volume.id);
    if (held === undefined) throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}" is no longer locked: the lock of lease ${leaseId} is gone`);
    const record = decodeVolumeLockRecord(`volume-locks/${volume.id}`, held.json);
    if (held.leaseId !== leaseId || record.token !== token) {
      throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}" is locked by ${record.holder} (token ${record.token}, lease ${held.leaseId}), not by lease ${leaseId} with token ${token}`);
    }
    return { volume, record };
  }

  unlock(volumeId: number, leaseId: string): void {
    if (this.locks.get(volumeId)?.leaseId === leaseId) this.locks.delete(volumeId);
  }

  revoke(id: string): void {
    const lease = this.leases.get(id);
    if (lease === undefined) return;
    lease.onGone = undefined; // a revoke by the owner is not a loss
    this.dropLease(id, 'revoked by owner');
  }

  private notifyRing(): void {
    const json = this.ring;
    for (const w of [...this.ringWatchers]) queueMicrotask(() => w(json));
  }

  // ---- MetadataService ----

  async getClusterConfig(): Promise<ClusterConfig | null> {
    await this.enter('get config');
    return this.config === null ? null : decodeClusterConfig('config', this.config);
  }

  async initCluster(config: { blockSize: number; replication: number }, opts: { force: boolean }): Promise<ClusterConfig> {
    validateClusterParams(config);
    if (opts.force) await this.wipe();
    await this.enter('init cluster');
    if (this.config !== null) {
      const cfg = decodeClusterConfig('config', this.config);
      throw new TorusError(
        'TORUS_ERR_CLUSTER_ALREADY_INITIALISED',
        `the cluster in etcd at memory is already initialised (block size ${formatSize(cfg.blockSize)}, replication ${cfg.replication}, created ${cfg.createdAt}); re-initialising needs force, which deletes every volume`,
        { details: { ...cfg } },
      );
    }
    const record: ClusterConfig = { schema: 1, id: randomUUID(), blockSize: config.blockSize, replication: config.replication, createdAt: new Date(this.clock.now()).toISOString() };
    this.config = encodeRecord(record);
    this.ring = encodeRecord({ schema: 1, version: 1, replication: config.replication, members: [] } satisfies RingRecord);
    this.notifyRing();
    return record;
  }

  async wipe(): Promise<number> {
    await this.enter('wipe');
    let n = this.volumes.size + this.locks.size + this.fences.size + this.peers.size;
    if (this.config !== null) n++;
    if (this.ring !== null) n++;
    if (this.volumeIdCounter > 0) n++;
    this.config = null;
    this.ring = null;
    this.volumeIdCounter = 0;
    this.volumes.clear();
    this.locks.clear();
    this.fences.clear();
    this.peers.clear();
    this.notifyRing();
    return n;
  }

  async listPeers(): Promise<PeerRecord[]> {
    await this.enter('list peers');
    return [...this.peers.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([uuid, v]) => decodePeerRecord(`peers/${uuid}`, v.json));
  }

  async getRing(): Promise<RingRecord> {
    await this.enter('get ring');
    if (this.ring === null) throw notInitialisedError();
    return decodeRingRecord('ring', this.ring);
  }

  async setRing(next: RingRecord): Promise<void> {
    validateRing(next);
    await this.enter('set ring');
    if (this.ring === null) throw notInitialisedError();
    const current = decodeRingRecord('ring', this.ring);
    if (next.version !== current.version + 1) {
      throw new TorusError(
        'TORUS_ERR_CLUSTER_CONFLICT',
        `ring changed concurrently: a change to ring version ${current.version} must carry version ${current.version + 1}, not ${next.version}; re-read the ring and retry`,
        { details: { currentVersion: current.version, proposedVersion: next.version } },
      );
    }
    this.ring = encodeRecord(next);
    this.notifyRing();
  }

  async watchRing(onChange: (ring: RingRecord) => void): Promise<() => Promise<void>> {
    await this.enter('watch ring');
    if (this.ring === null) throw notInitialisedError();
    let lastVersion = 0;
    const deliver = (json: string | null): void => {
      if (json === null) {
        lastVersion = 0;
        return;
      }
      const ring = decodeRingRecord('ring', json);
      if (ring.version <= lastVersion) return;
      lastVersion = ring.version;
      try {
        onChange(ring);
      } catch (err) {
        this.log?.error({ err }, 'ring watch callback threw');
      }
    };
    deliver(this.ring);
    this.ringWatchers.add(deliver);
    return async () => {
      this.ringWatchers.delete(deliver);
    };
  }

  async createVolume(name: string, size: number): Promise<VolumeRecord> {
    validateVolumeName(name);
    validateVolumeSize(size);
    await this.enter(`create volume ${name}`);
    if (this.config === null) throw notInitialisedError();
    if (this.volumes.has(name)) throw new TorusError('TORUS_ERR_VOLUME_EXISTS', `a volume named "${name}" already exists`, { details: { volume: name } });
    const id = this.volumeIdCounter + 1;
    if (id > VOLUME_ID_MAX) throw new TorusError('TORUS_ERR_ARG_INVALID', 'no volume ids are left in this cluster');
    const config = decodeClusterConfig('config', this.config);
    const record: VolumeRecord = { schema: 1, id, name, type: 'block', size, blockSize: config.blockSize, generation: 1, createdAt: new Date(this.clock.now()).toISOString() };
    this.volumeIdCounter = id;
    this.volumes.set(name, encodeRecord(record));
    return record;
  }

  async getVolume(name: string): Promise<VolumeRecord> {
    validateVolumeName(name);
    await this.enter(`get volume ${name}`);
    const json = this.volumes.get(name);
    if (json === undefined) throw volumeNotFoundError(name);
    return decodeVolumeRecord(`volumes/${name}`, json);
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    await this.enter('list volumes');
    return [...this.volumes.entries()].map(([name, json]) => decodeVolumeRecord(`volumes/${name}`, json)).sort((a, b) => a.id - b.id);
  }

  async revokeStaleLease(id: string): Promise<void> {
    await this.enter(`revoke lease ${id}`);
    if (this.leases.has(id)) this.dropLease(id, 'lease revoked');
  }

  async volumeIdsForGc(): Promise<{ live: number[]; lastId: number }> {
    await this.enter('list volume ids');
    return { live: (await this.listVolumes()).map((v) => v.id), lastId: this.volumeIdCounter };
  }

  async watchVolumeDeletes(onDelete: () => void): Promise<() => Promise<void>> {
    this.volumeDeleteWatchers.add(onDelete);
    return async () => {
      this.volumeDeleteWatchers.delete(onDelete);
    };
  }

  async deleteVolume(name: string): Promise<VolumeRecord> {
    validateVolumeName(name);
    await this.enter(`delete volume ${name}`);
    const json = this.volumes.get(name);
    if (json === undefined) throw volumeNotFoundError(name);
    const record = decodeVolumeRecord(`volumes/${name}`, json);
    const lock = this.locks.get(record.id);
    if (lock !== undefined) throw volumeInUseError(name, decodeVolumeLockRecord(`volume-locks/${record.id}`, lock.json));
    this.volumes.delete(name);
    this.fences.delete(record.id);
    for (const w of this.volumeDeleteWatchers) queueMicrotask(w);
    return record;
  }

  async getVolumeLock(volumeId: number): Promise<VolumeLockRecord | null> {
    await this.enter(`get volume lock ${volumeId}`);
    const lock = this.locks.get(volumeId);
    return lock === undefined ? null : decodeVolumeLockRecord(`volume-locks/${volumeId}`, lock.json);
  }

  async openSession(opts: { ttlSeconds: number }): Promise<MetadataSession> {
    const ttl = opts.ttlSeconds;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > SESSION_TTL_MAX_SECONDS) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `session TTL ${String(ttl)} s must be a whole number from 1 to ${SESSION_TTL_MAX_SECONDS}`);
    }
    await this.enter('grant lease');
    const grantedAt = this.clock.monotonic();
    const lease = this.grantLease(ttl);
    const session = new MemorySession(this, lease, grantedAt, this.clock, () => this.sessions.delete(session));
    this.sessions.add(session);
    return session;
  }

  async resumeSession(opts: { leaseId: string; ttlSeconds: number }): Promise<MetadataSession> {
    await this.enter(`resume lease ${opts.leaseId}`);
    const lease = this.findLease(opts.leaseId);
    if (lease === null) throw new TorusError('TORUS_ERR_SESSION_LOST', `etcd lease ${opts.leaseId} has expired or was revoked`);
    const session = new MemorySession(this, lease, lease.expiresAt - lease.ttlMs, this.clock, () => this.sessions.delete(session));
    this.sessions.add(session);
    return session;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    for (const s of [...this.sessions]) s.stop();
    for (const id of [...this.leases.keys()]) this.revoke(id);
    this.ringWatchers.clear();
    this.closed = true;
  }
}

class MemorySession implements MetadataSession {
  readonly id: string;
  private readonly listeners = new SessionListeners();
  private state: SessionState = 'healthy';
  private deadline: number;
  private timer: { cancel(): void } | undefined;
  private readonly intervalMs: number;
  private readonly ttlMs: number;

  constructor(
    private readonly md: MemoryMetadata,
    lease: Lease,
    grantedAt: number,
    private readonly clock: Clock,
    private readonly onClosed: () => void,
  ) {
    this.id = lease.id;
    this.ttlMs = lease.ttlMs;
    this.deadline = grantedAt + lease.ttlMs;
    // Same cadence as the etcd3 client: a third of the TTL.
    this.intervalMs = Math.max(1, Math.floor(lease.ttlMs / 3));
    lease.onGone = (why) => this.markLost(why);
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
        this.emit({ type: 'degraded', err: new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', 'etcd at memory is unavailable (lease keepalive): simulated outage') });
      }
      // The lease expires server-side at its deadline even though etcd is "down".
      if (!this.md.hasLease(this.id) || sentAt >= this.deadline) {
        this.md.revokeLease(this.id);
        this.markLost('no keepalive answered before the lease deadline');
        return;
      }
    } else if (this.md.keepalive(this.id)) {
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
    this.emit({ type: 'lost', err: new TorusError('TORUS_ERR_SESSION_LOST', `etcd session ${this.id} lost its lease: ${why}`) });
  }

  private emit(event: SessionEvent): void {
    this.listeners.emit(event);
  }

  private assertUsable(op: string): void {
    assertSessionUsable(this.state, this.id, op);
  }

  on(listener: (event: SessionEvent) => void): () => void {
    return this.listeners.on(listener);
  }

  leaseDeadline(): number {
    return this.deadline;
  }

  async putPeer(record: PeerRecord): Promise<void> {
    validatePeerUuid(record.uuid);
    this.assertUsable('put peer');
    await this.md.enter(`put peer ${record.uuid}`);
    this.md.putPeerRecord(record, this.id);
  }

  async lockVolume(name: string, holder: string): Promise<VolumeLock> {
    validateVolumeName(name);
    if (holder.length === 0 || holder.length > HOLDER_CHARS_MAX) throw new TorusError('TORUS_ERR_ARG_INVALID', `lock holder must be 1 to ${HOLDER_CHARS_MAX} characters`);
    this.assertUsable(`lock volume ${name}`);
    await this.md.enter(`lock volume ${name}`);
    const { volume, record } = this.md.tryLock(name, holder, this.id);
    return this.lockHandle(name, volume, record);
  }

  private lockHandle(name: string, volume: VolumeRecord, record: VolumeLockRecord): VolumeLock {
    const md = this.md;
    const leaseId = this.id;
    let released = false;
    return {
      volume,
      token: record.token,
      holder: record.holder,
      async release() {
        if (released) return;
        await md.enter(`unlock volume ${name}`);
        md.unlock(volume.id, leaseId);
        released = true;
      },
    };
  }

  async adoptVolumeLock(name: string, token: number): Promise<VolumeLock> {
    validateVolumeName(name);
    this.assertUsable(`adopt lock of volume ${name}`);
    await this.md.enter(`adopt lock of volume ${name}`);
    const { volume, record } = this.md.adoptLock(name, token, this.id);
    return this.lockHandle(name, volume, record);
  }

  async suspend(): Promise<void> {
    if (this.state === 'closed' || this.state === 'lost') return;
    await this.md.enter(`keepalive lease ${this.id}`).then(
      () => this.md.keepalive(this.id),
      () => undefined,
    );
    this.stop();
  }

  /** Stops keepalives without a word: the service is closing. */
  stop(): void {
    this.state = 'closed';
    this.timer?.cancel();
    this.onClosed();
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    const wasLost = this.state === 'lost';
    this.stop();
    if (wasLost) return;
    await this.md.enter(`revoke lease ${this.id}`);
    this.md.revoke(this.id);
  }
}
