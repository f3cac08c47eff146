import { randomBytes, randomUUID } from 'node:crypto';
import { ExponentialBackoff, handleWhen, noop, retry, type IBackoff, type IPolicy } from 'cockatiel';
import { Etcd3, isRecoverableError, Range, type IKeyValue, type IRangeResponse, type Namespace } from 'etcd3';
import type { Logger } from 'pino';
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
import { formatSize } from '../util/size.js';
import { withEtcd, type EtcdCallContext } from './etcd-errors.js';
import { andNoKeyUnder, EtcdSession } from './etcd-session.js';
import { ResilientWatch, type ResilientWatchSpec } from './etcd-watch.js';
import {
  DEFAULT_PREFIX,
  fenceIdOf,
  healthKey,
  KEYS,
  moveKey,
  movesVersionPrefix,
  normalizePrefix,
  parseMoveKey,
  staleKey,
  staleVolumePrefix,
  volumeFenceKey,
  volumeReleasedKey,
  volumeExpiredKey,
  volumeKey,
  volumeLockKey,
  volumeMaintKey,
  volumeReadersPrefix,
} from './keys.js';
import type { MetadataService, MetadataSession } from './metadata-service.js';
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
import {
  checkStaleAdd,
  type StaleAdd,
  checkStaleNarrow,
  checkStaleRemove,
  CLUSTER_SECRET_BYTES,
  notInitialisedError,
  SESSION_TTL_MAX_SECONDS,
  validateClusterParams,
  validateHealthRecord,
  validateMoveRecord,
  validateRing,
  validateVolumeName,
  validateVolumeSize,
  volumeFencedError,
  volumeIdNotFoundError,
  volumeInUseError,
  volumeNotFoundError,
  volumeReadersError,
  VOLUME_ID_MAX,
} from './validate.js';

export { SESSION_TTL_MAX_SECONDS } from './validate.js';

export interface EtcdMetadataOptions {
  /** `host:port` (an `http://` or `https://` prefix is accepted too). */
  readonly endpoints: readonly string[];
  /** Defaults to `/torus/`. */
  readonly prefix?: string;
  readonly logger: Logger;
  /** Bound on every etcd call, retries across endpoints included. Default 5000 ms. */
  readonly callTimeoutMs?: number;
  readonly clock?: Clock;
  /**
   * Wraps every call to etcd (its op name and the call); tests inject
   * faults with it, such as an answer lost after etcd applied the call.
   */
  readonly wrapCall?: <T>(op: string, call: () => Promise<T>) => Promise<T>;
}

export const DEFAULT_CALL_TIMEOUT_MS = 5_000;
/** Compare-and-swap loops give up (TORUS_ERR_CLUSTER_CONFLICT) after this many lost races. */
export const CAS_ATTEMPTS_MAX = 8;
export const PEERS_LIST_MAX = 4096;
export const VOLUMES_LIST_MAX = 65_536;
/** Listings that must be complete (fences, stale records, moves) are read in pages of this many keys, at one revision. */
export const LIST_PAGE_KEYS = 1_000;
/** ... up to this many keys; more is not a state torus makes, so it is reported rather than truncated. */
export const LIST_COMPLETE_KEYS_MAX = 1_048_576;
/** A refusal names the first reader and counts them from a listing of at most this many. */
const READERS_SHOWN_MAX = 1_000;
/** etcd's default --max-txn-ops is 128: deletes of move records beyond this go in later transactions. */
export const TXN_OPS_MAX = 100;

interface Kv {
  readonly key: string;
  readonly value: string;
  readonly modRevision: string;
  readonly lease: string;
}

function toKv(kv: IKeyValue | undefined): Kv | null {
  return kv === undefined ? null : { key: kv.key.toString('utf8'), value: kv.value.toString('utf8'), modRevision: kv.mod_revision, lease: kv.lease };
}

function firstKv(res: { responses: { response_range?: IRangeResponse | null }[] }, i: number): Kv | null {
  return toKv(res.responses[i]?.response_range?.kvs[0]);
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
  private readonly watches = new Set<ResilientWatch>();
  private closed = false;
  private readonly wrapCall: EtcdMetadataOptions['wrapCall'];

  constructor(opts: EtcdMetadataOptions) {
    this.wrapCall = opts.wrapCall;
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
      // Watches re-connect within 2 s of etcd's return, not 30 s.
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
    const wrap = this.wrapCall;
    return wrap === undefined ? withEtcd(this.ctx, op, fn) : wrap(op, () => withEtcd(this.ctx, op, fn));
  }

  private async getKv(key: string): Promise<Kv | null> {
    const res = await this.call(`get ${this.prefix}${key}`, () => this.ns.get(key).exec());
    return toKv(res.kvs[0]);
  }

  /** The value and the revision of the read (for watches that go on from it). */
  private async getKvAt(key: string): Promise<{ kv: Kv | null; revision: number }> {
    const res = await this.call(`get ${this.prefix}${key}`, () => this.ns.get(key).exec());
    return { kv: toKv(res.kvs[0]), revision: Number(res.header.revision) };
  }

  /** A listing that may be cut at `limit` (peers, volumes): a warning says so. */
  private async listPrefix(prefix: string, limit: number): Promise<Kv[]> {
    const res = await this.call(`list ${this.prefix}${prefix}`, () => this.ns.getAll().prefix(prefix).limit(limit).exec());
    if (res.more) this.log.warn({ keyPrefix: prefix, limit }, 'listing truncated at its limit');
    return res.kvs.map((kv) => toKv(kv)!);
  }

  /** Every key under `prefix`, read page by page at one revision, so the listing is complete and consistent. */
  private async listComplete(prefix: string): Promise<{ kvs: Kv[]; revision: number }> {
    const end = Range.prefix(prefix).end;
    const kvs: Kv[] = [];
    let revision: number | null = null;
    let from: string | Buffer = prefix;
    for (;;) {
      const at = revision;
      const res: IRangeResponse = await this.call(`list ${this.prefix}${prefix}`, () => {
        const b = this.ns.getAll().inRange({ start: from, end }).limit(LIST_PAGE_KEYS);
        return (at === null ? b : b.revision(at)).exec();
      });
      revision ??= Number(res.header.revision);
      for (const kv of res.kvs) kvs.push(toKv(kv)!);
      if (!res.more || res.kvs.length === 0) return { kvs, revision };
      if (kvs.length > LIST_COMPLETE_KEYS_MAX) {
        throw new TorusError('TORUS_ERR_METADATA_CORRUPT', `more than ${LIST_COMPLETE_KEYS_MAX} keys under ${this.prefix}${prefix}`, { details: { key: this.prefix + prefix } });
      }
      // Next page: right after the last key of this one.
      from = Buffer.concat([Buffer.from(kvs[kvs.length - 1]!.key, 'utf8'), Buffer.from([0])]);
    }
  }

  private k(key: string): string {
    return this.prefix + key;
  }

  private now(): string {
    return new Date(this.clock.now()).toISOString();
  }

  private async openWatch(spec: ResilientWatchSpec): Promise<() => Promise<void>> {
    const watch = await ResilientWatch.open({ ns: this.ns, call: (op, fn) => this.call(op, fn), clock: this.clock, logger: this.log }, spec);
    this.watches.add(watch);
    return async () => {
      if (!this.watches.delete(watch)) return;
      await watch.stop();
    };
  }

  async getClusterConfig(): Promise<ClusterConfig | null> {
    const kv = await this.getKv(KEYS.config);
    return kv === null ? null : decodeClusterConfig(this.k(KEYS.config), kv.value);
  }

  async initCluster(config: { blockSize: number; replication: number }, opts: { force: boolean }): Promise<ClusterConfig> {
    validateClusterParams(config);
    if (opts.force) {
      const n = await this.wipe();
      this.log.warn({ keysDeleted: n }, 'wiped cluster metadata before re-initialising');
    }
    const record: ClusterConfig = { schema: 1, id: randomUUID(), blockSize: config.blockSize, replication: config.replication, createdAt: this.now() };
    const ring: RingRecord = { schema: 2, version: 1, replication: config.replication, minReplicas: minReplicasDefault(config.replication), members: [], transition: null };
    for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
      // A secret made before init (ensureClusterSecret by a peer) is kept: peers may use it already.
      const secret = await this.getKv(KEYS.secret);
      const res = await this.call('init cluster', () => {
        const txn = this.ns.if(KEYS.config, 'Create', '==', 0).and(KEYS.secret, 'Mod', '==', secret?.modRevision ?? 0);
        const puts = [this.ns.put(KEYS.config).value(encodeRecord(record)), this.ns.put(KEYS.ring).value(encodeRecord(ring))];
        if (secret === null) puts.push(this.ns.put(KEYS.secret).value(newSecret()));
        return txn.then(...puts).else(this.ns.get(KEYS.config)).commit();
      });
      if (res.succeeded) {
        this.log.info({ blockSize: record.blockSize, replication: record.replication }, 'cluster initialised');
        return record;
      }
      const existing = firstKv(res, 0);
      if (existing !== null) throw alreadyInitialisedError(this.ctx.endpoints, decodeClusterConfig(this.k(KEYS.config), existing.value));
      // The secret appeared meanwhile: read it again.
    }
    throw conflictError('init cluster');
  }

  async wipe(): Promise<number> {
    const res = await this.call(`wipe ${this.prefix}`, () => this.ns.delete().all().exec());
    return Number(res.deleted);
  }

  async listPeers(): Promise<PeerRecord[]> {
    const kvs = await this.listPrefix(KEYS.peersPrefix, PEERS_LIST_MAX);
    return kvs.map((kv) => decodePeerRecord(this.k(kv.key), kv.value));
  }

  async getRing(): Promise<RingRecord> {
    const kv = await this.getKv(KEYS.ring);
    if (kv === null) throw notInitialisedError();
    return decodeRingRecord(this.k(KEYS.ring), kv.value);
  }

  async setRing(next: RingRecord): Promise<void> {
    validateRing(next);
    const kv = await this.getKv(KEYS.ring);
    if (kv === null) throw notInitialisedError();
    const current = decodeRingRecord(this.k(KEYS.ring), kv.value);
    if (next.version !== current.version + 1) throw ringConflictError(current.version, next.version);
    const res = await this.call('set ring', () =>
      this.ns.if(KEYS.ring, 'Mod', '==', kv.modRevision).then(this.ns.put(KEYS.ring).value(encodeRecord(next))).commit(),
    );
    if (!res.succeeded) throw ringConflictError(current.version, next.version, true);
    this.log.info({ ringVersion: next.version, members: next.members.length, replication: next.replication, phase: next.transition?.phase ?? 'stable' }, 'ring changed');
  }

  async watchRing(onChange: (ring: RingRecord) => void): Promise<() => Promise<void>> {
    const key = this.k(KEYS.ring);
    let lastVersion = 0;
    const deliver = (text: string): void => {
      let ring: RingRecord;
      try {
        ring = decodeRingRecord(key, text);
      } catch (err) {
        this.log.error({ err }, 'ignoring a ring record that does not decode');
        return;
      }
      // A watch that resyncs may see a version again; callers see each once.
      if (ring.version <= lastVersion) return;
      lastVersion = ring.version;
      try {
        onChange(ring);
      } catch (err) {
        this.log.error({ err }, 'ring watch callback threw');
      }
    };
    return this.openWatch({
      what: 'ring',
      key: KEYS.ring,
      startRevision: null,
      resync: async (initial) => {
        const { kv, revision } = await this.getKvAt(KEYS.ring);
        if (kv === null) {
          if (initial) throw notInitialisedError();
          lastVersion = 0;
        } else {
          deliver(kv.value);
        }
        return revision;
      },
      onPut: (_key, value) => deliver(value),
      onDelete: () => {
        this.log.warn('ring key deleted (cluster wiped); waiting for a new ring');
        lastVersion = 0;
      },
    });
  }

  // ---- cluster secret

  async getClusterSecret(): Promise<string | null> {
    const kv = await this.getKv(KEYS.secret);
    return kv === null ? null : decodeClusterSecret(this.k(KEYS.secret), kv.value);
  }

  async ensureClusterSecret(): Promise<string> {
    const existing = await this.getClusterSecret();
    if (existing !== null) return existing;
    const res = await this.call('create secret', () =>
      this.ns.if(KEYS.secret, 'Create', '==', 0).then(this.ns.put(KEYS.secret).value(newSecret())).else(this.ns.get(KEYS.secret)).commit(),
    );
    if (!res.succeeded) {
      // Another peer created it first: use theirs.
      const kv = firstKv(res, 0);
      if (kv === null) throw conflictError('create the cluster secret');
      return decodeClusterSecret(this.k(KEYS.secret), kv.value);
    }
    const kv = await this.getKv(KEYS.secret);
    if (kv === null) throw conflictError('create the cluster secret');
    this.log.info('cluster secret created');
    return decodeClusterSecret(this.k(KEYS.secret), kv.value);
  }

  // ---- fencing tokens

  async getFence(volumeId: number): Promise<number> {
    const kv = await this.getKv(volumeFenceKey(volumeId));
    return decodeCounter(this.k(volumeFenceKey(volumeId)), kv?.value ?? null);
  }

  async listFences(): Promise<{ fences: Map<number, number>; revision: number }> {
    const { kvs, revision } = await this.listComplete(KEYS.volumeFencePrefix);
    const fences = new Map<number, number>();
    for (const kv of kvs) fences.set(fenceIdOf(kv.key), decodeCounter(this.k(kv.key), kv.value));
    return { fences, revision };
  }

  async watchFences(
    revision: number,
    onFence: (volumeId: number, token: number, revision: number) => void,
    onResync: (all: { fences: Map<number, number>; revision: number }) => void,
  ): Promise<() => Promise<void>> {
    if (!Number.isSafeInteger(revision) || revision < 0) throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid etcd revision ${String(revision)}`);
    const safely = (fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        this.log.error({ err }, 'fence watch callback threw');
      }
    };
    return this.openWatch({
      what: 'fences',
      prefix: KEYS.volumeFencePrefix,
      startRevision: revision + 1,
      resync: async () => {
        const all = await this.listFences();
        safely(() => onResync(all));
        return all.revision;
      },
      onPut: (key, value, modRevision) => {
        let id: number;
        let token: number;
        try {
          id = fenceIdOf(key);
          token = decodeCounter(this.k(key), value);
        } catch (err) {
          this.log.error({ err }, 'ignoring a fence that does not decode');
          return;
        }
        safely(() => onFence(id, token, modRevision));
      },
      // Deletes come with deleted volumes: no token to learn.
    });
  }

  // ---- stale records

  async getStale(volumeId: number): Promise<StaleRecord[]> {
    const { kvs } = await this.listComplete(staleVolumePrefix(volumeId));
    return kvs.map((kv) => decodeStaleRecord(this.k(kv.key), kv.value));
  }

  async listStale(): Promise<StaleRecord[]> {
    const { kvs } = await this.listComplete(KEYS.stalePrefix);
    return kvs.map((kv) => decodeStaleRecord(this.k(kv.key), kv.value));
  }

  async addStale(volumeId: number, peer: string, add: StaleAdd): Promise<void> {
    const { ranges, unsure } = checkStaleAdd(volumeId, peer, add);
    const key = staleKey(volumeId, peer);
    const fenceKey = volumeFenceKey(volumeId);
    for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
      const kv = await this.getKv(key);
      const current = kv === null ? null : decodeStaleRecord(this.k(key), kv.value);
      const next = addToStale(current, { all: add.all === true, ranges, unsure });
      const record = newStaleRecord(volumeId, peer, next, this.now());
      // A deleted volume has no fence key: its records must not come back.
      const res = await this.call(`add stale ${this.k(key)}`, () => {
        const fenced = add.token === undefined ? this.ns.if(fenceKey, 'Version', '>', 0) : this.ns.if(fenceKey, 'Value', '==', String(add.token));
        return fenced
          .and(key, 'Mod', '==', kv?.modRevision ?? 0)
          .then(this.ns.put(key).value(encodeRecord(record)))
          .else(this.ns.get(fenceKey))
          .commit();
      });
      if (res.succeeded) return;
      const fenceKv = firstKv(res, 0);
      if (fenceKv === null) throw volumeIdNotFoundError(volumeId);
      if (add.token !== undefined) {
        const fence = decodeCounter(this.k(fenceKey), fenceKv.value);
        if (fence !== add.token) throw volumeFencedError(volumeId, add.token, fence);
      }
    }
    throw conflictError(`add stale blocks of volume ${volumeId} for ${peer}`);
  }

  async removeStale(volumeId: number, peer: string, ranges: readonly BlockRange[] | 'all', token: number): Promise<void> {
    const remove = checkStaleRemove(volumeId, peer, ranges, token);
    await this.changeStale(volumeId, peer, token, 'remove', (current) => removeFromStale(current, remove));
  }

  /** A fenced compare-and-swap of one stale record: `next` returns the record itself when nothing changes. */
  private async changeStale(volumeId: number, peer: string, token: number, what: string, next: (current: StaleRecord | null) => StaleSet | null): Promise<void> {
    const key = staleKey(volumeId, peer);
    const fenceKey = volumeFenceKey(volumeId);
    for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
      const kv = await this.getKv(key);
      const current = kv === null ? null : decodeStaleRecord(this.k(key), kv.value);
      const after = next(current);
      // The fence check runs in the same transaction as the change: a
      // coordinator fenced off after it read the record changes nothing.
      const res = await this.call(`${what} stale ${this.k(key)}`, () => {
        const ops =
          after === current
            ? []
            : after === null
              ? [this.ns.delete().key(key)]
              : [this.ns.put(key).value(encodeRecord(current === null ? newStaleRecord(volumeId, peer, after, this.now()) : staleRecordOf(current, after, this.now())))];
        return this.ns
          .if(fenceKey, 'Value', '==', String(token))
          .and(key, 'Mod', '==', kv?.modRevision ?? 0)
          .then(...ops)
          .else(this.ns.get(fenceKey))
          .commit();
      });
      if (res.succeeded) return;
      const fence = decodeCounter(this.k(fenceKey), firstKv(res, 0)?.value ?? null);
      if (fence !== token) throw volumeFencedError(volumeId, token, fence);
    }
    throw conflictError(`${what} stale blocks of volume ${volumeId} for ${peer}`);
  }

  async narrowStale(volumeId: number, peer: string, keep: readonly BlockRange[], token: number): Promise<void> {
    const kept = checkStaleNarrow(volumeId, peer, keep, token);
    await this.changeStale(volumeId, peer, token, 'narrow', (current) => narrowStaleSet(current, kept));
  }

  // ---- ring transitions

  async listRingAcks(): Promise<RingAck[]> {
    const { kvs } = await this.listComplete(KEYS.ringAcksPrefix);
    return kvs.map((kv) => decodeRingAck(this.k(kv.key), kv.value));
  }

  async listVolumeMoves(ringVersion: number): Promise<VolumeMoveRecord[]> {
    const { kvs } = await this.listComplete(movesVersionPrefix(ringVersion));
    return kvs.map((kv) => decodeVolumeMoveRecord(this.k(kv.key), kv.value)).sort((a, b) => a.volumeId - b.volumeId);
  }

  async putVolumeMove(record: VolumeMoveRecord, token: number): Promise<void> {
    validateMoveRecord(record, token);
    const fenceKey = volumeFenceKey(record.volumeId);
    const key = moveKey(record.ringVersion, record.volumeId);
    const res = await this.call(`put move ${this.k(key)}`, () =>
      this.ns.if(fenceKey, 'Value', '==', String(token)).then(this.ns.put(key).value(encodeRecord(record))).else(this.ns.get(fenceKey)).commit(),
    );
    if (!res.succeeded) throw volumeFencedError(record.volumeId, token, decodeCounter(this.k(fenceKey), firstKv(res, 0)?.value ?? null));
  }

  async pruneVolumeMoves(belowRingVersion: number): Promise<void> {
    const { kvs } = await this.listComplete(KEYS.movesPrefix);
    const old = kvs.filter((kv) => {
      const k = parseMoveKey(kv.key);
      return k === null || k.ringVersion < belowRingVersion;
    });
    await this.deleteKeys(old.map((kv) => kv.key), `prune moves below ${belowRingVersion}`);
  }

  private async deleteKeys(keys: readonly string[], op: string): Promise<void> {
    for (let i = 0; i < keys.length; i += TXN_OPS_MAX) {
      const batch = keys.slice(i, i + TXN_OPS_MAX);
      // The client builds transactions from a compare; this one always holds.
      await this.call(op, () => this.ns.if(KEYS.config, 'Version', '>', -1).then(...batch.map((k) => this.ns.delete().key(k))).commit());
    }
  }

  // ---- health

  async listVolumeHealth(): Promise<VolumeHealthRecord[]> {
    const { kvs } = await this.listComplete(KEYS.healthPrefix);
    return kvs.map((kv) => decodeVolumeHealthRecord(this.k(kv.key), kv.value)).sort((a, b) => a.volumeId - b.volumeId);
  }

  async putVolumeHealth(record: VolumeHealthRecord): Promise<void> {
    validateHealthRecord(record);
    const fenceKey = volumeFenceKey(record.volumeId);
    const key = healthKey(record.volumeId);
    const res = await this.call(`put health ${this.k(key)}`, () =>
      this.ns.if(fenceKey, 'Version', '>', 0).then(this.ns.put(key).value(encodeRecord(record))).commit(),
    );
    if (!res.succeeded) throw volumeIdNotFoundError(record.volumeId);
  }

  // ---- volumes

  async createVolume(name: string, size: number, opts: { readonly admit?: (volumes: readonly VolumeRecord[]) => void } = {}): Promise<VolumeRecord> {
    validateVolumeName(name);
    validateVolumeSize(size);
    const vKey = volumeKey(name);
    for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
      const cfgKv = await this.getKv(KEYS.config);
      if (cfgKv === null) throw notInitialisedError();
      const config = decodeClusterConfig(this.k(KEYS.config), cfgKv.value);
      const counter = await this.getKv(KEYS.volumeIdCounter);
      if (opts.admit) {
        // Listed after the counter was read: every create bumps the counter
        // in its own transaction, so one that lands after this listing fails
        // the comparison below and this create lists again.
        const volumes = (await this.listComplete(KEYS.volumesPrefix)).kvs.map((kv) => decodeVolumeRecord(this.k(kv.key), kv.value));
        if (volumes.some((v) => v.name === name)) throw new TorusError('TORUS_ERR_VOLUME_EXISTS', `a volume named "${name}" already exists`, { details: { volume: name } });
        opts.admit(volumes);
      }
      const id = decodeCounter(this.k(KEYS.volumeIdCounter), counter?.value ?? null) + 1;
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
      if (firstKv(res, 0) !== null) {
        throw new TorusError('TORUS_ERR_VOLUME_EXISTS', `a volume named "${name}" already exists`, { details: { volume: name } });
      }
      if (firstKv(res, 1) === null) throw notInitialisedError();
    }
    throw conflictError(`create volume "${name}"`);
  }

  async getVolume(name: string): Promise<VolumeRecord> {
    validateVolumeName(name);
    const kv = await this.getKv(volumeKey(name));
    if (kv === null) throw volumeNotFoundError(name);
    return decodeVolumeRecord(this.k(volumeKey(name)), kv.value);
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    const kvs = await this.listPrefix(KEYS.volumesPrefix, VOLUMES_LIST_MAX);
    const volumes = kvs.map((kv) => decodeVolumeRecord(this.k(kv.key), kv.value));
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
    const lastId = decodeCounter(this.k(KEYS.volumeIdCounter), counter?.value ?? null);
    const live = (await this.listVolumes()).map((v) => v.id);
    return { live, lastId };
  }

  async watchVolumeDeletes(onDelete: () => void): Promise<() => Promise<void>> {
    const safely = (): void => {
      try {
        onDelete();
      } catch (err) {
        this.log.error({ err }, 'volume watch callback threw');
      }
    };
    return this.openWatch({
      what: 'volumes',
      prefix: KEYS.volumesPrefix,
      startRevision: null,
      // After a lost stream a deletion may have been missed: say so once.
      resync: async (initial) => {
        const { revision } = await this.getKvAt(KEYS.volumeIdCounter);
        if (!initial) safely();
        return revision;
      },
      onDelete: () => safely(),
    });
  }

  async deleteVolume(name: string, opts: { readonly id?: number } = {}): Promise<VolumeRecord> {
    validateVolumeName(name);
    const vKey = volumeKey(name);
    for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
      const kv = await this.getKv(vKey);
      if (kv === null) throw volumeNotFoundError(name);
      const record = decodeVolumeRecord(this.k(vKey), kv.value);
      // The transaction below checks the record is still this one (its mod revision).
      if (opts.id !== undefined && record.id !== opts.id) throw volumeNotFoundError(name);
      const lockKey = volumeLockKey(record.id);
      const moves = (await this.listComplete(KEYS.movesPrefix)).kvs.filter((m) => parseMoveKey(m.key)?.volumeId === record.id).map((m) => m.key);
      const inTxn = moves.slice(0, TXN_OPS_MAX);
      // Ids are never reused: every record keyed by this id goes with the
      // volume. A maintainer still at work finds its lock and fence gone
      // (its guarded writes fail as fenced), and stale and health records
      // cannot come back (they need the fence key).
      const readers = volumeReadersPrefix(record.id);
      const res = await this.call(`delete volume ${name}`, () =>
        andNoKeyUnder(this.ns.if(vKey, 'Mod', '==', kv.modRevision).and(lockKey, 'Version', '==', 0), readers)
          .then(
            this.ns.delete().key(vKey),
            this.ns.delete().key(volumeFenceKey(record.id)),
            this.ns.delete().key(volumeReleasedKey(record.id)),
            this.ns.delete().key(volumeExpiredKey(record.id)),
            this.ns.delete().key(volumeMaintKey(record.id)),
            this.ns.delete().key(healthKey(record.id)),
            this.ns.delete().prefix(staleVolumePrefix(record.id)),
            ...inTxn.map((m) => this.ns.delete().key(m)),
          )
          .else(this.ns.get(lockKey), this.ns.get(vKey), this.ns.getAll().prefix(readers).limit(READERS_SHOWN_MAX))
          .commit(),
      );
      if (res.succeeded) {
        // Move records cannot be written any more (no fence): the rest can go at leisure.
        await this.deleteKeys(moves.slice(TXN_OPS_MAX), `delete move records of volume ${record.id}`);
        this.log.info({ volume: name, volumeId: record.id }, 'volume deleted');
        return record;
      }
      const lock = firstKv(res, 0);
      if (lock !== null) throw volumeInUseError(name, decodeVolumeLockRecord(this.k(lockKey), lock.value));
      if (firstKv(res, 1) === null) throw volumeNotFoundError(name);
      const readerRange = res.responses[2]?.response_range;
      if (readerRange && readerRange.kvs.length > 0) {
        const recs = readerRange.kvs.map((r) => decodeVolumeLockRecord(this.k(r.key.toString('utf8')), r.value.toString('utf8')));
        throw volumeReadersError(name, recs, Number(readerRange.count));
      }
    }
    throw conflictError(`delete volume "${name}"`);
  }

  async getVolumeExpired(volumeId: number): Promise<number> {
    const kv = await this.getKv(volumeExpiredKey(volumeId));
    return decodeCounter(this.k(volumeExpiredKey(volumeId)), kv?.value ?? null);
  }

  async getVolumeLock(volumeId: number): Promise<VolumeLockRecord | null> {
    const kv = await this.getKv(volumeLockKey(volumeId));
    return kv === null ? null : decodeVolumeLockRecord(this.k(volumeLockKey(volumeId)), kv.value);
  }

  async listVolumeReaders(volumeId: number): Promise<VolumeLockRecord[]> {
    const { kvs } = await this.listComplete(volumeReadersPrefix(volumeId));
    return kvs.map((kv) => decodeVolumeLockRecord(this.k(kv.key), kv.value)).sort((a, b) => (a.acquiredAt < b.acquiredAt ? -1 : a.acquiredAt > b.acquiredAt ? 1 : 0));
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
    const watches = [...this.watches];
    this.watches.clear();
    await Promise.all(watches.map((w) => w.stop()));
    this.closed = true;
    this.client.close();
  }
}

function newSecret(): string {
  return randomBytes(CLUSTER_SECRET_BYTES).toString('hex');
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
