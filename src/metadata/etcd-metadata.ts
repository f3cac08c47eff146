import { randomUUID } from 'node:crypto';
import { ExponentialBackoff, handleWhen, noop, retry, type IBackoff, type IPolicy } from 'cockatiel';
import { Etcd3, isRecoverableError, type IKeyValue, type Namespace, type Watcher } from 'etcd3';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { ClusterConfig, PeerRecord, RingRecord, VolumeLockRecord, VolumeRecord } from '../model/records.js';
import { systemClock, type Clock } from '../util/clock.js';
import { formatSize } from '../util/size.js';
import { withEtcd, type EtcdCallContext } from './etcd-errors.js';
import { EtcdSession } from './etcd-session.js';
import { DEFAULT_PREFIX, KEYS, normalizePrefix, volumeFenceKey, volumeKey, volumeLockKey } from './keys.js';
import type { MetadataService, MetadataSession } from './metadata-service.js';
import {
  decodeClusterConfig,
  decodeCounter,
  decodePeerRecord,
  decodeRingRecord,
  decodeVolumeLockRecord,
  decodeVolumeRecord,
  encodeRecord,
} from './record-codec.js';
import {
  notInitialisedError,
  validateClusterParams,
  validateRing,
  validateVolumeName,
  validateVolumeSize,
  volumeInUseError,
  volumeNotFoundError,
  VOLUME_ID_MAX,
} from './validate.js';

export interface EtcdMetadataOptions {
  /** `host:port` (an `http://` or `https://` prefix is accepted too). */
  readonly endpoints: readonly string[];
  /** Defaults to `/torus/`. */
  readonly prefix?: string;
  readonly logger: Logger;
  /** Bound on every etcd call, retries across endpoints included. Default 5000 ms. */
  readonly callTimeoutMs?: number;
  readonly clock?: Clock;
}

export const DEFAULT_CALL_TIMEOUT_MS = 5_000;
/** Compare-and-swap loops give up (TORUS_ERR_CLUSTER_CONFLICT) after this many lost races. */
export const CAS_ATTEMPTS_MAX = 8;
export const PEERS_LIST_MAX = 4096;
export const VOLUMES_LIST_MAX = 65_536;
export const SESSION_TTL_MAX_SECONDS = 3600;

interface Kv {
  readonly value: string;
  readonly modRevision: string;
}

function toKv(kv: IKeyValue | undefined): Kv | null {
  return kv === undefined ? null : { value: kv.value.toString('utf8'), modRevision: kv.mod_revision };
}

/** MetadataService over a real etcd v3 cluster. */
export class EtcdMetadata implements MetadataService {
  private readonly client: Etcd3;
  private readonly ns: Namespace;
  private readonly prefix: string;
  private readonly ctx: EtcdCallContext;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly sessions = new Set<EtcdSession>();
  private readonly watchers = new Set<Watcher>();
  private closed = false;

  constructor(opts: EtcdMetadataOptions) {
    if (opts.endpoints.length === 0) throw new TorusError('TORUS_ERR_ARG_INVALID', 'no etcd endpoint given');
    const timeoutMs = opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    if (!(Number.isFinite(timeoutMs) && timeoutMs >= 100)) throw new TorusError('TORUS_ERR_ARG_INVALID', `etcd call timeout ${timeoutMs} ms is below 100 ms`);
    const hosts = opts.endpoints.map((e) => (/^https?:\/\//.test(e) ? e : `http://${e}`));
    const endpoints = opts.endpoints.map((e) => e.replace(/^https?:\/\//, '')).join(',');
    this.prefix = normalizePrefix(opts.prefix ?? DEFAULT_PREFIX);
    this.clock = opts.clock ?? systemClock;
    this.log = opts.logger.child({ module: 'metadata', endpoints, prefix: this.prefix });
    this.ctx = { endpoints, timeoutMs, clock: this.clock };
    // Each attempt gets a share of the call's budget, so that trying every
    // endpoint once still fits inside the hard bound withEtcd applies.
    const attemptMs = Math.max(100, Math.floor((timeoutMs * 0.9) / hosts.length));
    // The default policies retry 3 times and open a per-host circuit breaker
    // for 5 s: an etcd that comes back would be refused for seconds, and the
    // retries multiply the wait. Try each endpoint once, no breaker.
    const global: IPolicy = hosts.length > 1 ? retry(handleWhen(isRecoverableError), { maxAttempts: hosts.length - 1 }) : noop;
    this.client = new Etcd3({
      hosts,
      // etcd3 1.1.2 declares dialTimeout but never reads it: the per-call
      // deadline below is what bounds connecting.
      defaultCallOptions: (c) => (c.isStream ? {} : { deadline: Date.now() + attemptMs }),
      // Watches (watchRing) re-connect within 2 s of etcd's return, not 30 s.
      // etcd3 calls .next() on this like on its own default, an
      // ExponentialBackoff factory; its typings say IBackoff instead.
      faultHandling: {
        host: () => noop,
        global,
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2_000 }) as unknown as IBackoff<unknown>,
      },
      grpcOptions: {
        // Reconnect quickly once etcd is back instead of gRPC's 120 s ceiling.
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 2000,
      },
    });
    this.ns = this.client.namespace(this.prefix);
  }

  private call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd client for ${this.ctx.endpoints} is closed (${op})`));
    return withEtcd(this.ctx, op, fn);
  }

  private async getKv(key: string): Promise<Kv | null> {
    const res = await this.call(`get ${this.prefix}${key}`, () => this.ns.get(key).exec());
    return toKv(res.kvs[0]);
  }

  private async listPrefix(prefix: string, limit: number): Promise<Kv[]> {
    const res = await this.call(`list ${this.prefix}${prefix}`, () => this.ns.getAll().prefix(prefix).limit(limit).exec());
    if (res.more) this.log.warn({ keyPrefix: prefix, limit }, 'listing truncated at its limit');
    return res.kvs.map((kv) => ({ value: kv.value.toString('utf8'), modRevision: kv.mod_revision, key: kv.key.toString('utf8') }));
  }

  private now(): string {
    return new Date(this.clock.now()).toISOString();
  }

  async getClusterConfig(): Promise<ClusterConfig | null> {
    const kv = await this.getKv(KEYS.config);
    return kv === null ? null : decodeClusterConfig(this.prefix + KEYS.config, kv.value);
  }

  async initCluster(config: { blockSize: number; replication: number }, opts: { force: boolean }): Promise<ClusterConfig> {
    validateClusterParams(config);
    if (opts.force) {
      const n = await this.wipe();
      this.log.warn({ keysDeleted: n }, 'wiped cluster metadata before re-initialising');
    }
    const record: ClusterConfig = { schema: 1, id: randomUUID(), blockSize: config.blockSize, replication: config.replication, createdAt: this.now() };
    const ring: RingRecord = { schema: 1, version: 1, replication: config.replication, members: [] };
    const res = await this.call('init cluster', () =>
      this.ns
        .if(KEYS.config, 'Create', '==', 0)
        .then(this.ns.put(KEYS.config).value(encodeRecord(record)), this.ns.put(KEYS.ring).value(encodeRecord(ring)))
        .else(this.ns.get(KEYS.config))
        .commit(),
    );
    if (!res.succeeded) {
      const existing = res.responses[0]?.response_range.kvs[0];
      const cfg = existing ? decodeClusterConfig(this.prefix + KEYS.config, existing.value.toString('utf8')) : null;
      throw alreadyInitialisedError(this.ctx.endpoints, cfg);
    }
    this.log.info({ blockSize: record.blockSize, replication: record.replication }, 'cluster initialised');
    return record;
  }

  async wipe(): Promise<number> {
    const res = await this.call(`wipe ${this.prefix}`, () => this.ns.delete().all().exec());
    return Number(res.deleted);
  }

  async listPeers(): Promise<PeerRecord[]> {
    const kvs = await this.listPrefix(KEYS.peersPrefix, PEERS_LIST_MAX);
    return kvs.map((kv, i) => decodePeerRecord(`${this.prefix}${KEYS.peersPrefix}#${i}`, kv.value));
  }

  async getRing(): Promise<RingRecord> {
    const kv = await this.getKv(KEYS.ring);
    if (kv === null) throw notInitialisedError();
    return decodeRingRecord(this.prefix + KEYS.ring, kv.value);
  }

  async setRing(next: RingRecord): Promise<void> {
    validateRing(next);
    const kv = await this.getKv(KEYS.ring);
    if (kv === null) throw notInitialisedError();
    const current = decodeRingRecord(this.prefix + KEYS.ring, kv.value);
    if (next.version !== current.version + 1) throw ringConflictError(current.version, next.version);
    const res = await this.call('set ring', () =>
      this.ns.if(KEYS.ring, 'Mod', '==', kv.modRevision).then(this.ns.put(KEYS.ring).value(encodeRecord(next))).commit(),
    );
    if (!res.succeeded) throw ringConflictError(current.version, next.version, true);
    this.log.info({ ringVersion: next.version, members: next.members.length, replication: next.replication }, 'ring changed');
  }

  async watchRing(onChange: (ring: RingRecord) => void): Promise<() => Promise<void>> {
    const key = this.prefix + KEYS.ring;
    const res = await this.call('get ring', () => this.ns.get(KEYS.ring).exec());
    const first = res.kvs[0];
    if (first === undefined) throw notInitialisedError();
    let lastVersion = 0;
    const deliver = (text: string): void => {
      let ring: RingRecord;
      try {
        ring = decodeRingRecord(key, text);
      } catch (err) {
        this.log.error({ err }, 'ignoring a ring record that does not decode');
        return;
      }
      // A watch that reconnects may replay; callers see each version once.
      if (ring.version <= lastVersion) return;
      lastVersion = ring.version;
      try {
        onChange(ring);
      } catch (err) {
        this.log.error({ err }, 'ring watch callback threw');
      }
    };
    deliver(first.value.toString('utf8'));
    // Start right after the revision read above: no change can slip between.
    const watcher = this.ns
      .watch()
      .key(KEYS.ring)
      .startRevision(String(BigInt(res.header.revision) + 1n))
      .watcher();
    watcher.on('put', (kv) => deliver(kv.value.toString('utf8')));
    watcher.on('delete', () => {
      this.log.warn('ring key deleted (cluster wiped); waiting for a new ring');
      lastVersion = 0;
    });
    watcher.on('disconnected', (err) => this.log.warn({ err }, 'ring watch disconnected; reconnecting'));
    watcher.on('connected', () => this.log.debug('ring watch connected'));
    watcher.on('error', (err) => this.log.error({ err }, 'ring watch failed'));
    try {
      await this.call('watch ring', () => new Promise<void>((resolve, reject) => {
        watcher.once('connected', () => resolve());
        watcher.once('error', reject);
      }));
    } catch (err) {
      watcher.cancel().catch(() => undefined);
      throw err;
    }
    this.watchers.add(watcher);
    return async () => {
      if (!this.watchers.delete(watcher)) return;
      await this.call('cancel ring watch', () => watcher.cancel());
    };
  }

  async createVolume(name: string, size: number): Promise<VolumeRecord> {
    validateVolumeName(name);
    validateVolumeSize(size);
    const vKey = volumeKey(name);
    for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
      const cfgKv = await this.getKv(KEYS.config);
      if (cfgKv === null) throw notInitialisedError();
      const config = decodeClusterConfig(this.prefix + KEYS.config, cfgKv.value);
      const counter = await this.getKv(KEYS.volumeIdCounter);
      const id = decodeCounter(this.prefix + KEYS.volumeIdCounter, counter?.value ?? null) + 1;
      if (id > VOLUME_ID_MAX) throw new TorusError('TORUS_ERR_ARG_INVALID', 'no volume ids are left in this cluster');
      const record: VolumeRecord = { schema: 1, id, name, type: 'block', size, blockSize: config.blockSize, generation: 1, createdAt: this.now() };
      // One transaction: the id is consumed only if the volume is created.
      const res = await this.call(`create volume ${name}`, () =>
        this.ns
          .if(KEYS.config, 'Mod', '==', cfgKv.modRevision)
          .and(KEYS.volumeIdCounter, 'Mod', '==', counter?.modRevision ?? 0)
          .and(vKey, 'Create', '==', 0)
          .then(this.ns.put(KEYS.volumeIdCounter).value(String(id)), this.ns.put(vKey).value(encodeRecord(record)))
          .else(this.ns.get(vKey), this.ns.get(KEYS.config))
          .commit(),
      );
      if (res.succeeded) {
        this.log.info({ volume: name, volumeId: id, size }, 'volume created');
        return record;
      }
      if ((res.responses[0]?.response_range.kvs.length ?? 0) > 0) {
        throw new TorusError('TORUS_ERR_VOLUME_EXISTS', `a volume named "${name}" already exists`, { details: { volume: name } });
      }
      if ((res.responses[1]?.response_range.kvs.length ?? 0) === 0) throw notInitialisedError();
    }
    throw conflictError(`create volume "${name}"`);
  }

  async getVolume(name: string): Promise<VolumeRecord> {
    validateVolumeName(name);
    const kv = await this.getKv(volumeKey(name));
    if (kv === null) throw volumeNotFoundError(name);
    return decodeVolumeRecord(this.prefix + volumeKey(name), kv.value);
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    const kvs = await this.listPrefix(KEYS.volumesPrefix, VOLUMES_LIST_MAX);
    const volumes = kvs.map((kv, i) => decodeVolumeRecord(`${this.prefix}${KEYS.volumesPrefix}#${i}`, kv.value));
    return volumes.sort((a, b) => a.id - b.id);
  }

  async revokeStaleLease(id: string): Promise<void> {
    if (!/^[0-9]+$/.test(id)) throw new TorusError('TORUS_ERR_ARG_INVALID', `lease id "${id}" is not a decimal number`);
    try {
      await this.call(`revoke lease ${id}`, () => this.ns.leaseClient.leaseRevoke({ ID: id }));
    } catch (err) {
      // etcd answers NotFound for a lease that expired already: the goal is met.
      if (/not found|requested lease not found/i.test(String((err as Error).message) + String((err as { cause?: Error }).cause?.message ?? ''))) return;
      throw err;
    }
  }

  async volumeIdsForGc(): Promise<{ live: number[]; lastId: number }> {
    // The counter first: a volume created after this read has a larger id,
    // because the counter and the record are written in one transaction.
    const counter = await this.getKv(KEYS.volumeIdCounter);
    const lastId = decodeCounter(this.prefix + KEYS.volumeIdCounter, counter?.value ?? null);
    const live = (await this.listVolumes()).map((v) => v.id);
    return { live, lastId };
  }

  async watchVolumeDeletes(onDelete: () => void): Promise<() => Promise<void>> {
    const watcher = this.ns.watch().prefix(KEYS.volumesPrefix).watcher();
    watcher.on('delete', () => {
      try {
        onDelete();
      } catch (err) {
        this.log.error({ err }, 'volume watch callback threw');
      }
    });
    watcher.on('disconnected', (err) => this.log.warn({ err }, 'volume watch disconnected; reconnecting'));
    watcher.on('error', (err) => this.log.error({ err }, 'volume watch failed'));
    await this.call('watch volumes', () => new Promise<void>((resolve) => watcher.once('connected', () => resolve())));
    return async () => {
      await watcher.cancel().catch(() => undefined);
    };
  }

  async deleteVolume(name: string): Promise<VolumeRecord> {
    validateVolumeName(name);
    const vKey = volumeKey(name);
    for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
      const kv = await this.getKv(vKey);
      if (kv === null) throw volumeNotFoundError(name);
      const record = decodeVolumeRecord(this.prefix + vKey, kv.value);
      const lockKey = volumeLockKey(record.id);
      // The fence key goes too: volume ids are never reused, so its tokens
      // can never matter again.
      const res = await this.call(`delete volume ${name}`, () =>
        this.ns
          .if(vKey, 'Mod', '==', kv.modRevision)
          .and(lockKey, 'Version', '==', 0)
          .then(this.ns.delete().key(vKey), this.ns.delete().key(volumeFenceKey(record.id)))
          .else(this.ns.get(lockKey), this.ns.get(vKey))
          .commit(),
      );
      if (res.succeeded) {
        this.log.info({ volume: name, volumeId: record.id }, 'volume deleted');
        return record;
      }
      const lock = res.responses[0]?.response_range.kvs[0];
      if (lock !== undefined) throw volumeInUseError(name, decodeVolumeLockRecord(this.prefix + lockKey, lock.value.toString('utf8')));
      if ((res.responses[1]?.response_range.kvs.length ?? 0) === 0) throw volumeNotFoundError(name);
    }
    throw conflictError(`delete volume "${name}"`);
  }

  async getVolumeLock(volumeId: number): Promise<VolumeLockRecord | null> {
    const kv = await this.getKv(volumeLockKey(volumeId));
    return kv === null ? null : decodeVolumeLockRecord(this.prefix + volumeLockKey(volumeId), kv.value);
  }

  async openSession(opts: { ttlSeconds: number }): Promise<MetadataSession> {
    const ttl = opts.ttlSeconds;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > SESSION_TTL_MAX_SECONDS) {
      throw new TorusError('TORUS_ERR_ARG_INVALID', `session TTL ${String(ttl)} s must be a whole number from 1 to ${SESSION_TTL_MAX_SECONDS}`);
    }
    if (this.closed) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd client for ${this.ctx.endpoints} is closed (open session)`);
    const session = await EtcdSession.open({
      ns: this.ns,
      prefix: this.prefix,
      endpoints: this.ctx.endpoints,
      ttlSeconds: ttl,
      call: (op, fn) => this.call(op, fn),
      clock: this.clock,
      logger: this.log,
      onClosed: (s) => this.sessions.delete(s),
    });
    this.sessions.add(session);
    return session;
  }

  async resumeSession(opts: { leaseId: string; ttlSeconds: number }): Promise<MetadataSession> {
    if (this.closed) throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd client for ${this.ctx.endpoints} is closed (resume session)`);
    const session = await EtcdSession.resume(this.sessionDeps(opts.ttlSeconds), opts.leaseId);
    this.sessions.add(session);
    return session;
  }

  private sessionDeps(ttlSeconds: number) {
    return {
      ns: this.ns,
      prefix: this.prefix,
      endpoints: this.ctx.endpoints,
      ttlSeconds,
      call: <T>(op: string, fn: () => Promise<T>) => this.call(op, fn),
      clock: this.clock,
      logger: this.log,
      onClosed: (s: EtcdSession) => this.sessions.delete(s),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const sessions = [...this.sessions];
    await Promise.all(
      sessions.map((s) => s.close().catch((err: unknown) => this.log.warn({ err, session: s.id }, 'could not revoke session lease on close'))),
    );
    const watchers = [...this.watchers];
    this.watchers.clear();
    await Promise.all(watchers.map((w) => this.call('cancel watch', () => w.cancel()).catch(() => undefined)));
    this.closed = true;
    this.client.close();
  }
}

function alreadyInitialisedError(endpoints: string, cfg: ClusterConfig | null): TorusError {
  const what = cfg ? ` (block size ${formatSize(cfg.blockSize)}, replication ${cfg.replication}, created ${cfg.createdAt})` : '';
  return new TorusError(
    'TORUS_ERR_CLUSTER_ALREADY_INITIALISED',
    `the cluster in etcd at ${endpoints} is already initialised${what}; re-initialising needs force, which deletes every volume`,
    { details: cfg ? { ...cfg } : undefined },
  );
}

function ringConflictError(current: number, proposed: number, lostRace = false): TorusError {
  const why = lostRace ? 'another change to the ring won the race' : `a change to ring version ${current} must carry version ${current + 1}, not ${proposed}`;
  return new TorusError('TORUS_ERR_CLUSTER_CONFLICT', `ring changed concurrently: ${why}; re-read the ring and retry`, {
    details: { currentVersion: current, proposedVersion: proposed },
  });
}

function conflictError(op: string): TorusError {
  return new TorusError('TORUS_ERR_CLUSTER_CONFLICT', `${op} lost ${CAS_ATTEMPTS_MAX} races with concurrent changes; retry`);
}
