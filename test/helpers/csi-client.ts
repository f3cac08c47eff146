/**
 * A CSI client for the tests: grpc-js over the driver's unix socket, with
 * the same protocol definitions the driver serves (the field-by-field check
 * against the published csi.proto is scripts/check-csi-proto.mjs). Calls
 * resolve with the decoded response or reject with the gRPC status.
 */
import * as grpc from '@grpc/grpc-js';
import { csiServices } from '../../src/k8s/csi/proto.js';

export type Status = keyof typeof grpc.status;

export interface CsiCallError extends Error {
  readonly code: number;
  readonly status: Status;
  readonly details: string;
}

type Call = (request: object) => Promise<any>;

/** The RPCs of each CSI service (csi.proto); one the driver does not serve answers UNIMPLEMENTED. */
type IdentityRpc = 'GetPluginInfo' | 'GetPluginCapabilities' | 'Probe';
type ControllerRpc =
  | 'CreateVolume'
  | 'DeleteVolume'
  | 'ControllerPublishVolume'
  | 'ControllerUnpublishVolume'
  | 'ValidateVolumeCapabilities'
  | 'ListVolumes'
  | 'GetCapacity'
  | 'ControllerGetCapabilities'
  | 'CreateSnapshot'
  | 'DeleteSnapshot'
  | 'ListSnapshots'
  | 'ControllerExpandVolume'
  | 'ControllerGetVolume';
type NodeRpc = 'NodeStageVolume' | 'NodeUnstageVolume' | 'NodePublishVolume' | 'NodeUnpublishVolume' | 'NodeGetVolumeStats' | 'NodeExpandVolume' | 'NodeGetCapabilities' | 'NodeGetInfo';

export interface CsiClient {
  readonly identity: Readonly<Record<IdentityRpc, Call>>;
  readonly controller: Readonly<Record<ControllerRpc, Call>>;
  readonly node: Readonly<Record<NodeRpc, Call>>;
  close(): void;
}

function promisify<R extends string>(client: grpc.Client, timeoutMs: number): Record<R, Call> {
  return new Proxy({} as Record<R, Call>, {
    get(_t, rpc: string) {
      return (request: object) =>
        new Promise((resolve, reject) => {
          const fn = (client as unknown as Record<string, Function>)[rpc];
          if (typeof fn !== 'function') throw new Error(`no RPC ${rpc}`);
          fn.call(client, request, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: unknown) => {
            if (err) {
              const e = Object.assign(new Error(`${rpc}: ${grpc.status[err.code]}: ${err.details}`), { code: err.code, status: grpc.status[err.code] as Status, details: err.details });
              reject(e);
            } else resolve(res);
          });
        });
    },
  });
}

export function csiClient(socketPath: string, timeoutMs = 60_000): CsiClient {
  const { clients } = csiServices();
  const address = `unix://${socketPath}`;
  const creds = grpc.credentials.createInsecure();
  const made = [new clients.Identity(address, creds), new clients.Controller(address, creds), new clients.Node(address, creds)];
  return {
    identity: promisify(made[0]!, timeoutMs),
    controller: promisify(made[1]!, timeoutMs),
    node: promisify(made[2]!, timeoutMs),
    close: () => made.forEach((c) => c.close()),
  };
}

/** Resolves with the gRPC status name of a call that must fail. */
export async function statusOf(p: Promise<unknown>): Promise<Status | 'OK'> {
  try {
    await p;
    return 'OK';
  } catch (err) {
    const s = (err as Partial<CsiCallError>).status;
    if (s === undefined) throw err;
    return s;
  }
}

/** A capability as kubelet and the provisioner send it. */
export function mountCap(mode = 'SINGLE_NODE_WRITER', fsType = 'ext4', mountFlags: string[] = []) {
  return { mount: { fs_type: fsType, mount_flags: mountFlags }, access_mode: { mode } };
}

export function blockCap(mode = 'SINGLE_NODE_WRITER') {
  return { block: {}, access_mode: { mode } };
}
