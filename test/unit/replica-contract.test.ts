import pino from 'pino';
import { FenceTable } from '../../src/replication/fence-table.js';
import { Replica } from '../../src/replication/replica.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import { replicaContract } from '../helpers/replica-contract.js';

replicaContract('replica rules over the memory store', async () => {
  let ringVersion = 5;
  let live = true;
  const saved = new Map<number, number>();
  const fences = await FenceTable.open({ load: async () => new Map(saved), save: async (f) => void f.forEach((t, v) => saved.set(v, t)) });
  const store = new MemoryBlockStore({ blockSize: 64 * 1024, capacity: 64 * 1024 * 1024 });
  const api = new Replica({ uuid: 'peer-a', incarnation: 'inc-1', store, fences, ringVersion: () => ringVersion, live: () => live, logger: pino({ level: 'silent' }) });
  return {
    api,
    blockSize: store.blockSize,
    setRingVersion: (v) => (ringVersion = v),
    setLive: (l) => (live = l),
    close: async () => store.close(),
  };
});
