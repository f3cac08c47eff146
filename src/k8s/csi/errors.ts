/**
 * The one place where torus errors become gRPC statuses, with the codes the
 * CSI specification names for each case. Pure.
 *
 * The message a CO sees is the torus error's line, `TORUS_ERR_...: why`,
 * so an operator reading a pod's events finds the code README explains.
 */
import { status as Status } from '@grpc/grpc-js';
import type { ErrorCode } from '../../errors/codes.js';
import { TorusError } from '../../errors/torus-error.js';
import type { MountErrorCodes } from '../mount/filesystem.js';

/** The mount layer's failures under the CSI driver's own codes. */
export const CSI_MOUNT_CODES: MountErrorCodes = {
  deviceRead: 'TORUS_ERR_CSI_DEVICE_READ',
  probeAmbiguous: 'TORUS_ERR_CSI_PROBE_AMBIGUOUS',
  fsMismatch: 'TORUS_ERR_CSI_FS_MISMATCH',
  fsMissing: 'TORUS_ERR_CSI_FS_MISSING',
  notFormattedRo: 'TORUS_ERR_CSI_NOT_FORMATTED_RO',
  mountFailed: 'TORUS_ERR_CSI_MOUNT_FAILED',
};

export function grpcStatusFor(code: ErrorCode): Status {
  switch (code) {
    // A request the CO must change: retrying it as it is cannot succeed.
    case 'TORUS_ERR_CSI_REQUEST_INVALID':
    case 'TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED':
    case 'TORUS_ERR_CSI_PARAMETER_INVALID':
    case 'TORUS_ERR_NAME_INVALID':
    case 'TORUS_ERR_SIZE_INVALID':
    case 'TORUS_ERR_ARG_INVALID':
      return Status.INVALID_ARGUMENT;
    case 'TORUS_ERR_VOLUME_NOT_FOUND':
      return Status.NOT_FOUND;
    // The spec's "exists but is incompatible".
    case 'TORUS_ERR_CSI_VOLUME_INCOMPATIBLE':
    case 'TORUS_ERR_VOLUME_EXISTS':
      return Status.ALREADY_EXISTS;
    case 'TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE':
      return Status.OUT_OF_RANGE;
    case 'TORUS_ERR_CAPACITY_EXHAUSTED':
    case 'TORUS_ERR_ATTACH_NO_DEVICE':
      return Status.RESOURCE_EXHAUSTED;
    // The system is not in the state the call needs: another node holds
    // the volume, it is not staged, its filesystem is not what was asked.
    case 'TORUS_ERR_VOLUME_IN_USE':
    case 'TORUS_ERR_CSI_NOT_STAGED':
    case 'TORUS_ERR_CSI_NOT_TORUS_MOUNT':
    case 'TORUS_ERR_CSI_FS_MISMATCH':
    case 'TORUS_ERR_CSI_FS_MISSING':
    case 'TORUS_ERR_CSI_NOT_FORMATTED_RO':
    case 'TORUS_ERR_CSI_PROBE_AMBIGUOUS':
    case 'TORUS_ERR_CLUSTER_NOT_INITIALISED':
    case 'TORUS_ERR_RING_EMPTY':
    case 'TORUS_ERR_ATTACH_NO_MODULE':
    case 'TORUS_ERR_ATTACH_UNAVAILABLE':
    case 'TORUS_ERR_ATTACH_PERMISSION':
    case 'TORUS_ERR_ATTACH_LOCK_LOST':
      return Status.FAILED_PRECONDITION;
    // Operation pending, or lost a race: the CO retries.
    case 'TORUS_ERR_CSI_BUSY':
    case 'TORUS_ERR_CSI_PAGE_TOKEN':
    case 'TORUS_ERR_CLUSTER_CONFLICT':
      return Status.ABORTED;
    // Something the driver depends on did not answer; a retry may work.
    case 'TORUS_ERR_ETCD_UNAVAILABLE':
    case 'TORUS_ERR_ATTACH_DAEMON_UNREACHABLE':
    case 'TORUS_ERR_SESSION_LOST':
    case 'TORUS_ERR_PEER_UNAVAILABLE':
    case 'TORUS_ERR_TIMEOUT':
      return Status.UNAVAILABLE;
    default:
      return Status.INTERNAL;
  }
}

export interface ServiceErrorLike {
  readonly code: Status;
  readonly details: string;
}

/** Any error as the status the CO gets; what is not a TorusError is a bug on our side (INTERNAL). */
export function toServiceError(err: unknown): ServiceErrorLike & { readonly torusCode: ErrorCode | null } {
  if (err instanceof TorusError) return { code: grpcStatusFor(err.code), details: err.toLine(), torusCode: err.code };
  const message = err instanceof Error ? err.message : String(err);
  return { code: Status.INTERNAL, details: `internal error: ${message}`, torusCode: null };
}

export function invalid(message: string): TorusError {
  return new TorusError('TORUS_ERR_CSI_REQUEST_INVALID', message);
}
