/**
 * A small in-memory ReplicaApi for the peer protocol tests: the rules of
 * docs/replication.md in their simplest form (versions, prev, fencing, ring
 * versions, liveness), plus what the tests need to look inside: every call
 * in the order it was made, a check that every call it receives is valid
 * (the server must validate before handling), and a gate that holds
 * changes until the test opens it.
 */
import { TorusError } from '../../src/errors/torus-error.js';
import { ABSENT_META, type BlockMeta, type ListedBlock } from '../../src/model/block-meta.js';
import { blockRefKey, type BlockRef } from '../../src/model/block-ref.js';
import {
  LIST_BLOCKS_MAX,
  META_REFS_MAX,
  type BlockCopy,
  type ChangeStamp,
  type InstallOutcome,
  type PeerInfo,
  type ReadReply,
  type ReplicaApi,
  type RequestContext,
  type StoreUsageInfo,
} from '../../src/model/replica-api.js';
import { TOKEN_MAX, VERSION_ABSENT, isVersion, type Version } from '../../src/model/version.js';
import { crc32c } from '../../src/util/crc32c.js';

interface Block {
  readonly ref: BlockRef;
  state: 'data' | 'zero';
  version: Version;
  suspect: boolean;
  data: Buffer | null;
}

export interface FakeCall {
  readonly method: keyof ReplicaApi;
  readonly ctx: RequestContext;
  readonly ref?: BlockRef;
  readonly offset?: number;
  readonly length?: number;
  readonly stamp?: ChangeStamp;
  readonly data?: Buffer;
}

export class FakeReplica implements ReplicaApi {
  ringVersion = 0;
  live = true;
  readonly uuid: string;
  readonly incarnation: string;
  readonly capacityBlocks: number;
  /** Every call, in the order the methods were called. */
  readonly calls: FakeCall[] = [];
  /** Calls that broke the ReplicaApi's argument rules: the server let an invalid request through. */
  readonly violations: string[] = [];
  /** Changes (write, zero, install) wait here while the gate is closed. */
  held = 0;
  heldMax = 0;
  /** When set, awaited before each call resolves (after it applied): answers come back out of order. */
  delay: ((call: FakeCall) => Promise<void>) | null = null;
  private readonly blocks = new Map<string, Block>();
  private readonly fences = new Map<number, number>();
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;

  constructor(
    readonly blockSize: number,
    opts: { uuid?: string; incarnation?: string; capacityBlocks?: number } = {},
  ) {
    this.uuid = opts.uuid ?? 'fake-peer';
    this.incarnation = opts.incarnation ?? 'fake-incarnation-1';
    this.capacityBlocks = opts.capacityBlocks ?? 1 << 20;
  }

  /** Changes wait from now on until open(). */
  hold(): void {
    if (this.gate !== null) return;
    this.gate = new Promise((resolve) => (this.openGate = resolve));
  }

  open(): void {
    this.openGate?.();
    this.gate = null;
    this.openGate = null;
  }

  /** What the replica holds (tests look without going through the API). */
  peek(ref: BlockRef): BlockMeta & { data: Buffer | null } {
    const b = this.blocks.get(blockRefKey(ref));
    if (b === undefined) return { ...ABSENT_META, data: null };
    return { ...this.metaOf(b), data: b.data };
  }

  fenceOf(volumeId: number): number | undefined {
    return this.fences.get(volumeId);
  }

  // ------------------------------------------------------------ ReplicaApi

  async read(ctx: RequestContext, ref: BlockRef, offset: number, length: number): Promise<ReadReply> {
    const call = this.record({ method: 'read', ctx, ref, offset, length });
    this.range(offset, length);
    await this.settle(call);
    this.admit(ctx);
    const b = this.blocks.get(blockRefKey(ref));
    if (b?.suspect) throw new TorusError('TORUS_ERR_REPLICA_STALE', 'suspect block');
    const data = Buffer.alloc(length);
    b?.data?.copy(data, 0, offset, offset + length);
    return { meta: b === undefined ? ABSENT_META : this.metaOf(b), data };
  }

  write(ctx: RequestContext, ref: BlockRef, offset: number, data: Buffer, stamp: ChangeStamp, opts: { readonly fua: boolean }): Promise<void> {
    void opts;
    const call = this.record({ method: 'write', ctx, ref, offset, length: data.length, stamp, data });
    this.range(offset, data.length);
    this.checkStamp(stamp);
    return this.change(call, () => this.apply(ref, offset, data.length, stamp, data));
  }

  zero(ctx: RequestContext, ref: BlockRef, offset: number, length: number, stamp: ChangeStamp, opts: { readonly punch: boolean; readonly fua: boolean }): Promise<void> {
    const call = this.record({ method: 'zero', ctx, ref, offset, length, stamp });
    this.range(offset, length);
    this.checkStamp(stamp);
    return this.change(call, () => {
      const whole = offset === 0 && length === this.blockSize;
      if (whole && opts.punch) {
        const key = blockRefKey(ref);
        const cur = this.blocks.get(key);
        if (cur !== undefined && !cur.suspect && cur.version >= stamp.version) return;
        this.blocks.set(key, { ref, state: 'zero', version: stamp.version, suspect: false, data: null });
        return;
      }
      this.apply(ref, offset, length, stamp, null);
    });
  }

  install(ctx: RequestContext, ref: BlockRef, copy: BlockCopy, opts: { readonly token: number; readonly fua: boolean }): Promise<InstallOutcome> {
    const call = this.record({ method: 'install', ctx, ref });
    if (copy.state === 'data' ? copy.data?.length !== this.blockSize : copy.data !== null) this.violations.push('install: copy bytes');
    return this.change(call, () => {
      this.fenceCheck(ref.volumeId, opts.token);
      const key = blockRefKey(ref);
      const cur = this.blocks.get(key);
      if (cur !== undefined && !cur.suspect) {
        if (cur.version === copy.version) return 'same';
        if (cur.version > copy.version) return 'newer';
      }
      this.blocks.set(key, { ref, state: copy.state, version: copy.version, suspect: false, data: copy.data === null ? null : Buffer.from(copy.data) });
      return 'installed';
    });
  }

  async confirm(ctx: RequestContext, ref: BlockRef, version: Version, digest: number, opts: { readonly token: number }): Promise<boolean> {
    const call = this.record({ method: 'confirm', ctx, ref });
    await this.settle(call);
    this.admit(ctx);
    this.fenceCheck(ref.volumeId, opts.token);
    const b = this.blocks.get(blockRefKey(ref));
    if (b === undefined || this.metaOf(b).digest !== digest) return false;
    b.suspect = false;
    b.version = version;
    return true;
  }

  async meta(ctx: RequestContext, refs: readonly BlockRef[]): Promise<BlockMeta[]> {
    const call = this.record({ method: 'meta', ctx });
    if (refs.length > META_REFS_MAX) this.violations.push('meta: too many refs');
    await this.settle(call);
    this.admit(ctx);
    return refs.map((r) => {
      const b = this.blocks.get(blockRefKey(r));
      return b === undefined ? ABSENT_META : this.metaOf(b);
    });
  }

  async list(ctx: RequestContext, volumeId: number, after: BlockRef | null, limit: number): Promise<{ blocks: ListedBlock[]; more: boolean }> {
    const call = this.record({ method: 'list', ctx });
    if (limit < 1 || limit > LIST_BLOCKS_MAX) this.violations.push('list: limit');
    await this.settle(call);
    this.admit(ctx);
    const all = [...this.blocks.values()]
      .filter((b) => b.ref.volumeId === volumeId)
      .sort((a, b) => a.ref.generation - b.ref.generation || a.ref.index - b.ref.index)
      .filter((b) => after === null || b.ref.generation > after.generation || (b.ref.generation === after.generation && b.ref.index > after.index));
    return { blocks: all.slice(0, limit).map((b) => ({ ref: b.ref, ...this.metaOf(b) })), more: all.length > limit };
  }

  async verify(ctx: RequestContext, ref: BlockRef): Promise<BlockMeta> {
    const call = this.record({ method: 'verify', ctx, ref });
    await this.settle(call);
    this.admit(ctx);
    const b = this.blocks.get(blockRefKey(ref));
    return b === undefined ? ABSENT_META : this.metaOf(b);
  }

  async drop(ctx: RequestContext, ref: BlockRef, version: Version, opts: { readonly token: number }): Promise<boolean> {
    const call = this.record({ method: 'drop', ctx, ref });
    if (!isVersion(version)) this.violations.push('drop: version');
    await this.settle(call);
    this.admit(ctx);
    this.fenceCheck(ref.volumeId, opts.token);
    const key = blockRefKey(ref);
    const b = this.blocks.get(key);
    if (b !== undefined && b.version > version) return false;
    this.blocks.delete(key);
    return true;
  }

  async fence(ctx: RequestContext, volumeId: number, token: number): Promise<void> {
    const call = this.record({ method: 'fence', ctx });
    if (volumeId < 1 || token > TOKEN_MAX) this.violations.push('fence: args');
    await this.settle(call);
    this.admit(ctx);
    if (token > (this.fences.get(volumeId) ?? 0)) this.fences.set(volumeId, token);
  }

  async flush(ctx: RequestContext): Promise<void> {
    const call = this.record({ method: 'flush', ctx });
    await this.settle(call);
    this.admit(ctx);
  }

  async deleteVolume(ctx: RequestContext, volumeId: number): Promise<void> {
    const call = this.record({ method: 'deleteVolume', ctx });
    await this.settle(call);
    this.admit(ctx);
    for (const [k, b] of this.blocks) if (b.ref.volumeId === volumeId) this.blocks.delete(k);
  }

  async usage(ctx: RequestContext): Promise<StoreUsageInfo> {
    const call = this.record({ method: 'usage', ctx });
    await this.settle(call);
    this.admit(ctx);
    const blocks = [...this.blocks.values()].filter((b) => b.state === 'data').length;
    return { capacity: this.capacityBlocks * this.blockSize, used: blocks * this.blockSize, blocks };
  }

  async hello(ctx: RequestContext): Promise<PeerInfo> {
    const call = this.record({ method: 'hello', ctx });
    await this.settle(call);
    return { uuid: this.uuid, incarnation: this.incarnation, ringVersion: this.ringVersion };
  }

  // ------------------------------------------------------------ rules

  private record(call: FakeCall): FakeCall {
    this.calls.push(call);
    if (!Number.isSafeInteger(call.ctx.ringVersion) || call.ctx.ringVersion < 0) this.violations.push(`${call.method}: ring version`);
    return call;
  }

  private range(offset: number, length: number): void {
    if (!(Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.blockSize)) {
      this.violations.push(`range ${offset}+${length}`);
    }
  }

  private checkStamp(s: ChangeStamp): void {
    if (!(isVersion(s.version) && s.version >= 0 && isVersion(s.prev) && s.version > s.prev && s.token >= 0 && s.token <= TOKEN_MAX)) {
      this.violations.push(`stamp ${JSON.stringify(s)}`);
    }
  }

  private admit(ctx: RequestContext): void {
    if (!this.live) throw new TorusError('TORUS_ERR_PEER_NOT_LIVE', 'the fake peer is not live');
    if (ctx.ringVersion < this.ringVersion) {
      throw new TorusError('TORUS_ERR_RING_OUTDATED', `ring ${ctx.ringVersion} is older than ${this.ringVersion}`, {
        details: { ringVersion: this.ringVersion },
      });
    }
  }

  private fenceCheck(volumeId: number, token: number): void {
    const known = this.fences.get(volumeId) ?? 0;
    if (token < known) throw new TorusError('TORUS_ERR_VOLUME_FENCED', `token ${token} is older than ${known}`);
    this.fences.set(volumeId, token);
  }

  /** Changes wait for the gate, then apply (the gate holds them in call order). */
  private async change<T>(call: FakeCall, apply: () => T): Promise<T> {
    if (this.gate !== null) {
      this.held++;
      this.heldMax = Math.max(this.heldMax, this.held);
      try {
        await this.gate;
      } finally {
        this.held--;
      }
    }
    this.admit(call.ctx);
    if (call.stamp !== undefined && call.ref !== undefined) this.fenceCheck(call.ref.volumeId, call.stamp.token);
    const out = apply();
    await this.settle(call);
    return out;
  }

  private async settle(call: FakeCall): Promise<void> {
    if (this.delay !== null) await this.delay(call);
  }

  private apply(ref: BlockRef, offset: number, length: number, stamp: ChangeStamp, data: Buffer | null): void {
    const key = blockRefKey(ref);
    const cur = this.blocks.get(key);
    const curVersion = cur?.version ?? VERSION_ABSENT;
    if (cur !== undefined && !cur.suspect && curVersion >= stamp.version) return; // a duplicate
    const whole = offset === 0 && length === this.blockSize;
    if (!whole && curVersion !== stamp.prev) {
      if (cur !== undefined) cur.suspect = true;
      throw new TorusError('TORUS_ERR_REPLICA_STALE', `gap: block at ${curVersion}, change builds on ${stamp.prev}`);
    }
    if (this.blocks.size >= this.capacityBlocks && cur === undefined) throw new TorusError('TORUS_ERR_STORE_NO_SPACE', 'fake store is full');
    const bytes = cur?.data !== null && cur?.data !== undefined && !whole ? cur.data : Buffer.alloc(this.blockSize);
    if (data === null) bytes.fill(0, offset, offset + length);
    else data.copy(bytes, offset);
    this.blocks.set(key, { ref, state: 'data', version: stamp.version, suspect: false, data: bytes });
  }

  private metaOf(b: Block): BlockMeta {
    return { state: b.state, version: b.version, suspect: b.suspect, digest: b.data === null ? 0 : crc32c(b.data) };
  }
}
