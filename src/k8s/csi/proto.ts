/**
 * The CSI services as gRPC service definitions, from csi.proto (which the
 * build copies next to this file). Decoding options (types.ts describes
 * the result): names as in the .proto, int64 as decimal strings, enums by
 * name, absent message fields as null, oneof names set.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const CSI_PROTO_PATH = fileURLToPath(new URL('./csi.proto', import.meta.url));

export const DECODE_OPTIONS: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

export interface CsiServices {
  readonly Identity: grpc.ServiceDefinition;
  readonly Controller: grpc.ServiceDefinition;
  readonly Node: grpc.ServiceDefinition;
  /** Client constructors, for tests and tools. */
  readonly clients: { readonly Identity: grpc.ServiceClientConstructor; readonly Controller: grpc.ServiceClientConstructor; readonly Node: grpc.ServiceClientConstructor };
}

let loaded: CsiServices | null = null;

export function csiServices(): CsiServices {
  if (loaded) return loaded;
  const def = protoLoader.loadSync(CSI_PROTO_PATH, DECODE_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { csi: { v1: Record<'Identity' | 'Controller' | 'Node', grpc.ServiceClientConstructor> } };
  const v1 = pkg.csi.v1;
  loaded = {
    Identity: v1.Identity.service,
    Controller: v1.Controller.service,
    Node: v1.Node.service,
    clients: { Identity: v1.Identity, Controller: v1.Controller, Node: v1.Node },
  };
  return loaded;
}
