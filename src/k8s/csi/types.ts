/**
 * The CSI messages as the driver sees them, decoded by proto.ts with
 * proto-loader's options: field names as in csi.proto (snake_case), int64
 * as decimal strings (exact beyond 2^53), enums as their names, absent
 * message fields as null, and a oneof's name holding the field that is set.
 * A CO may send an enum number this file does not name (a newer spec):
 * it then arrives as a number, so enum fields are typed `string | number`.
 */

export type Int64 = string;
export type StringMap = Record<string, string>;

export interface VolumeCapability {
  readonly block: Record<string, never> | null;
  readonly mount: { readonly fs_type: string; readonly mount_flags: readonly string[]; readonly volume_mount_group: string } | null;
  readonly access_mode: { readonly mode: string | number } | null;
  /** Which of block and mount is set (proto-loader's oneofs option). */
  readonly access_type?: 'block' | 'mount';
}

export interface CapacityRange {
  readonly required_bytes: Int64;
  readonly limit_bytes: Int64;
}

export interface Topology {
  readonly segments: StringMap;
}

export interface VolumeOut {
  readonly capacity_bytes: Int64 | number;
  readonly volume_id: string;
  readonly volume_context?: StringMap;
  readonly accessible_topology?: Topology[];
}

export interface CreateVolumeRequest {
  readonly name: string;
  readonly capacity_range: CapacityRange | null;
  readonly volume_capabilities: readonly VolumeCapability[];
  readonly parameters: StringMap;
  readonly secrets: StringMap;
  readonly volume_content_source: { readonly type?: 'snapshot' | 'volume' } | null;
  readonly accessibility_requirements: unknown;
  readonly mutable_parameters: StringMap;
}

export interface DeleteVolumeRequest {
  readonly volume_id: string;
}

export interface ValidateVolumeCapabilitiesRequest {
  readonly volume_id: string;
  readonly volume_context: StringMap;
  readonly volume_capabilities: readonly VolumeCapability[];
  readonly parameters: StringMap;
  readonly mutable_parameters: StringMap;
}

export interface ListVolumesRequest {
  readonly max_entries: number;
  readonly starting_token: string;
}

export interface GetCapacityRequest {
  readonly volume_capabilities: readonly VolumeCapability[];
  readonly parameters: StringMap;
}

export interface NodeStageVolumeRequest {
  readonly volume_id: string;
  readonly publish_context: StringMap;
  readonly staging_target_path: string;
  readonly volume_capability: VolumeCapability | null;
  readonly volume_context: StringMap;
}

export interface NodeUnstageVolumeRequest {
  readonly volume_id: string;
  readonly staging_target_path: string;
}

export interface NodePublishVolumeRequest {
  readonly volume_id: string;
  readonly publish_context: StringMap;
  readonly staging_target_path: string;
  readonly target_path: string;
  readonly volume_capability: VolumeCapability | null;
  readonly readonly: boolean;
  readonly volume_context: StringMap;
}

export interface NodeUnpublishVolumeRequest {
  readonly volume_id: string;
  readonly target_path: string;
}

export interface NodeGetVolumeStatsRequest {
  readonly volume_id: string;
  readonly volume_path: string;
  readonly staging_target_path: string;
}

export interface VolumeUsage {
  readonly available: number;
  readonly total: number;
  readonly used: number;
  readonly unit: 'BYTES' | 'INODES';
}

/** One RPC handler: a decoded request in, a response object out (or a thrown error). */
export type Handler = (request: never) => Promise<object>;
