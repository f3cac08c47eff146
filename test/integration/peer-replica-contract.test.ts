/**
 * The ReplicaApi contract (test/helpers/replica-contract.ts) over the wire:
 * a PeerClient, peer protocol 2 on loopback TCP, a PeerServer, and the
 * replica rules (src/replication/replica.ts) over the disk store (what
 * torusd serves) and over the memory twins. Every answer, error code and
 * error detail the contract checks must survive the round trip.
 */
import { fileReplicaOverWire, memoryReplicaOverWire } from '../helpers/replica-targets.js';
import { replicaContract } from '../helpers/replica-contract.js';

replicaContract('replica rules over the file store, through the peer protocol', fileReplicaOverWire);
replicaContract('replica rules over the memory twins, through the peer protocol', memoryReplicaOverWire);
