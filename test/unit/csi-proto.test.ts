/**
 * The CSI protocol definitions: the driver's csi.proto loads and declares
 * the services kubelet and the sidecars call, and the checker that compares
 * it with the published csi.proto (scripts/check-csi-proto.mjs, run against
 * the specification's file, see README) finds the differences that would
 * pass our own client and fail with a real kubelet.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CSI_PROTO_PATH, csiServices } from '../../src/k8s/csi/proto.js';
// @ts-expect-error: a plain ES module script without types
import { compareProtos, loadProto } from '../../scripts/check-csi-proto.mjs';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function protoFile(text: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'torus-proto-'));
  dirs.push(dir);
  const file = path.join(dir, 'x.proto');
  await writeFile(file, text);
  return file;
}

const PUBLISHED = `syntax = "proto3";
package csi.v1;
import "google/protobuf/wrappers.proto";
service Identity { rpc Probe (ProbeRequest) returns (ProbeResponse) {} rpc Other (ProbeRequest) returns (ProbeResponse) {} }
message ProbeRequest {}
message ProbeResponse { google.protobuf.BoolValue ready = 1; }
message Req { string volume_id = 1; map<string, string> secrets = 2; string staging_target_path = 3; repeated string flags = 4; }
enum Mode { UNKNOWN = 0; A = 1; B = 2; }
`;

describe('csi.proto', () => {
  it('loads and declares the Identity, Controller and Node RPCs the driver serves', () => {
    const s = csiServices();
    expect(Object.keys(s.Identity).sort()).toEqual(['GetPluginCapabilities', 'GetPluginInfo', 'Probe']);
    expect(Object.keys(s.Controller).sort()).toEqual(['ControllerGetCapabilities', 'CreateVolume', 'DeleteVolume', 'GetCapacity', 'ListVolumes', 'ValidateVolumeCapabilities']);
    expect(Object.keys(s.Node).sort()).toEqual(['NodeGetCapabilities', 'NodeGetInfo', 'NodeGetVolumeStats', 'NodePublishVolume', 'NodeStageVolume', 'NodeUnpublishVolume', 'NodeUnstageVolume']);
    expect(s.Identity.Probe!.path).toBe('/csi.v1.Identity/Probe');
    expect(s.Node.NodeStageVolume!.path).toBe('/csi.v1.Node/NodeStageVolume');
  });

  it('Probe.ready is a BoolValue wrapper on the wire, as the spec has it', () => {
    const probe = csiServices().Identity.Probe!;
    const bytes = probe.responseSerialize({ ready: { value: false } });
    // Field 1 with wire type 2 (a length-delimited message): "set, false",
    // which a plain bool (wire type 0, omitted when false) cannot say.
    expect(bytes[0]).toBe(0x0a);
    expect(probe.responseDeserialize(bytes)).toEqual({ ready: { value: false } });
    expect(probe.responseDeserialize(probe.responseSerialize({}))).toEqual({ ready: null });
  });

  it('the checker passes a matching subset and names wrong numbers, types, labels and enum values', async () => {
    const published = loadProto(await protoFile(PUBLISHED));
    const good = loadProto(
      await protoFile(`syntax = "proto3"; package csi.v1; import "google/protobuf/wrappers.proto";
service Identity { rpc Probe (ProbeRequest) returns (ProbeResponse) {} }
message ProbeRequest {} message ProbeResponse { google.protobuf.BoolValue ready = 1; }
message Req { string volume_id = 1; string staging_target_path = 3; }
enum Mode { UNKNOWN = 0; A = 1; B = 2; }`),
    );
    const ok = compareProtos(good, published);
    expect(ok.errors).toEqual([]);
    expect(ok.notes.join('\n')).toMatch(/leaves out map<string, string> secrets = 2/);
    expect(ok.notes.join('\n')).toMatch(/leaves out rpc Other/);
    const bad = loadProto(
      await protoFile(`syntax = "proto3"; package csi.v1;
service Identity { rpc Probe (ProbeRequest) returns (Req) {} }
message ProbeRequest {} message ProbeResponse { bool ready = 1; }
message Req { string volume_id = 1; string staging_target_path = 4; string flags = 5; }
enum Mode { UNKNOWN = 0; A = 2; }`),
    );
    const { errors } = compareProtos(bad, published);
    const text = errors.join('\n');
    expect(text).toMatch(/ProbeResponse: ours "bool ready = 1", published ".google.protobuf.BoolValue ready = 1"/);
    expect(text).toMatch(/Req: ours "string staging_target_path = 4", published "string staging_target_path = 3"/);
    expect(text).toMatch(/Req: ours "string flags = 5", published "repeated string flags = 4"/);
    expect(text).toMatch(/Mode.A: ours = 2, published = 1/);
    expect(text).toMatch(/Mode: lacks B = 2/);
    expect(text).toMatch(/Identity.Probe: ours .* -> .csi.v1.Req, published .* -> .csi.v1.ProbeResponse/);
  });

  it('our csi.proto is one the checker reads', () => {
    const ours = loadProto(CSI_PROTO_PATH);
    const self = compareProtos(ours, ours);
    expect(self.errors).toEqual([]);
    expect(self.checked.fields).toBeGreaterThan(100);
  });
});
