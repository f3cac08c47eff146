import { Range, type ComparatorBuilder, type Lease, type Namespace } from 'etcd3';
import { ResumedLease } from './resumed-lease.js';
import { assertSessionUsable, SessionListeners, type SessionState } from './session-listeners.js';
import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import { assert } from '../util/assert.js';
import type { PeerRecord, RingAck, VolumeLockRecord, VolumeRecord } from '../model/records.js';
import type { Clock } from '../util/clock.js';
import { toTorusError } from './etcd-errors.js';
import { UnansweredLocks } from './unanswered-locks.js';
import { EarlierRunLocks, LOCK_KEYS_SCANNED_MAX } from './earlier-run-locks.js';
import { KEYS, peerKey, ringAckKey, volumeFenceKey, volumeKey, volumeLockKey, volumeMaintKey, volumeReaderKey, volumeReadersPrefix, volumeReleasedKey, volumeExpiredKey } from './keys.js';
import type { MaintenanceLockOptions, MetadataSession, SessionEvent, VolumeLock, VolumeReaderLock } from './metadata-service.js';
import { decodeCounter, decodeVolumeLockRecord, decodeVolumeRecord, encodeRecord } from './record-codec.js';
import {
  checkExpiredForMaintenance,
  refusesExpired,
  validateHolder,
  validatePeerUuid,
  validateRingAck,
  validateVolumeId,
  validateVolumeName,
  volumeIdNotFoundError,
  volumeInUseError,
  volumeNotFoundError,
  volumeReadersError,
} from './validate.js';

export const LOCK_ATTEMPTS_MAX = 8;
/** Keepalives in flight that we remember the send time of (see leaseDeadline). */
const PENDING_KEEPALIVES_MAX = 64;
/** lockVolumeForMaintenance finds a volume by id in a listing of at most this many volumes. */
const VOLUMES_SCAN_MAX = 65_536;

type Call = <T>(op: string, fn: () => Promise<T>) => Promise<T>;

/**
 * Adds "no key exists under `prefix`" to a transaction's conditions. etcd
 * (3.3 and later) compares a target over a key range when the comparison
 * carries a range_end, and CREATE == 0 over a range holds exactly when the
 * range is empty. etcd3's builder cannot say range_end, so the clause is
 * made by its own `and` (which applies the namespace) and then given the
 * range end of its namespaced key. The contract suite runs this against a
 * real etcd.
 */
export function andNoKeyUnder(txn: ComparatorBuilder, prefix: string): ComparatorBuilder {
  txn.and(prefix, 'Create', '==', 0);
  const compare = (txn as unknown as { request: { compare: Promise<{ key: Buffer }>[] } }).request.compare;
  const i = compare.length - 1;
  compare[i] = compare[i]!.then((c) => ({ ...c, range_end: Range.prefix(c.key).end }));
  return txn;
}

/** How many reader records a refusal reads to name the first reader and count them. */
const READERS_SHOWN_MAX = 1_000;

export interface EtcdSessionDeps {
  readonly ns: Namespace;
  readonly prefix: string;
  /** For error messages. */
  readonly endpoints: string;
  readonly ttlSeconds: number;
  readonly call: Call;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly onClosed: (s: EtcdSession) => void;
}


/**
 * One etcd lease kept alive by the etcd3 client. The lease deadline is
 * computed from the send time of the keepalive that etcd answered, so it
 * never runs later than the server's own expiry.
 */
export class EtcdSession implements MetadataSession {
  readonly id: string;
  private readonly lease: Lease | ResumedLease;
  private readonly deps: EtcdSessionDeps;
  private readonly log: Logger;
  private readonly listeners = new SessionListeners();
  private readonly pendingKeepalives: number[] = [];
  private state: SessionState = 'healthy';
  private deadline: number;
  private watchdog: { cancel(): void } | undefined;
  private readonly unanswered: UnansweredLocks;
  /** Set by resume(): the earlier run's locks on the lease; null for a session of its own. */
  private earlierRun: EarlierRunLocks | null = null;

  private constructor(deps: EtcdSessionDeps, lease: Lease | ResumedLease, id: string, deadline: number) {
    this.deps = deps;
    this.lease = lease;
    this.id = id;
    this.log = deps.logger.child({ session: id });
    this.deadline = deadline;
    this.unanswered = new UnansweredLocks(deps.clock);
    lease.on('keepaliveFired', () => {
      if (this.pendingKeepalives.length < PENDING_KEEPALIVES_MAX) this.pendingKeepalives.push(deps.clock.monotonic());
    });
    lease.on('keepaliveSucceeded', (res) => {
      const sentAt = this.pendingKeepalives.shift();
      const ttlMs = Number(res.TTL) * 1000;
      if (sentAt !== undefined && Number.isFinite(ttlMs) && ttlMs > 0) this.deadline = Math.max(this.deadline, sentAt + ttlMs);
      this.armWatchdog();
      if (this.state === 'degraded') {
        this.state = 'healthy';
        this.log.info('lease keepalive recovered');
        this.emit({ type: 'healthy' });
      }
    });
    lease.on('keepaliveFailed', (err: unknown) => {
      // The stream is torn down and re-opened: its answers will never come.
      this.pendingKeepalives.length = 0;
      if (this.state !== 'healthy') return;
      this.state = 'degraded';
      const e = toTorusError(err, { endpoints: deps.endpoints }, 'lease keepalive');
      this.log.warn({ err: e, leaseDeadlineInMs: Math.round(this.deadline - deps.clock.monotonic()) }, 'lease keepalive failed');
      this.emit({ type: 'degraded', err: e });
    });
    lease.on('lost', (err: unknown) => this.markLost(err instanceof Error ? err.message : String(err)));
    this.armWatchdog();
  }

  static async open(deps: EtcdSessionDeps): Promise<EtcdSession> {
    const grantedAt = deps.clock.monotonic();
    const lease = deps.ns.lease(deps.ttlSeconds);
    let id: string;
    try {
      id = await deps.call(`grant lease (ttl ${deps.ttlSeconds} s)`, () => lease.grant());
    } catch (err) {
      lease.release();
      throw err;
    }
    deps.logger.debug({ session: id, ttlSeconds: deps.ttlSeconds }, 'session opened');
    return new EtcdSession(deps, lease, id, grantedAt + deps.ttlSeconds * 1000);
  }

  /**
   * Takes over a lease granted by an earlier run of this process (kernel
   * attachments keep their volume locks across a torusd restart). Refused
   * with TORUS_ERR_SESSION_LOST when etcd no longer has it: its locks are
   * gone and may be someone else's by now.
   */
  static async resume(deps: EtcdSessionDeps, leaseId: string): Promise<EtcdSession> {
    if (!/^[0-9]+$/.test(leaseId)) throw new TorusError('TORUS_ERR_ARG_INVALID', `lease id "${leaseId}" is not a decimal number`);
    const askedAt = deps.clock.monotonic();
    const res = await deps.call(`time to live of lease ${leaseId}`, () => deps.ns.leaseClient.leaseTimeToLive({ ID: leaseId }));
    const remaining = Number(res.TTL);
    if (!(remaining > 0)) throw new TorusError('TORUS_ERR_SESSION_LOST', `etcd lease ${leaseId} has expired or was revoked`);
    const lease = new ResumedLease(deps.ns, leaseId, deps.ttlSeconds);
    deps.logger.info({ session: leaseId, remainingSeconds: remaining }, 'session resumed');
    // etcd says "expires in under TTL+1 s" from when it answered, which is
    // after we asked: counting from the ask keeps the deadline early.
    const session = new EtcdSession(deps, lease, leaseId, askedAt + remaining * 1000);
    // Before this run writes anything under the lease: what it takes from
    // now on is changed after this revision (earlier-run-locks.ts).
    session.earlierRun = new EarlierRunLocks(leaseId, BigInt(res.header.revision));
    return session;
  }

  /** Past the deadline the lease is gone server-side whatever the client thinks. */
  private armWatchdog(): void {
    this.watchdog?.cancel();
    if (this.state === 'lost' || this.state === 'closed') return;
    const inMs = Math.max(0, this.deadline - this.deps.clock.monotonic());
    this.watchdog = this.deps.clock.setTimeout(() => {
      if (this.deps.clock.monotonic() >= this.deadline) this.markLost('no keepalive answered before the lease deadline');
      else this.armWatchdog();
    }, inMs + 1);
  }

  private markLost(why: string): void {
    if (this.state === 'lost' || this.state === 'closed') return;
    this.state = 'lost';
    this.watchdog?.cancel();
    // Stop keepalives: a lease we have declared lost must not come back to
    // life under locks other writers may since have taken.
    this.lease.release();
    const err = new TorusError('TORUS_ERR_SESSION_LOST', `etcd session ${this.id} lost its lease: ${why}`);
    this.log.error({ err }, 'session lost');
    this.emit({ type: 'lost', err });
  }

  private emit(event: SessionEvent): void {
    this.listeners.emit(event, (err) => this.log.error({ err }, 'session listener threw'));
  }

  /** A call under the lease; etcd saying the lease is gone makes the session lost at once. */
  private async leased<T>(op: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await this.deps.call(op, fn);
    } catch (err) {
      if (isTorusError(err, 'TORUS_ERR_SESSION_LOST')) this.markLost(`etcd no longer knows the lease (${op})`);
      throw err;
    }
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
    await this.leased(`put peer ${record.uuid}`, () =>
      this.deps.ns.put(peerKey(record.uuid)).value(encodeRecord(record)).lease(this.id).exec(),
    );
  }

  /**
   * The last token let go cleanly (volume-released/<id>, 0 when none), with
   * the revision a lock transaction compares: the lock then reports
   * exactly whether its predecessor was let go (it may be, by a maintainer a
   * writer overrides, between our read and our transaction). With it, the
   * newest token recorded as ended without a clean release
   * (volume-expired/<id>): only lock transactions write it, and each of
   * them moves the fence they compare, so it needs no compare of its own.
   */
  private async released(volumeId: number): Promise<{ releasedKey: string; releasedRevision: string | number; released: number; expired: number }> {
    const { ns, call, prefix } = this.deps;
    const releasedKey = volumeReleasedKey(volumeId);
    const expiredKey = volumeExpiredKey(volumeId);
    const res = await call(`get ${prefix}${releasedKey}`, () => ns.get(releasedKey).exec());
    const kv = res.kvs[0];
    const eRes = await call(`get ${prefix}${expiredKey}`, () => ns.get(expiredKey).exec());
    const eKv = eRes.kvs[0];
    return {
      releasedKey,
      releasedRevision: kv ? kv.mod_revision : 0,
      released: decodeCounter(prefix + releasedKey, kv ? kv.value.toString('utf8') : null),
      expired: decodeCounter(prefix + expiredKey, eKv ? eKv.value.toString('utf8') : null),
    };
  }

  /**
   * What a lock transaction that takes token fence + 1 also writes: when
   * the lock before it did not end cleanly, its token is recorded as
   * expired for every later holder (they may release cleanly, and the next
   * one would otherwise not know). Returns the expired token the new lock
   * starts with.
   */
  private expiryOf(volumeId: number, fence: number, released: number, expired: number): { ops: Array<ReturnType<Namespace['put']>>; expiredToken: number } {
    if (released === fence) return { ops: [], expiredToken: expired };
    return { ops: [this.deps.ns.put(volumeExpiredKey(volumeId)).value(String(fence))], expiredToken: Math.max(expired, fence) };
  }

  /** The volume's record and its fence, with the revisions a lock transaction compares. */
  private async volumeAndFence(name: string) {
    const { ns, call, prefix } = this.deps;
    const vKey = volumeKey(name);
    const vRes = await call(`get ${prefix}${vKey}`, () => ns.get(vKey).exec());
    const vKv = vRes.kvs[0];
    if (vKv === undefined) throw volumeNotFoundError(name);
    const volume = decodeVolumeRecord(prefix + vKey, vKv.value.toString('utf8'));
    const fenceKey = volumeFenceKey(volume.id);
    const fRes = await call(`get ${prefix}${fenceKey}`, () => ns.get(fenceKey).exec());
    const fKv = fRes.kvs[0];
    const fence = decodeCounter(prefix + fenceKey, fKv ? fKv.value.toString('utf8') : null);
    return { vKey, volumeRevision: vKv.mod_revision, volume, fenceKey, fenceRevision: fKv ? fKv.mod_revision : 0, fence };
  }

  async lockVolume(name: string, holder: string): Promise<VolumeLock> {
    validateVolumeName(name);
    validateHolder(holder);
    this.assertUsable(`lock volume ${name}`);
    await this.reclaimQuietly();
    const { ns, prefix } = this.deps;
    for (let attempt = 0; attempt < LOCK_ATTEMPTS_MAX; attempt++) {
      const { vKey, volumeRevision, volume, fenceKey, fenceRevision, fence } = await this.volumeAndFence(name);
      const { releasedKey, releasedRevision, released, expired } = await this.released(volume.id);
      const expiry = this.expiryOf(volume.id, fence, released, expired);
      const lockKey = volumeLockKey(volume.id);
      const token = fence + 1;
      const record: VolumeLockRecord = { schema: 1, volumeId: volume.id, holder, token, acquiredAt: new Date(this.deps.clock.now()).toISOString(), kind: 'writer' };
      // Lock and fence move together: a token is handed out only with the
      // lock. A maintenance lock does not block a writer: the newer token
      // fences the maintainer off.
      const readers = volumeReadersPrefix(volume.id);
      const value = encodeRecord(record);
      // Readers exclude a writer: no reader key may exist when the lock is taken.
      const res = await this.lockTxn(`lock volume ${name}`, lockKey, value, () =>
        andNoKeyUnder(ns.if(vKey, 'Mod', '==', volumeRevision).and(lockKey, 'Create', '==', 0).and(fenceKey, 'Mod', '==', fenceRevision).and(releasedKey, 'Mod', '==', releasedRevision), readers)
          .then(ns.put(lockKey).value(value).lease(this.id), ns.put(fenceKey).value(String(token)), ...expiry.ops)
          .else(ns.get(lockKey), ns.getAll().prefix(readers).limit(READERS_SHOWN_MAX))
          .commit(),
      );
      const held = res.succeeded ? undefined : res.responses[0]?.response_range.kvs[0];
      if (res.succeeded || this.isThisAttempt(held, value)) {
        this.log.info({ volume: name, volumeId: volume.id, token, previousReleased: released === fence }, 'volume locked');
        return new EtcdVolumeLock(this.deps, this.id, volume, record, lockKey, released === fence, expiry.expiredToken);
      }
      if (held !== undefined) throw volumeInUseError(name, decodeVolumeLockRecord(prefix + lockKey, held.value.toString('utf8')));
      const readerKvs = res.responses[1]?.response_range.kvs ?? [];
      if (readerKvs.length > 0) {
        const recs = readerKvs.map((kv) => decodeVolumeLockRecord(prefix + kv.key.toString('utf8'), kv.value.toString('utf8')));
        throw volumeReadersError(name, recs, Number(res.responses[1]!.response_range.count));
      }
      // The volume record, the fence or the release record moved under us: read again.
    }
    throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', `lock volume "${name}" lost ${LOCK_ATTEMPTS_MAX} races with concurrent changes; retry`);
  }

  async lockVolumeForReading(name: string, holder: string): Promise<VolumeReaderLock> {
    validateVolumeName(name);
    validateHolder(holder);
    this.assertUsable(`lock volume ${name} for reading`);
    await this.reclaimQuietly();
    const { ns, prefix } = this.deps;
    for (let attempt = 0; attempt < LOCK_ATTEMPTS_MAX; attempt++) {
      const { vKey, volumeRevision, volume, fence } = await this.volumeAndFence(name);
      const lockKey = volumeLockKey(volume.id);
      const readerKey = volumeReaderKey(volume.id, this.id);
      const record: VolumeLockRecord = { schema: 1, volumeId: volume.id, holder, token: fence, acquiredAt: new Date(this.deps.clock.now()).toISOString(), kind: 'reader' };
      // The volume must still be this record (not deleted and re-created
      // under the name) and no writer may hold it.
      const value = encodeRecord(record);
      const res = await this.lockTxn(`lock volume ${name} for reading`, readerKey, value, () =>
        ns.if(vKey, 'Mod', '==', volumeRevision).and(lockKey, 'Create', '==', 0).then(ns.put(readerKey).value(value).lease(this.id)).else(ns.get(lockKey)).commit(),
      );
      if (res.succeeded) {
        this.log.info({ volume: name, volumeId: volume.id }, 'volume locked for reading');
        return new EtcdVolumeReaderLock(this.deps, this.id, volume, holder, readerKey);
      }
      const held = res.responses[0]?.response_range.kvs[0];
      if (held !== undefined) throw volumeInUseError(name, decodeVolumeLockRecord(prefix + lockKey, held.value.toString('utf8')));
      // The volume record moved under us: read again.
    }
    throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', `lock volume "${name}" for reading lost ${LOCK_ATTEMPTS_MAX} races with concurrent changes; retry`);
  }

  async lockVolumeForMaintenance(volumeId: number, holder: string, opts?: MaintenanceLockOptions): Promise<VolumeLock> {
    validateVolumeId(volumeId);
    validateHolder(holder);
    this.assertUsable(`lock volume ${volumeId} for maintenance`);
    await this.reclaimQuietly();
    const { ns, call, prefix } = this.deps;
    const lockKey = volumeLockKey(volumeId);
    const maintKey = volumeMaintKey(volumeId);
    const fenceKey = volumeFenceKey(volumeId);
    for (let attempt = 0; attempt < LOCK_ATTEMPTS_MAX; attempt++) {
      // Volume keys are by name: find the id in a listing.
      const list = await call(`list ${prefix}${KEYS.volumesPrefix}`, () => ns.getAll().prefix(KEYS.volumesPrefix).limit(VOLUMES_SCAN_MAX).exec());
      let found: { volume: VolumeRecord; key: string; modRevision: string } | null = null;
      for (const kv of list.kvs) {
        const key = kv.key.toString('utf8');
        const v = decodeVolumeRecord(prefix + key, kv.value.toString('utf8'));
        if (v.id === volumeId) found = { volume: v, key, modRevision: kv.mod_revision };
      }
      if (found === null) throw volumeIdNotFoundError(volumeId);
      const { volume } = found;
      const fRes = await call(`get ${prefix}${fenceKey}`, () => ns.get(fenceKey).exec());
      const fKv = fRes.kvs[0];
      const fence = decodeCounter(prefix + fenceKey, fKv ? fKv.value.toString('utf8') : null);
      const { releasedKey, releasedRevision, released, expired } = await this.released(volumeId);
      if (refusesExpired(fence, released === fence, opts)) {
        // A lock held now has not expired: refused as the transaction would.
        for (const key of [lockKey, maintKey]) {
          const held = (await call(`get ${prefix}${key}`, () => ns.get(key).exec())).kvs[0];
          if (held !== undefined) throw volumeInUseError(volume.name, decodeVolumeLockRecord(prefix + key, held.value.toString('utf8')));
        }
        checkExpiredForMaintenance(volume, fence, false, opts);
      }
      const expiry = this.expiryOf(volumeId, fence, released, expired);
      const token = fence + 1;
      const record: VolumeLockRecord = { schema: 1, volumeId, holder, token, acquiredAt: new Date(this.deps.clock.now()).toISOString(), kind: 'maintainer' };
      const value = encodeRecord(record);
      const res = await this.lockTxn(`lock volume ${volume.name} for maintenance`, maintKey, value, () =>
        ns
          .if(found.key, 'Mod', '==', found.modRevision)
          .and(lockKey, 'Create', '==', 0)
          .and(maintKey, 'Create', '==', 0)
          .and(fenceKey, 'Mod', '==', fKv ? fKv.mod_revision : 0)
          .and(releasedKey, 'Mod', '==', releasedRevision)
          .then(ns.put(maintKey).value(value).lease(this.id), ns.put(fenceKey).value(String(token)), ...expiry.ops)
          .else(ns.get(lockKey), ns.get(maintKey))
          .commit(),
      );
      if (res.succeeded || this.isThisAttempt(res.responses[1]?.response_range.kvs[0], value)) {
        this.log.info({ volume: volume.name, volumeId, token, previousReleased: released === fence }, 'volume locked for maintenance');
        return new EtcdVolumeLock(this.deps, this.id, volume, record, maintKey, released === fence, expiry.expiredToken);
      }
      for (const [i, key] of [lockKey, maintKey].entries()) {
        const held = res.responses[i]?.response_range.kvs[0];
        if (held !== undefined) throw volumeInUseError(volume.name, decodeVolumeLockRecord(prefix + key, held.value.toString('utf8')));
      }
    }
    throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', `lock volume ${volumeId} for maintenance lost ${LOCK_ATTEMPTS_MAX} races with concurrent changes; retry`);
  }

  /**
   * Runs a lock transaction that writes `value` at `key` under the lease;
   * when it throws (no answer: it may have taken effect), remembers what it
   * wrote so that a later reclaim lets go of it.
   */
  private async lockTxn<T>(op: string, key: string, value: string, txn: () => Promise<T>): Promise<T> {
    try {
      return await this.leased(op, txn);
    } catch (err) {
      this.unanswered.add(key, value);
      throw err;
    }
  }

  /**
   * Whether the key a lock transaction found in its way holds exactly what
   * this attempt writes, under this lease: the client sent the transaction
   * again after an answer was lost (etcd3 retries on the next endpoint) and
   * the first one took effect. The lock is then this attempt's.
   */
  private isThisAttempt(held: { lease: string | number; value: Buffer } | undefined, value: string): boolean {
    return held !== undefined && String(held.lease) === this.id && held.value.toString('utf8') === value;
  }

  async reclaimUnansweredLocks(): Promise<number> {
    if (this.state === 'lost' || this.state === 'closed') {
      this.unanswered.clear();
      return 0;
    }
    const { ns, call, prefix } = this.deps;
    let released = 0;
    for (const lock of this.unanswered.list()) {
      const res = await call(`let go of unanswered lock ${prefix}${lock.key}`, () =>
        ns.if(lock.key, 'Lease', '==', this.id).and(lock.key, 'Value', '==', lock.value).then(ns.delete().key(lock.key)).commit(),
      );
      this.unanswered.settle(lock, res.succeeded);
      if (res.succeeded) {
        released++;
        this.log.warn({ key: prefix + lock.key }, 'let go of a lock taken by a call whose answer was lost');
      }
    }
    // Asked for once and not done (etcd did not answer): tried again here.
    if (this.earlierRun?.wanted === true) released += await this.releaseLocksOfEarlierRun();
    return released;
  }

  async releaseLocksOfEarlierRun(): Promise<number> {
    if (this.earlierRun === null || this.state === 'lost' || this.state === 'closed') return 0;
    const { ns, call, prefix } = this.deps;
    return this.earlierRun.release({
      list: async (p) => {
        const res = await call(`list ${prefix}${p}`, () => ns.getAll().prefix(p).limit(LOCK_KEYS_SCANNED_MAX).exec());
        if (res.more) this.log.warn({ keyPrefix: prefix + p, limit: LOCK_KEYS_SCANNED_MAX }, 'too many lock keys to look through; some left by the earlier run may stay until the lease ends');
        return res.kvs.map((kv) => ({ key: kv.key.toString('utf8'), lease: String(kv.lease), modRevision: BigInt(kv.mod_revision), value: kv.value.toString('utf8') }));
      },
      letGo: async (kv) => {
        const r = await call(`let go of ${prefix}${kv.key} left by the earlier run`, () =>
          ns.if(kv.key, 'Lease', '==', this.id).and(kv.key, 'Mod', '==', String(kv.modRevision)).then(ns.delete().key(kv.key)).commit(),
        );
        if (r.succeeded) this.log.warn({ key: prefix + kv.key, lock: kv.value }, 'let go of a lock the earlier run left on the resumed lease');
        return r.succeeded;
      },
    });
  }

  /** reclaimUnansweredLocks before a lock call: a failure leaves the entries for the next try. */
  private async reclaimQuietly(): Promise<void> {
    if (this.unanswered.size === 0) return;
    try {
      await this.reclaimUnansweredLocks();
    } catch (err) {
      this.log.debug({ err }, 'could not look for locks taken by unanswered calls yet');
    }
  }

  async ackRing(ack: { readonly peer: string | null; readonly kind: 'peer' | 'client'; readonly ringVersion: number; readonly fenceRevision: number }): Promise<void> {
    const record: RingAck = {
      schema: 1,
      lease: this.id,
      peer: ack.peer,
      kind: ack.kind,
      ringVersion: ack.ringVersion,
      fenceRevision: ack.fenceRevision,
      updatedAt: new Date(this.deps.clock.now()).toISOString(),
    };
    validateRingAck(record);
    this.assertUsable('ack ring');
    await this.leased(`ack ring ${ack.ringVersion}`, () => this.deps.ns.put(ringAckKey(this.id)).value(encodeRecord(record)).lease(this.id).exec());
  }

  /**
   * Takes over a lock that this session's lease already holds (taken by an
   * earlier run of this process before a restart), keeping its token.
   * Refused with TORUS_ERR_VOLUME_LOCK_LOST when the lock is gone, is on
   * another lease, or carries another token.
   */
  async adoptVolumeLock(name: string, token: number): Promise<VolumeLock> {
    validateVolumeName(name);
    this.assertUsable(`adopt lock of volume ${name}`);
    const { ns, call, prefix } = this.deps;
    const vKey = volumeKey(name);
    const vRes = await call(`get ${prefix}${vKey}`, () => ns.get(vKey).exec());
    const vKv = vRes.kvs[0];
    if (vKv === undefined) throw volumeNotFoundError(name);
    const volume = decodeVolumeRecord(prefix + vKey, vKv.value.toString('utf8'));
    const lockKey = volumeLockKey(volume.id);
    const lRes = await call(`get ${prefix}${lockKey}`, () => ns.get(lockKey).exec());
    const lKv = lRes.kvs[0];
    if (lKv === undefined) throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}" is no longer locked: the lock of lease ${this.id} is gone`);
    const record = decodeVolumeLockRecord(prefix + lockKey, lKv.value.toString('utf8'));
    if (String(lKv.lease) !== this.id || record.token !== token) {
      throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}" is locked by ${record.holder} (token ${record.token}, lease ${String(lKv.lease)}), not by lease ${this.id} with token ${token}`);
    }
    // Its predecessor is whatever the earlier run found; the lock itself was
    // not let go (it lives on), so only token - 1 can have been released.
    const { released } = await this.released(volume.id);
    // The run that wrote under this token is gone, and what it knew of its
    // changes that failed half way with it: its token counts as expired,
    // for us and for every later holder (recorded while it is still the
    // volume's newest).
    const fenceKey = volumeFenceKey(volume.id);
    const expiredKey = volumeExpiredKey(volume.id);
    const res = await call(`record token ${token} of volume ${name} as expired`, () =>
      ns.if(fenceKey, 'Value', '==', String(token)).then(ns.put(expiredKey).value(String(token))).commit(),
    );
    if (!res.succeeded) throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${name}": a newer token than ${token} was handed out; the lock is no longer ours`);
    this.log.info({ volume: name, volumeId: volume.id, token }, 'volume lock adopted');
    return new EtcdVolumeLock(this.deps, this.id, volume, record, lockKey, released === token - 1, token);
  }

  /**
   * Stops keeping the lease alive without revoking it: its locks and
   * records stay until the TTL runs out, so a restarted process can resume
   * it. One last keepalive first gives the restart the whole TTL.
   */
  async suspend(): Promise<void> {
    if (this.state === 'closed' || this.state === 'lost') return;
    try {
      await this.deps.call(`keepalive lease ${this.id}`, () => this.lease.keepaliveOnce());
    } catch (err) {
      this.log.warn({ err }, 'last keepalive before suspending the lease failed');
    }
    this.state = 'closed';
    this.watchdog?.cancel();
    this.lease.release();
    this.deps.onClosed(this);
    this.log.info('session suspended; the lease lives on until its TTL');
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    const wasLost = this.state === 'lost';
    this.state = 'closed';
    this.watchdog?.cancel();
    this.deps.onClosed(this);
    if (wasLost) return;
    await this.deps.call(`revoke lease ${this.id}`, () => this.lease.revoke());
    this.log.debug('session closed');
  }
}

class EtcdVolumeLock implements VolumeLock {
  readonly volume: VolumeRecord;
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
    private readonly deps: EtcdSessionDeps,
    private readonly leaseId: string,
    volume: VolumeRecord,
    record: VolumeLockRecord,
    /** volume-locks/<id> for a writer, volume-maint/<id> for a maintainer. */
    private readonly key: string,
    readonly previousReleased: boolean,
    readonly expiredToken: number,
  ) {
    this.volume = volume;
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
    const { ns, call, prefix } = this.deps;
    const res = await call(`get ${prefix}${this.key}`, () => ns.get(this.key).exec());
    const kv = res.kvs[0];
    if (kv === undefined || kv.lease !== this.leaseId) return false;
    return decodeVolumeLockRecord(prefix + this.key, kv.value.toString('utf8')).token === this.token;
  }

  async renew(): Promise<VolumeLock> {
    const { ns, call, prefix } = this.deps;
    const fenceKey = volumeFenceKey(this.volume.id);
    for (let attempt = 0; attempt < LOCK_ATTEMPTS_MAX; attempt++) {
      const fRes = await call(`get ${prefix}${fenceKey}`, () => ns.get(fenceKey).exec());
      const fKv = fRes.kvs[0];
      const token = decodeCounter(prefix + fenceKey, fKv ? fKv.value.toString('utf8') : null) + 1;
      const record: VolumeLockRecord = { schema: 1, volumeId: this.volume.id, holder: this.holder, token, acquiredAt: new Date(this.deps.clock.now()).toISOString(), kind: this.kind };
      const res = await call(`renew lock ${this.key}`, () =>
        ns
          .if(this.key, 'Lease', '==', this.leaseId)
          .and(fenceKey, 'Mod', '==', fKv ? fKv.mod_revision : 0)
          .then(ns.put(this.key).value(encodeRecord(record)).lease(this.leaseId), ns.put(fenceKey).value(String(token)))
          .else(ns.get(this.key))
          .commit(),
      );
      // The previous token was ours, held without a gap: no one else's late change can come under it.
      if (res.succeeded) return new EtcdVolumeLock(this.deps, this.leaseId, this.volume, record, this.key, true, this.expiredToken);
      const held = res.responses[0]?.response_range.kvs[0];
      if (held === undefined || held.lease !== this.leaseId) {
        throw new TorusError('TORUS_ERR_VOLUME_LOCK_LOST', `volume "${this.volume.name}": the lock is no longer held under lease ${this.leaseId}`);
      }
    }
    throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', `renew lock of volume "${this.volume.name}" lost ${LOCK_ATTEMPTS_MAX} races; retry`);
  }

  async release(): Promise<void> {
    if (this.released) return;
    const { ns, call } = this.deps;
    if (this.fenced && !this.unsettled) {
      // Let go while still ours and still the newest token: no change can
      // come under it any more, and the next holder reads so with the fence.
      const fenceKey = volumeFenceKey(this.volume.id);
      const res = await call(`unlock ${this.key} of volume ${this.volume.name}`, () =>
        ns
          .if(this.key, 'Lease', '==', this.leaseId)
          .and(fenceKey, 'Value', '==', String(this.token))
          .then(ns.delete().key(this.key), ns.put(volumeReleasedKey(this.volume.id)).value(String(this.token)))
          .commit(),
      );
      if (res.succeeded) {
        this.released = true;
        return;
      }
    }
    // Delete only our own lock: after a lease loss someone else may hold it.
    await call(`unlock ${this.key} of volume ${this.volume.name}`, () => ns.if(this.key, 'Lease', '==', this.leaseId).then(ns.delete().key(this.key)).commit());
    this.released = true;
  }
}

class EtcdVolumeReaderLock implements VolumeReaderLock {
  readonly kind = 'reader' as const;
  private released = false;

  constructor(
    private readonly deps: EtcdSessionDeps,
    private readonly leaseId: string,
    readonly volume: VolumeRecord,
    readonly holder: string,
    /** volume-readers/<id>/<lease> */
    private readonly key: string,
  ) {}

  async stillHeld(): Promise<boolean> {
    const { ns, call, prefix } = this.deps;
    const res = await call(`get ${prefix}${this.key}`, () => ns.get(this.key).exec());
    const kv = res.kvs[0];
    return kv !== undefined && kv.lease === this.leaseId;
  }

  async release(): Promise<void> {
    if (this.released) return;
    const { ns, call } = this.deps;
    await call(`unlock ${this.key} of volume ${this.volume.name}`, () => ns.if(this.key, 'Lease', '==', this.leaseId).then(ns.delete().key(this.key)).commit());
    this.released = true;
  }
}
