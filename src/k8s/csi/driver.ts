/**
 * `torusblk csi`: the CSI driver's process. One program serves Identity
 * and, unless told otherwise, Controller and Node on one endpoint; the
 * deploy manifests run the controller (with the provisioner sidecar) and
 * the node plugin (next to torusd on every node) as two roles of it.
 */
import type { Logger } from 'pino';
import { AttachClient } from '../../attach/api-client.js';
import { EtcdMetadata } from '../../metadata/etcd-metadata.js';
import type { Clock } from '../../util/clock.js';
import { EtcdFormatMarks } from '../mount/etcd-format-marks.js';
import { NodeSystem } from '../mount/node-system.js';
import { ControllerService } from './controller.js';
import { CSI_MOUNT_CODES } from './errors.js';
import { identityHandlers } from './identity.js';
import { NodeService } from './node.js';
import { CsiServer } from './server.js';

export type CsiRole = 'all' | 'controller' | 'node';

export interface CsiDriverOptions {
  readonly endpoint: string;
  readonly nodeId: string;
  readonly role: CsiRole;
  readonly etcd: readonly string[];
  /** torusd's attach socket on this node (the node service only). */
  readonly attachSocket: string;
  readonly logger: Logger;
  readonly clock: Clock;
  /** etcd call bound; Probe answers within its own, shorter bound anyway. */
  readonly etcdTimeoutMs?: number;
}

export interface CsiDriver {
  readonly server: CsiServer;
  close(): Promise<void>;
}

export async function startCsiDriver(opts: CsiDriverOptions): Promise<CsiDriver> {
  const metadata = new EtcdMetadata({ endpoints: opts.etcd, logger: opts.logger, clock: opts.clock, callTimeoutMs: opts.etcdTimeoutMs ?? 5_000 });
  const marks = new EtcdFormatMarks({ localEtcd: opts.etcd, logger: opts.logger, clock: opts.clock });
  const controller = opts.role === 'node' ? null : new ControllerService({ metadata, logger: opts.logger });
  const node =
    opts.role === 'controller'
      ? null
      : new NodeService({ nodeId: opts.nodeId, attach: new AttachClient(opts.attachSocket), system: new NodeSystem(CSI_MOUNT_CODES), marks, metadata, logger: opts.logger });
  const checks: { what: string; check: () => Promise<unknown> }[] = [{ what: 'etcd', check: () => metadata.getClusterConfig() }];
  if (node) checks.push({ what: "torusd's attach socket", check: () => node.torusdReachable() });
  const server = new CsiServer({
    endpoint: opts.endpoint,
    identity: identityHandlers({ controller: controller !== null, checks, logger: opts.logger, clock: opts.clock }),
    controller: controller?.handlers() ?? null,
    node: node?.handlers() ?? null,
    logger: opts.logger,
    clock: opts.clock,
  });
  // Connect to etcd now rather than in the first RPC: the gRPC channel's
  // first connection can take seconds on a loaded node, and the CO's first
  // call should not spend its deadline on it. Failure here is Probe's to
  // report, not a reason not to start.
  void metadata.getClusterConfig().catch((err: unknown) => opts.logger.warn({ err }, 'etcd does not answer yet; Probe says not ready until it does'));
  try {
    await server.listen();
  } catch (err) {
    await marks.close().catch(() => undefined);
    await metadata.close().catch(() => undefined);
    throw err;
  }
  return {
    server,
    async close() {
      await server.close();
      await marks.close().catch(() => undefined);
      await metadata.close().catch(() => undefined);
    },
  };
}
