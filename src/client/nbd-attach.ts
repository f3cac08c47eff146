/**
 * `torusblk nbd`: asks this node's torusd to attach a volume to a kernel nbd
 * device. The attachment lives in torusd, not in torusblk, so it survives
 * torusblk and torusd restarts alike; torusblk only asks, prints and waits.
 */
import { TorusError } from '../errors/torus-error.js';
import type { AttachmentInfo } from '../attach/api.js';
import { AttachClient } from '../attach/api-client.js';

/** How long a detach at exit keeps retrying while torusd is restarting. */
const DETACH_RETRY_MS = 60_000;

export interface NbdAttachOptions {
  readonly socketPath: string;
  readonly readOnly: boolean;
  readonly timeoutSeconds?: number;
  readonly deadConnTimeoutSeconds?: number;
  readonly out: (line: string) => void;
}

export async function attachVolume(volume: string, device: string | undefined, o: NbdAttachOptions): Promise<AttachmentInfo> {
  const client = new AttachClient(o.socketPath);
  const info = await client.attach({
    volume,
    readOnly: o.readOnly,
    ...(device !== undefined ? { device } : {}),
    ...(o.timeoutSeconds !== undefined ? { timeoutSeconds: o.timeoutSeconds } : {}),
    ...(o.deadConnTimeoutSeconds !== undefined ? { deadConnTimeoutSeconds: o.deadConnTimeoutSeconds } : {}),
  });
  o.out(`Attached to ${info.device}`);
  if (!info.survivesRestart) o.out(`warning: ${info.device} is in ioctl mode (this kernel's nbd has no netlink interface): it does not survive a torusd restart`);
  return info;
}

/** Flushes and detaches; retries while torusd is unreachable (restarting), up to a minute. */
export async function detachDevice(device: string, socketPath: string, retryMs = DETACH_RETRY_MS): Promise<void> {
  const client = new AttachClient(socketPath);
  const deadline = Date.now() + retryMs;
  for (;;) {
    try {
      await client.detach(device);
      return;
    } catch (err) {
      if (!(err instanceof TorusError && err.code === 'TORUS_ERR_ATTACH_DAEMON_UNREACHABLE') || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

export function formatAttachments(list: AttachmentInfo[]): string {
  const rows = [['DEVICE', 'VOLUME', 'MODE', 'KERNEL', 'STATE', 'TOKEN', 'RECONNECTS', 'DETAIL']];
  for (const a of list) rows.push([a.device, a.volume, a.mode, a.kernel, a.state, String(a.lockToken ?? '-'), String(a.reconnects), a.detail ?? '']);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}
