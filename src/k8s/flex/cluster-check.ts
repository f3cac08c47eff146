/**
 * `options.etcd` names the etcd of the volume's cluster (the walkthrough's
 * `etcd: "10.3.0.100:2379"`). A node's torusd attaches volumes of its own
 * cluster only, and may reach that same etcd by another address (a Service
 * name, a clusterIP), so the check compares cluster ids, not addresses: the
 * id etcd holds at /torus/config against the id torusd joined.
 */
import { TorusError } from '../../errors/torus-error.js';
import type { Attacher } from './attacher.js';

export function ownClusterOnly(inner: Attacher, opts: { readonly localClusterId: string; readonly clusterIdAt: (etcd: readonly string[]) => Promise<string> }): Attacher {
  return {
    async attach(volume, o) {
      if (o.etcd !== null) {
        const id = await opts.clusterIdAt(o.etcd);
        if (id !== opts.localClusterId) {
          throw new TorusError(
            'TORUS_ERR_FLEX_FOREIGN_CLUSTER',
            `volume ${volume}: etcd ${o.etcd.join(',')} holds cluster ${id}, but this node's torusd belongs to cluster ${opts.localClusterId}; drop options.etcd or point it at this cluster's etcd`,
          );
        }
      }
      return inner.attach(volume, { ...o, etcd: null });
    },
    detach: (device) => inner.detach(device),
  };
}
