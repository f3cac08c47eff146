import { fileReplica, memoryReplica } from '../helpers/replica-targets.js';
import { replicaContract } from '../helpers/replica-contract.js';

replicaContract('replica rules over the memory twins', memoryReplica);
replicaContract('replica rules over the file store and its fence file', fileReplica);
