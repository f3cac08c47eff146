/**
 * The ReplicaApi contract (test/helpers/replica-contract.ts) over the wire:
 * a PeerClient, peer protocol 2 on loopback TCP, a PeerServer, and the
 * replica rules (src/replication/replica.ts) over a MemoryBlockStore. Every
 * answer, error code and error detail the contract checks must survive the
 * round trip.
 */
import pino from 'pino';
import { PeerClient } from '../../src/peer/client.js';
import { PeerServer } from '../../src/peer/server.js';
import { FenceTable } from '../../src/replication/fence-table.js';
import { Replica } from '../../src/replication/replica.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import { replicaContract } from '../helpers/replica-contract.js';

const BS = 64 * 1024;
const logger = pino({ level: process.env.PEER_TEST_LOG ?? 'silent' });

replicaContract('replica rules over the memory store, through the peer protocol', async () => {
  let ringVersion = 5;
  let live = true;
  const saved = new Map<number, number>();
  const fences = await FenceTable.open({ load: async () => new Map(saved), save: async (f) => void f.forEach((t, v) => saved.set(v, t)) });
  const store = new MemoryBlockStore({ blockSize: BS, capacity: 64 * 1024 * 1024 });
  const replica = new Replica({ uuid: 'peer-a', incarnation: 'inc-1', store, fences, ringVersion: () => ringVersion, live: () => live, logger });
  const common = { clusterId: 'contract', secret: 'contract secret', logger };
  const server = new PeerServer({ ...common, replica, blockSize: BS, peerUuid: 'peer-a', incarnation: 'inc-1' });
  const addr = await server.listen('127.0.0.1', 0);
  const client = new PeerClient({ ...common, address: addr, blockSize: BS, peerUuid: 'coordinator', incarnation: 'coord-1', remotePeerUuid: 'peer-a' });
  return {
    api: client,
    blockSize: BS,
    setRingVersion: (v) => (ringVersion = v),
    setLive: (l) => (live = l),
    close: async () => {
      await client.close();
      await server.close();
      await store.close();
    },
  };
});
