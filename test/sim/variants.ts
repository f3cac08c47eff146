import { ClusterNode } from '../../src/cluster/node.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import type { BlockCopy, InstallOutcome, ReplicaApi, RequestContext } from '../../src/model/replica-api.js';
import type { Version } from '../../src/model/version.js';
import type { LocalBlockStore } from '../../src/store/local-store.js';
import type { Guarantee } from './checker.js';
import type { NodeEnv, NodeFactory, NodeUnderTest, VolumeIo } from './node-under-test.js';
import { adaptNode, nodeDeps } from './real-node.js';
import type { FencePersistence } from '../../src/store/fence-file.js';

/**
 * Deliberately broken builds of the peer, each a small wrapper or an
 * injected policy around the real, unchanged code (never a flag inside it).
 * The suite proves the checkers catch every one within the CI seed budget:
 * a checker that cannot fail proves nothing.
 */
export type VariantName = 'ack-early' | 'stale-read' | 'gc-needed' | 'copy-over-newer' | 'fence-in-memory' | 'no-tombstone' | 'stale-reader' | 'stale-in-memory';

export interface Variant {
  readonly name: VariantName;
  /** The bug, in the words. */
  readonly what: string;
  readonly factory: NodeFactory;
  /** The checks that catch it for the right reason (a failure of another kind may be a bug of the real code the variant's timing exposed). */
  readonly caughtBy: readonly Guarantee[];
  /**
   * Seeds (within the CI seeds) known to catch it, tried first by the
   * suite so that proving the checker honest costs a few seeds rather than
   * a search; the suite still requires that the real code passes the seed
   * or fails later, and searches the CI seeds if none catches it any more.
   */
  readonly knownSeeds: readonly number[];
  /**
   * Its seeds run with the suspended-VM fault (`--suspend`): the only one
   * that gets an old token to a peer that could not learn the newer one.
   */
  readonly suspend?: boolean;
  /** Its seeds run with read-only opens beside the writers (`--readers`): the only ones that reach it. */
  readonly readers?: boolean;
  /**
   * Why the suite cannot prove the checker catches it today: sim.test.ts
   * then leaves it out (none is, since 2026-12-01).
   */
  readonly pending?: string;
}

export const VARIANTS: Record<VariantName, Variant> = {
  'ack-early': { name: 'ack-early', what: 'acknowledge before the replicas have it', factory: ackEarly, caughtBy: ['G3', 'G1/G4'], knownSeeds: [1, 4] },
  'stale-read': { name: 'stale-read', what: 'read from a replica that missed writes', factory: staleRead, caughtBy: ['G1/G4'], knownSeeds: [1, 7] },
  'gc-needed': { name: 'gc-needed', what: 'garbage-collect a block still needed', factory: gcNeeded, caughtBy: ['G1/G4', 'G3', 'G5'], knownSeeds: [6, 1] },
  'copy-over-newer': { name: 'copy-over-newer', what: 'let a rebalance copy overwrite a newer write', factory: copyOverNewer, caughtBy: ['G1/G4', 'G5'], knownSeeds: [212, 405, 202] },
  'fence-in-memory': { name: 'fence-in-memory', what: 'keep the fence only in memory', factory: fenceInMemory, caughtBy: ['G6'], knownSeeds: [132, 79, 12], suspend: true },
  'no-tombstone': { name: 'no-tombstone', what: 'drop the trim tombstone', factory: noTombstone, caughtBy: ['G1/G4', 'G5', 'liveness'], knownSeeds: [1] },
  'stale-reader': { name: 'stale-reader', what: 'a read-only open reads its own replica without asking whether it is current', factory: staleReader, caughtBy: ['G1/G4'], knownSeeds: [15, 27, 13], readers: true },
  'stale-in-memory': { name: 'stale-in-memory', what: 'record the owners a write skipped stale in memory only, not in etcd', factory: staleInMemory, caughtBy: ['G4', 'G1/G4'], knownSeeds: [1] },
};

export function variantNames(): VariantName[] {
  return Object.keys(VARIANTS) as VariantName[];
}

/** The real node with its client-facing io wrapped. */
function withIo(env: NodeEnv, wrap: (io: VolumeIo, node: ClusterNode, mode: 'rw' | 'ro') => VolumeIo, deps = nodeDeps(env)): NodeUnderTest {
  const node = new ClusterNode(deps);
  const base = adaptNode(node);
  return { ...base, get replica() { return base.replica; }, open: async (name, mode) => wrap(await base.open(name, mode), node, mode) };
}

/**
 * (a) A write or zero is acknowledged as soon as it is handed to the
 * coordinator; the replication finishes (or fails) in the background.
 */
function ackEarly(env: NodeEnv): NodeUnderTest {
  return withIo(env, (io) => ({
    ...io,
    write: (o, d, f) => {
      void io.write(o, d, f).catch(() => undefined);
      return Promise.resolve();
    },
    zero: (o, l, z) => {
      void io.zero(o, l, z).catch(() => undefined);
      return Promise.resolve();
    },
  }));
}

/**
 * (b) A "fast path" that serves reads from the local replica whenever it
 * holds the blocks, without asking whether it is current: a copy that
 * missed writes (it was partitioned, down, or is still being caught up) is
 * read as if it were.
 */
function staleRead(env: NodeEnv): NodeUnderTest {
  return withIo(env, (io, node) => localFirst(env, io, node));
}

/**
 * (g) The same "fast path" in read-only opens only (a second client of the
 * volume, `torusblk nbd --read-only`): the writer reads correctly, and only
 * read-only opens (the simulation's `--readers`) can catch it.
 */
function staleReader(env: NodeEnv): NodeUnderTest {
  return withIo(env, (io, node, mode) => (mode === 'ro' ? localFirst(env, io, node) : io));
}

/** Reads served from this node's replica whenever it holds every block of the range, unchecked. */
function localFirst(env: NodeEnv, io: VolumeIo, node: ClusterNode): VolumeIo {
  return {
    ...io,
    read: async (offset, length) => {
      const replica = node.replica;
      const bs = env.store.blockSize;
      const first = Math.floor(offset / bs);
      const last = Math.floor((offset + length - 1) / bs);
      const volumeId = volumeIdOf(io);
      if (replica === null || volumeId === null) return io.read(offset, length);
      const parts: Buffer[] = [];
      for (let b = first; b <= last; b++) {
        const ref = { volumeId, generation: 1, index: b };
        if (env.store.meta(ref).state === 'absent') return io.read(offset, length);
        const start = b === first ? offset - b * bs : 0;
        const end = b === last ? offset + length - b * bs : bs;
        try {
          parts.push((await replica.read({ ringVersion: node.currentRing().version }, ref, start, end - start)).data);
        } catch {
          return io.read(offset, length);
        }
      }
      return Buffer.concat(parts);
    },
  };
}

/** The volume id behind a simulation io handle (set by the adapter). */
function volumeIdOf(io: VolumeIo): number | null {
  return (io as VolumeIo & { volumeId?: number }).volumeId ?? null;
}

/**
 * (c) Garbage collection that takes "etcd did not answer" for "no volume
 * is live": when listing the live volumes fails, it frees the blocks of
 * every volume it holds (the real collector frees nothing then: "when in
 * doubt, keep"). Runs beside the real collector, on the same interval.
 */
function gcNeeded(env: NodeEnv): NodeUnderTest {
  const node = new ClusterNode(nodeDeps(env));
  const base = adaptNode(node);
  let timer: { cancel(): void } | null = null;
  const sweep = async (): Promise<void> => {
    if (node.isLive) {
      let live: Set<number>;
      try {
        live = new Set((await env.metadata.volumeIdsForGc()).live);
      } catch {
        live = new Set();
      }
      for (const id of env.store.volumeIds()) if (!live.has(id)) await env.store.deleteVolume(id).catch(() => undefined);
    }
    timer = env.clock.setTimeout(() => void sweep(), env.timing.gcIntervalMs);
  };
  return {
    ...base,
    get replica() {
      return base.replica;
    },
    start: async () => {
      await base.start();
      timer = env.clock.setTimeout(() => void sweep(), env.timing.gcIntervalMs);
    },
    stop: async () => {
      timer?.cancel();
      await base.stop();
    },
  };
}

/**
 * (d) A replica that installs every copy it is sent, even over a newer
 * version (the check "install only if newer" skipped): a delayed or
 * duplicated rebalance copy lands on top of a write made since.
 */
function copyOverNewer(env: NodeEnv): NodeUnderTest {
  const node = new ClusterNode(nodeDeps(env));
  const base = adaptNode(node);
  let wrapped: ReplicaApi | null = null;
  let of: ReplicaApi | null = null;
  return {
    ...base,
    get replica() {
      const r = node.replica;
      if (r === null) return null;
      if (of !== r) {
        of = r;
        wrapped = new Proxy(r, {
          get(t, prop, receiver) {
            if (prop !== 'install') {
              const v: unknown = Reflect.get(t, prop, receiver);
              return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
            }
            return async (ctx: RequestContext, ref: BlockRef, copy: BlockCopy, opts: { token: number; fua: boolean }): Promise<InstallOutcome> => {
              const outcome = await t.install(ctx, ref, copy, opts);
              if (outcome !== 'newer') return outcome;
              await env.store.install(ref, copy.data, copy.version, { fua: opts.fua });
              return 'installed';
            };
          },
        });
      }
      return wrapped;
    },
  };
}

/**
 * (e) Fencing tokens kept only in the peer's memory: save() resolves
 * without writing anything, and a (re)starting peer takes no tokens from
 * etcd either, only those it is sent or sees on the watch from then on. A
 * restarted peer therefore forgets every token it had learnt.
 *
 * Why both: the real node re-reads every fence from etcd before it serves
 * (node.ts, becomeLive), which alone makes a lost fences.json harmless, so
 * dropping only the file is a bug no run can see. Dropping the file and
 * the re-read is "the fence lives only in memory".
 */
function fenceInMemory(env: NodeEnv): NodeUnderTest {
  const volatile: FencePersistence = {
    load: async () => new Map(),
    save: async () => undefined,
  };
  const md = env.metadata;
  const forgetful = new Proxy(md, {
    get(t, prop, receiver) {
      if (prop === 'listFences') {
        return async () => ({ fences: new Map<number, number>(), revision: (await t.listFences()).revision });
      }
      const v: unknown = Reflect.get(t, prop, receiver);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  return adaptNode(new ClusterNode({ ...nodeDeps(env), fences: volatile, metadata: forgetful }));
}

/**
 * (f) A whole-block TRIM or WRITE_ZEROES with punch frees the block and
 * forgets it (absent) instead of leaving a tombstone with a version.
 */
function noTombstone(env: NodeEnv): NodeUnderTest {
  const store = env.store;
  const forgetful: LocalBlockStore = new Proxy(store, {
    get(t, prop, receiver) {
      if (prop === 'zero') {
        return async (ref: BlockRef, offset: number, length: number, version: Version, opts: { punch: boolean; fua: boolean }): Promise<void> => {
          if (opts.punch && offset === 0 && length === t.blockSize) {
            await t.drop(ref);
            if (opts.fua) await t.flush();
            return;
          }
          return t.zero(ref, offset, length, version, opts);
        };
      }
      const v: unknown = Reflect.get(t, prop, receiver);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  return adaptNode(new ClusterNode({ ...nodeDeps(env), store: forgetful }));
}

/**
 * (h) A coordinator's stale records of single blocks stay in its memory:
 * etcd is told nothing (the addition answers as if it were durable). The
 * coordinator itself never reads the owner it skipped, but the next one,
 * or a read-only open, would trust that owner's older copy.
 */
function staleInMemory(env: NodeEnv): NodeUnderTest {
  const md = env.metadata;
  const forgetful = new Proxy(md, {
    get(t, prop, receiver) {
      if (prop === 'addStale') {
        return async (...args: Parameters<typeof md.addStale>): Promise<void> => {
          const [, , add] = args;
          if (add.token !== undefined && add.ranges !== undefined) return;
          return t.addStale(...args);
        };
      }
      const v: unknown = Reflect.get(t, prop, receiver);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  return adaptNode(new ClusterNode({ ...nodeDeps(env), metadata: forgetful }));
}
