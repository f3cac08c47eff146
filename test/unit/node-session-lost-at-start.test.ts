import { describe, expect, it } from 'vitest';
import { ClusterNode } from '../../src/cluster/node.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import { loneNodeDeps } from '../helpers/lone-node.js';
import { recordingLogger } from '../helpers/peer-harness.js';

/**
 * A node whose first etcd session is lost while it joins (its lease ran
 * out during an etcd outage, or etcd answered too slowly): the reconnect
 * that the loss begins finishes the join with a new session, and start()
 * resolves once the node is live. Before, start() went on with the lost
 * session, failed at the peer record with TORUS_ERR_SESSION_LOST, and
 * torusd exited (simulation seed 884 with --readers --etcd-delays).
 */
describe('ClusterNode.start() when the session is lost while it joins', () => {
  it('joins with a new session, and start() resolves once live', async () => {
    const rec = recordingLogger();
    const md = new MemoryMetadata({ logger: rec.logger });
    await md.initCluster({ blockSize: 4096, replication: 1 }, { force: false });
    const ring = await md.getRing();
    await md.setRing({ ...ring, version: ring.version + 1, members: [{ uuid: 'me', weight: 1 }] });
    const sessions: string[] = [];
    const node = new ClusterNode(
      loneNodeDeps(md, new MemoryBlockStore({ blockSize: 4096, capacity: 1 << 20 }), rec.logger, {
        peerRecord: () => ({
          schema: 1,
          uuid: 'me',
          address: '127.0.0.1:4000',
          nbdAddress: null,
          httpAddress: null,
          capacity: 1 << 20,
          used: 0,
          updatedAt: new Date().toISOString(),
          hostname: 'unit',
          pid: process.pid,
          version: 'test',
          incarnation: 'me#1',
        }),
        // The first session's lease is revoked the moment the node has it.
        onSessionOpened: async (leaseId) => {
          sessions.push(leaseId);
          if (sessions.length === 1) md.revokeLease(leaseId);
        },
      }),
    );
    try {
      await node.start();
      expect(node.isLive).toBe(true);
      expect(sessions).toHaveLength(2);
      expect(md.leaseIds()).toEqual([sessions[1]]);
      expect(rec.lines.some((l) => l.msg === 'etcd session lost while starting; joining with a new session')).toBe(true);
      // The peer record is published under the new session.
      expect((await md.listPeers()).map((p) => p.uuid)).toEqual(['me']);
    } finally {
      await node.stop();
    }
  });
});
