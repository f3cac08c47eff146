/**
 * torusd's local attach API: the request and response types, the routes and
 * where the socket lives. `torusblk nbd` and the FlexVolume driver both talk
 * to it through AttachClient (api-client.ts); torusd serves it
 * (api-server.ts). HTTP/1.1 with JSON bodies over a unix socket in the data
 * dir, mode 0600: only root (or torusd's user) on this node can attach.
 *
 *   GET  /v1/kernel       -> KernelStatus
 *   GET  /v1/attachments  -> { attachments: AttachmentInfo[] }
 *   POST /v1/attach       AttachRequest -> AttachmentInfo
 *   POST /v1/detach       DetachRequest -> DetachResponse
 *   POST /v1/fault        FaultRequest  -> AttachmentInfo   (only with TORUS_FAULT_INJECTION=1)
 *
 * A failure answers 4xx/5xx with ApiErrorBody: the TORUS_ERR_* code and a
 * message saying what to do.
 */
import path from 'node:path';
import type { ErrorCode } from '../errors/codes.js';
import type { WriteLevel } from '../replication/settings.js';

export const ATTACH_SOCKET_NAME = 'attach.sock';

/** Where torusd listens, for a given --data-dir. */
export function attachSocketPath(dataDir: string): string {
  return path.resolve(dataDir, ATTACH_SOCKET_NAME);
}

/** Kernel request timeout: a request unanswered this long is re-sent on a new socket. */
export const DEFAULT_TIMEOUT_SECONDS = 10;
/**
 * How long the kernel holds I/O while no socket serves the device (a torusd
 * restart). Equal to the volume lock's lease TTL: past that, the lock may be
 * someone else's and the restarted torusd fails the device anyway.
 */
export const DEFAULT_DEAD_CONN_TIMEOUT_SECONDS = 30;

export interface AttachRequest {
  readonly volume: string;
  /** Default false: read-write, which takes the volume lock. */
  readonly readOnly?: boolean;
  /**
   * With readOnly: hold a reader lock on the volume while attached (the CSI
   * driver's multi-node read-only stages). Readers share it; a writer
   * anywhere is refused while it is held, and it is refused while a writer
   * holds the volume (TORUS_ERR_VOLUME_IN_USE naming the writer). Without
   * it a read-only attach takes no lock and works beside a writer.
   */
  readonly readerLock?: boolean;
  /** With read-write: the write level for the volume while this node writes it (default: torusd's --write-level). */
  readonly writeLevel?: WriteLevel;
  /** "/dev/nbdN" to use that device; default: the kernel picks a free one. */
  readonly device?: string;
  readonly timeoutSeconds?: number;
  readonly deadConnTimeoutSeconds?: number;
}

export type AttachmentState =
  /** A socket serves the device. */
  | 'serving'
  /** The socket broke (kernel timeout, restart); a new one is being handed over. */
  | 'reconnecting'
  /** Failed for good (lock lost): the device answers EIO; detach it. */
  | 'failed';

export interface AttachmentInfo {
  readonly device: string;
  readonly index: number;
  readonly volume: string;
  /** The volume's id (ids are never reused): tells a volume from a later one of the same name. */
  readonly volumeId: number;
  readonly mode: 'rw' | 'ro';
  /** A read-only attachment that holds a reader lock (see AttachRequest.readerLock). */
  readonly readerLock: boolean;
  /** netlink attachments survive a torusd restart; ioctl ones do not. */
  readonly kernel: 'netlink' | 'ioctl';
  readonly survivesRestart: boolean;
  readonly sizeBytes: number;
  /** Fencing token of the volume lock (rw), kept across restarts. */
  readonly lockToken: number | null;
  readonly timeoutSeconds: number;
  readonly deadConnTimeoutSeconds: number;
  readonly state: AttachmentState;
  /** Why, when state is failed or reconnecting. */
  readonly detail: string | null;
  readonly attachedAt: string;
  /** Times torusd handed the kernel a new socket for this device. */
  readonly reconnects: number;
  /** Armed test faults (see FaultRequest). */
  readonly faults: { readonly read: 'eio' | 'none' };
}

export interface DetachRequest {
  readonly device: string;
}

export interface DetachResponse {
  readonly device: string;
  readonly volume: string;
  readonly detached: true;
}

/**
 * Test hook: make every READ on the device fail with EIO (nbdkit's error
 * filter, as a layer around the export). Refused unless torusd runs with
 * TORUS_FAULT_INJECTION=1.
 */
export interface FaultRequest {
  readonly device: string;
  readonly read: 'eio' | 'none';
}

export type KernelStatus =
  | { readonly available: true; readonly mode: 'netlink' | 'ioctl'; readonly detail: string }
  | { readonly available: false; readonly code: ErrorCode; readonly message: string };

export interface ApiErrorBody {
  readonly error: { readonly code: ErrorCode; readonly message: string };
}
