/**
 * What the FlexVolume driver needs from kernel attach (src/attach/, part A of
 * the kernel work): a volume as a local block device, and that device gone
 * again. The attachment's long-lived side (the NBD connection the kernel
 * talks to) lives in torusd, which outlives every driver call; the driver
 * processes kubelet runs are gone within the call. That is why torus needs
 * no systemd unit or D-Bus call on the node (Torus did, and failed on GKE).
 */
export interface AttachOptions {
  /** A read-only device: the kernel refuses writes, and no volume lock is taken. */
  readonly readOnly: boolean;
  /** etcd of the cluster that holds the volume; null means the local torusd's cluster. */
  readonly etcd: readonly string[] | null;
}

export interface Attacher {
  /** Attaches and resolves with the device path (e.g. /dev/nbd0); throws a TorusError (e.g. TORUS_ERR_VOLUME_IN_USE) when it cannot. */
  attach(volume: string, opts: AttachOptions): Promise<{ device: string }>;
  /** Detaches; resolves too when the device is no longer attached. */
  detach(device: string): Promise<void>;
}

/**
 * What the mount logic uses of torusd's kernel attach manager
 * (src/attach/attach-manager.ts), declared structurally: the fakes in the
 * unit tests implement the same shape.
 */
export interface KernelAttachManager {
  attach(req: { volume: string; readOnly?: boolean }): Promise<{ device: string }>;
  detach(device: string): Promise<unknown>;
}

export function kernelAttacher(manager: KernelAttachManager): Attacher {
  return {
    async attach(volume, opts) {
      // options.etcd was checked to name this torusd's own cluster (cluster-check.ts).
      const info = await manager.attach({ volume, readOnly: opts.readOnly });
      return { device: info.device };
    },
    async detach(device) {
      try {
        await manager.detach(device);
      } catch (err) {
        // Detach is idempotent for the mount logic: a device this torusd no
        // longer has attached is detached.
        if ((err as { code?: unknown }).code === 'TORUS_ERR_ATTACH_NOT_FOUND') return;
        throw err;
      }
    },
  };
}
