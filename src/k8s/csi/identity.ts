/**
 * The CSI Identity service: who the driver is, what it serves, and whether
 * it is ready. Probe never fails the call: a liveness sidecar restarts a
 * plugin whose Probe fails, and restarting the node's storage driver
 * because etcd blinked would make things worse. It answers `ready: false`
 * instead while etcd (or, for the node service, torusd) does not answer.
 */
import type { Logger } from 'pino';
import { VERSION } from '../../version.js';
import type { Clock } from '../../util/clock.js';

/** The driver name: the StorageClass's provisioner and the CSIDriver object's name. */
export const DRIVER_NAME = 'torus.csi.coreos.com';

/** A check longer than this counts as "not ready": livenessprobe's default timeout is 1 s. */
export const PROBE_CHECK_MS = 800;

export interface IdentityOptions {
  /** Whether the Controller service is served by this process. */
  readonly controller: boolean;
  /** Resolves when what the driver needs answers; rejects or hangs when not. */
  readonly checks: readonly { readonly what: string; readonly check: () => Promise<unknown> }[];
  readonly logger: Logger;
  readonly clock: Clock;
}

export function identityHandlers(opts: IdentityOptions) {
  const log = opts.logger.child({ module: 'csi-identity' });
  let lastReady: boolean | null = null;
  const within = (p: Promise<unknown>): Promise<boolean> =>
    new Promise((resolve) => {
      const timer = opts.clock.setTimeout(() => resolve(false), PROBE_CHECK_MS);
      p.then(
        () => {
          timer.cancel();
          resolve(true);
        },
        () => {
          timer.cancel();
          resolve(false);
        },
      );
    });
  return {
    GetPluginInfo: async () => ({ name: DRIVER_NAME, vendor_version: VERSION, manifest: {} }),
    GetPluginCapabilities: async () => ({
      // No VOLUME_ACCESSIBILITY_CONSTRAINTS: every node reaches every
      // volume over the network, so there is no topology to honour. No
      // volume expansion: torus volumes cannot grow yet.
      capabilities: opts.controller ? [{ service: { type: 'CONTROLLER_SERVICE' } }] : [],
    }),
    Probe: async () => {
      const results = await Promise.all(opts.checks.map(async (c) => ({ what: c.what, ok: await within(Promise.resolve().then(c.check)) })));
      const ready = results.every((r) => r.ok);
      if (ready !== lastReady) {
        // Said once per change, not at every probe.
        if (ready) log.info({}, 'ready');
        else log.warn({ failing: results.filter((r) => !r.ok).map((r) => r.what) }, 'not ready');
        lastReady = ready;
      }
      return { ready: { value: ready } };
    },
  };
}
