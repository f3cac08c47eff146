/**
 * The FlexVolume service inside torusd: the socket listener, the mount logic
 * and its real dependencies. torusd starts it with one call when
 * --flex-socket is set.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import type { Attacher } from './attacher.js';
import { ownClusterOnly } from './cluster-check.js';
import { flexHandler } from './driver.js';
import { FLEX_MOUNT_CODES } from '../mount/filesystem.js';
import { EtcdFormatMarks } from '../mount/etcd-format-marks.js';
import { FlexMounter } from './mounter.js';
import { NodeSystem } from '../mount/node-system.js';
import { FlexServer } from './server.js';
import { FileStateStore } from './state.js';

export interface FlexServiceOptions {
  readonly socketPath: string;
  /** Holds attachments.json and the staging mounts (mounts/<volume>). */
  readonly stateDir: string;
  readonly localEtcd: readonly string[];
  /** The cluster this torusd belongs to: pods may name its etcd by any address, never another cluster's. */
  readonly localClusterId: string;
  readonly attacher: Attacher;
  readonly logger: Logger;
}

export async function startFlexService(opts: FlexServiceOptions): Promise<{ close(): Promise<void> }> {
  const marks = new EtcdFormatMarks({ localEtcd: opts.localEtcd, logger: opts.logger });
  const mounter = new FlexMounter({
    attacher: ownClusterOnly(opts.attacher, { localClusterId: opts.localClusterId, clusterIdAt: (etcd) => marks.clusterId(etcd) }),
    system: new NodeSystem(FLEX_MOUNT_CODES),
    marks,
    state: new FileStateStore(opts.stateDir),
    stagingRoot: path.join(opts.stateDir, 'mounts'),
    logger: opts.logger,
  });
  const server = new FlexServer({ socketPath: opts.socketPath, handler: flexHandler(mounter), logger: opts.logger });
  await server.listen();
  return {
    async close() {
      await server.close();
      await marks.close();
    },
  };
}
