import type { Logger } from 'pino';
import { DEFAULT_NODE_SETTINGS, type NodeDeps } from '../../src/cluster/node.js';
import type { MetadataService } from '../../src/metadata/metadata-service.js';
import { MemoryFencePersistence } from '../../src/store/fence-file.js';
import type { LocalBlockStore } from '../../src/store/local-store.js';
import { systemClock } from '../../src/util/clock.js';
import { systemIds, systemRandom } from '../../src/util/random.js';

/**
 * What a ClusterNode named `me` needs to run alone in a unit test: no peers
 * to reach, real time, fences in memory, quick etcd retries. `extra`
 * overrides or adds (a peer record, hooks).
 */
export function loneNodeDeps(metadata: MetadataService, store: LocalBlockStore, logger: Logger, extra: Partial<NodeDeps> = {}): NodeDeps {
  return {
    uuid: 'me',
    metadata,
    store,
    fences: new MemoryFencePersistence(),
    transport: { peer: () => null },
    clock: systemClock,
    random: systemRandom,
    ids: systemIds,
    logger,
    settings: { ...DEFAULT_NODE_SETTINGS, retryMs: 10 },
    holder: 'unit test',
    peerRecord: null,
    ...extra,
  };
}
