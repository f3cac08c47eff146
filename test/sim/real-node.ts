import { ClusterNode, DEFAULT_NODE_SETTINGS, type NodeDeps, type NodeSettings } from '../../src/cluster/node.js';
import type { NodeEnv, NodeUnderTest, VolumeIo } from './node-under-test.js';

/** Copy budget of a simulated peer: high, so moves are not what bounds a seed's settle time. */
const SIM_COPY_BYTES_PER_SEC = 64 * 1024 * 1024;

/** The production node settings with the simulation's timing. */
export function simNodeSettings(env: NodeEnv): NodeSettings {
  const t = env.timing;
  return {
    ...DEFAULT_NODE_SETTINGS,
    sessionTtlSeconds: t.sessionTtlSeconds,
    heartbeatMs: t.heartbeatMs,
    downOutIntervalMs: t.downOutIntervalMs,
    gcIntervalMs: t.gcIntervalMs,
    retryMs: t.retryMs,
    replication: {
      ...DEFAULT_NODE_SETTINGS.replication,
      replicaTimeoutMs: t.replicaTimeoutMs,
      probeIntervalMs: t.probeIntervalMs,
      backgroundIntervalMs: t.backgroundIntervalMs,
      // As torusd has it: backs off while idle to 8 intervals (2 s to 16 s).
      backgroundIdleIntervalMaxMs: 8 * t.backgroundIntervalMs,
      scrubIntervalMs: t.scrubIntervalMs,
      writeLevel: t.writeLevel,
      copyBytesPerSec: SIM_COPY_BYTES_PER_SEC,
    },
  };
}

/** The dependencies of src/cluster/node.ts from what the simulation gives a peer. */
export function nodeDeps(env: NodeEnv): NodeDeps {
  return {
    uuid: env.uuid,
    metadata: env.metadata,
    store: env.store,
    fences: env.fences,
    transport: env.transport,
    clock: env.clock,
    random: env.random,
    ids: env.ids,
    logger: env.logger,
    settings: simNodeSettings(env),
    holder: `sim ${env.uuid}`,
    peerRecord: env.peerRecord,
    onApplied: env.onApplied,
    onInvariantBroken: env.onInvariantBroken,
  };
}

/** The real peer, unchanged, behind the simulation's seam. */
export function adaptNode(node: ClusterNode): NodeUnderTest {
  return {
    get replica() {
      return node.replica;
    },
    start: async () => {
      // A restart is a new process with no lease to resume (the simulation kills, it never hands a lease on).
      await node.start();
    },
    beginStop: () => node.beginStop(),
    stop: () => node.stop(),
    async open(name, mode): Promise<VolumeIo> {
      const ov = await node.volumes.acquire(name, mode);
      let closed: Promise<void> | null = null;
      return {
        volumeId: ov.volume.record.id,
        read: (o, l) => ov.volume.read(o, l),
        write: (o, d, f) => ov.volume.write(o, d, f),
        zero: (o, l, z) => ov.volume.zero(o, l, z),
        flush: () => ov.volume.flush(),
        // A client closes its connection once; the manager counts users. A
        // second close answers what the first does: it must not pass for a
        // flush while the first one reports the loss (seed 29752 with
        // --readers: the client's reaction to a lost flush and the settle
        // closed one handle together; the second close answered at once and
        // was taken for an acknowledged flush).
        close: () => (closed ??= node.volumes.release(ov)),
      };
    },
  };
}

export function realNode(env: NodeEnv): NodeUnderTest {
  return adaptNode(new ClusterNode(nodeDeps(env)));
}
