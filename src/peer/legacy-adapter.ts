/**
 * TEMPORARY: the bridge between peer protocol 2 (which carries ReplicaApi)
 * and the code that still thinks of peers as BlockStores (src/volume/*,
 * src/daemon/torusd.ts, src/client/nbd-gateway.ts) until the replication
 * layer replaces it. Delete this file when nothing imports it.
 *
 * - LegacyStoreReplica serves a BlockStore as a ReplicaApi: no versions, no
 *   ring checks, fencing as the store does it. Methods the old code never
 *   calls (confirm, list, verify, fence) refuse.
 * - LegacyPeerStore is a BlockStore over a PeerClient: writes carry version
 *   0 on top of absent, the store's fence as the token, ring version 0.
 * - legacyInsecure(): the daemon and torusblk run without a cluster secret
 *   when none is configured, as 0.1.0 did, with a warning, because there is
 *   no cluster-wide secret to fall back on yet. Once the secret lives in
 *   etcd, authentication is required everywhere and this goes away.
 */
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import type { BlockMeta, ListedBlock } from '../model/block-meta.js';
import type { BlockRef } from '../model/block-ref.js';
import {
  META_REFS_MAX,
  type BlockCopy,
  type ChangeStamp,
  type InstallOutcome,
  type PeerInfo,
  type ReadReply,
  type ReplicaApi,
  type RequestContext,
  type StoreUsageInfo,
} from '../model/replica-api.js';
import { VERSION_ABSENT, VERSION_LEGACY, type Version } from '../model/version.js';
import type { BlockStore, StoreUsage, WriteOptions, ZeroOptions } from '../store/block-store.js';
import type { Clock } from '../util/clock.js';
import { systemClock } from '../util/clock.js';
import { PeerClient, type PeerClientOptions } from './client.js';

const LEGACY_CTX: RequestContext = { ringVersion: 0 };

function unsupported(what: string): Promise<never> {
  return Promise.reject(new TorusError('TORUS_ERR_PEER_PROTOCOL', `${what} is not served by a peer without replication (legacy adapter)`));
}

function legacyMeta(allocated: boolean): BlockMeta {
  return allocated
    ? { state: 'data', version: VERSION_LEGACY, suspect: false, digest: 0 }
    : { state: 'absent', version: VERSION_ABSENT, suspect: false, digest: 0 };
}

/** A fence of 0 means "no fence" to the old stores (tools that bypass locking). */
function fenceOf(token: number): number | undefined {
  return token > 0 ? token : undefined;
}

/** TEMPORARY. A BlockStore served over peer protocol 2 (see the file comment). */
export class LegacyStoreReplica implements ReplicaApi {
  constructor(
    private readonly store: BlockStore,
    private readonly info: { readonly uuid: string; readonly incarnation: string },
  ) {}

  async read(_ctx: RequestContext, ref: BlockRef, offset: number, length: number): Promise<ReadReply> {
    const [data, allocated] = await Promise.all([this.store.read(ref, offset, length), this.store.allocated([ref])]);
    return { meta: legacyMeta(allocated[0] === true), data };
  }

  write(_ctx: RequestContext, ref: BlockRef, offset: number, data: Buffer, stamp: ChangeStamp, opts: { readonly fua: boolean }): Promise<void> {
    return this.store.write(ref, offset, data, { fua: opts.fua, fence: fenceOf(stamp.token) });
  }

  zero(ctx: RequestContext, ref: BlockRef, offset: number, length: number, stamp: ChangeStamp, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void> {
    void ctx;
    return this.store.zero(ref, offset, length, { fua: opts.fua, punch: opts.punch, fence: fenceOf(stamp.token) });
  }

  async install(_ctx: RequestContext, ref: BlockRef, copy: BlockCopy, opts: { readonly token: number; readonly fua: boolean }): Promise<InstallOutcome> {
    const fence = fenceOf(opts.token);
    if (copy.state === 'data') await this.store.write(ref, 0, copy.data!, { fua: opts.fua, fence });
    else await this.store.zero(ref, 0, this.store.blockSize, { fua: opts.fua, punch: true, fence });
    return 'installed';
  }

  confirm(): Promise<boolean> {
    return unsupported('CONFIRM');
  }

  async meta(_ctx: RequestContext, refs: readonly BlockRef[]): Promise<BlockMeta[]> {
    return (await this.store.allocated(refs)).map(legacyMeta);
  }

  list(): Promise<{ blocks: ListedBlock[]; more: boolean }> {
    return unsupported('LIST');
  }

  verify(): Promise<BlockMeta> {
    return unsupported('VERIFY');
  }

  async drop(_ctx: RequestContext, ref: BlockRef, _version: Version, opts: { readonly token: number }): Promise<boolean> {
    await this.store.zero(ref, 0, this.store.blockSize, { fua: false, punch: true, fence: fenceOf(opts.token) });
    return true;
  }

  fence(): Promise<void> {
    return unsupported('FENCE');
  }

  flush(): Promise<void> {
    return this.store.flush();
  }

  deleteVolume(_ctx: RequestContext, volumeId: number): Promise<void> {
    return this.store.deleteVolume(volumeId);
  }

  async usage(): Promise<StoreUsageInfo> {
    return this.store.usage();
  }

  async hello(): Promise<PeerInfo> {
    return { uuid: this.info.uuid, incarnation: this.info.incarnation, ringVersion: 0 };
  }
}

/** usage() of a LegacyPeerStore refreshes in the background when older than this. */
export const LEGACY_USAGE_REFRESH_MS = 1_000;

/** TEMPORARY. A remote peer as a BlockStore, over a PeerClient (see the file comment). */
export class LegacyPeerStore implements BlockStore {
  readonly blockSize: number;
  readonly client: PeerClient;
  private readonly clock: Clock;
  private readonly log: Logger;
  private lastUsage: StoreUsage = { capacity: 0, used: 0, blocks: 0 };
  private usageAt = -Infinity;
  private usageRefreshing = false;

  constructor(options: PeerClientOptions) {
    this.client = new PeerClient(options);
    this.blockSize = options.blockSize;
    this.clock = options.clock ?? systemClock;
    this.log = options.logger.child({ module: 'legacy-peer-store' });
  }

  async read(ref: BlockRef, offset: number, length: number): Promise<Buffer> {
    return (await this.client.read(LEGACY_CTX, ref, offset, length)).data;
  }

  write(ref: BlockRef, offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    return this.client.write(LEGACY_CTX, ref, offset, data, { token: opts.fence ?? 0, version: VERSION_LEGACY, prev: VERSION_ABSENT }, { fua: opts.fua });
  }

  zero(ref: BlockRef, offset: number, length: number, opts: ZeroOptions): Promise<void> {
    const stamp = { token: opts.fence ?? 0, version: VERSION_LEGACY, prev: VERSION_ABSENT };
    return this.client.zero(LEGACY_CTX, ref, offset, length, stamp, { punch: opts.punch, fua: opts.fua });
  }

  flush(): Promise<void> {
    return this.client.flush(LEGACY_CTX);
  }

  async allocated(refs: readonly BlockRef[]): Promise<boolean[]> {
    const parts: Promise<BlockMeta[]>[] = [];
    for (let i = 0; i < refs.length; i += META_REFS_MAX) parts.push(this.client.meta(LEGACY_CTX, refs.slice(i, i + META_REFS_MAX)));
    return (await Promise.all(parts)).flat().map((m) => m.state === 'data');
  }

  deleteVolume(volumeId: number): Promise<void> {
    return this.client.deleteVolume(LEGACY_CTX, volumeId);
  }

  /** The peer's usage as last fetched (zeroes before the first answer); an old value starts a refresh. */
  usage(): StoreUsage {
    if (!this.usageRefreshing && this.clock.monotonic() - this.usageAt >= LEGACY_USAGE_REFRESH_MS) {
      this.usageRefreshing = true;
      this.usageAt = this.clock.monotonic();
      this.client
        .usage(LEGACY_CTX)
        .then(
          (u) => (this.lastUsage = u),
          (err: unknown) => this.log.debug({ err }, 'peer usage refresh failed'),
        )
        .finally(() => (this.usageRefreshing = false));
    }
    return this.lastUsage;
  }

  close(): Promise<void> {
    return this.client.close();
  }
}

/**
 * TEMPORARY. Whether torusd and torusblk run the peer protocol without
 * authentication: only when no secret is configured (as 0.1.0 did), and
 * they say so in a warning. See the file comment.
 */
export function legacyInsecure(secret: string, log: Logger): boolean {
  if (secret.length > 0) return false;
  log.warn({}, 'no cluster secret configured: peer connections are not authenticated (--cluster-secret-file)');
  return true;
}
