/**
 * What the ReplicaApi contract (replica-contract.ts) runs against: the
 * replica rules over the in-memory twins (MemoryBlockStore,
 * MemoryFencePersistence), over the disk store with its fences.json in a
 * temp folder (what torusd runs), and either of these behind a PeerServer,
 * reached by a PeerClient over loopback TCP.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { PeerClient } from '../../src/peer/client.js';
import { PeerServer } from '../../src/peer/server.js';
import { FenceTable } from '../../src/replication/fence-table.js';
import { Replica } from '../../src/replication/replica.js';
import { FileFencePersistence, MemoryFencePersistence, type FencePersistence } from '../../src/store/fence-file.js';
import { FileBlockStore } from '../../src/store/file-block-store.js';
import type { LocalBlockStore } from '../../src/store/local-store.js';
import { MemoryBlockStore } from '../../src/store/memory-block-store.js';
import type { ReplicaUnderTest } from './replica-contract.js';

export const CONTRACT_BLOCK_SIZE = 64 * 1024;
const CAPACITY = 64 * 1024 * 1024;
const logger: Logger = pino({ level: process.env.PEER_TEST_LOG ?? 'silent' });

/** One peer's storage: what survives a restart of its process, and how to let go of it. */
interface Backing {
  /** The store and fence persistence a (re)started process finds. */
  open(): Promise<{ store: LocalBlockStore; fences: FencePersistence }>;
  /** The process stops (the store is closed cleanly). */
  stop(store: LocalBlockStore): Promise<void>;
  cleanup(): Promise<void>;
}

/** The twins: the "disk" is the store object and the fence twin, kept across a restart. */
function memoryBacking(): Backing {
  const store = new MemoryBlockStore({ blockSize: CONTRACT_BLOCK_SIZE, capacity: CAPACITY });
  const fences = new MemoryFencePersistence();
  return {
    open: async () => ({ store, fences }),
    stop: async () => undefined,
    cleanup: () => store.close(),
  };
}

/** The disk store and fences.json in one temp folder, laid out as torusd does (<data-dir>/store). */
async function fileBacking(): Promise<Backing> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'torus-replica-contract-'));
  const dir = path.join(root, 'store');
  let open: LocalBlockStore | null = null;
  return {
    open: async () => {
      open = await FileBlockStore.open({ dir, blockSize: CONTRACT_BLOCK_SIZE, capacity: CAPACITY, logger, checkpointIntervalMs: 3_600_000 });
      return { store: open, fences: new FileFencePersistence(dir) };
    },
    stop: async (store) => {
      await store.close();
      open = null;
    },
    cleanup: async () => {
      if (open !== null) await open.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

interface Started {
  readonly replica: Replica;
  readonly store: LocalBlockStore;
  readonly incarnation: string;
}

/** The replica rules called directly, or through the peer protocol when `wire` is set. */
async function target(backing: Backing, wire: boolean): Promise<ReplicaUnderTest> {
  let ringVersion = 5;
  let live = true;
  let incarnations = 0;
  const start = async (): Promise<Started> => {
    const { store, fences } = await backing.open();
    const incarnation = `inc-${++incarnations}`;
    const replica = new Replica({
      uuid: 'peer-a',
      incarnation,
      store,
      fences: await FenceTable.open(fences),
      ringVersion: () => ringVersion,
      live: () => live,
      logger,
    });
    return { replica, store, incarnation };
  };
  let local = await start();
  let remote = wire ? await serve(local) : null;
  const stop = async () => {
    if (remote !== null) await remote.close();
    await backing.stop(local.store);
  };
  return {
    get api() {
      return remote?.client ?? local.replica;
    },
    blockSize: CONTRACT_BLOCK_SIZE,
    setRingVersion: (v) => (ringVersion = v),
    setLive: (l) => (live = l),
    restart: async () => {
      await stop();
      local = await start();
      remote = wire ? await serve(local) : null;
    },
    close: async () => {
      await stop();
      await backing.cleanup();
    },
  };
}

async function serve({ replica, incarnation }: Started): Promise<{ client: PeerClient; close(): Promise<void> }> {
  const common = { clusterId: 'contract', secret: 'contract secret', logger };
  const server = new PeerServer({ ...common, replica, blockSize: CONTRACT_BLOCK_SIZE, peerUuid: 'peer-a', incarnation });
  const addr = await server.listen('127.0.0.1', 0);
  const client = new PeerClient({ ...common, address: addr, blockSize: CONTRACT_BLOCK_SIZE, peerUuid: 'coordinator', incarnation: 'coord-1', remotePeerUuid: 'peer-a' });
  return {
    client,
    close: async () => {
      await client.close();
      await server.close();
    },
  };
}

export const memoryReplica = (): Promise<ReplicaUnderTest> => target(memoryBacking(), false);
export const fileReplica = async (): Promise<ReplicaUnderTest> => target(await fileBacking(), false);
export const memoryReplicaOverWire = (): Promise<ReplicaUnderTest> => target(memoryBacking(), true);
export const fileReplicaOverWire = async (): Promise<ReplicaUnderTest> => target(await fileBacking(), true);
