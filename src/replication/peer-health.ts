import type { Clock } from '../util/clock.js';

/**
 * Which peers a coordinator sends changes to. A peer that failed a request
 * (timed out, refused the connection, dropped it) is skipped until a probe
 * succeeds, so a dead or frozen peer costs one replica timeout, not one per
 * write: the writes it misses are recorded stale at once instead
 * (docs/replication.md, "The write path"). A peer with no record in etcd is
 * DOWN and skipped as well.
 */
export class PeerHealth {
  /** Peers that failed, with the monotonic time of their last failure. */
  private readonly failing = new Map<string, number>();
  private down = new Set<string>();

  constructor(private readonly clock: Clock) {}

  usable(uuid: string): boolean {
    return !this.down.has(uuid) && !this.failing.has(uuid);
  }

  isFailing(uuid: string): boolean {
    return this.failing.has(uuid);
  }

  isDown(uuid: string): boolean {
    return this.down.has(uuid);
  }

  /** Ring members without a live peer record. */
  setDown(uuids: Iterable<string>): void {
    this.down = new Set(uuids);
  }

  failed(uuid: string): void {
    this.failing.set(uuid, this.clock.monotonic());
  }

  succeeded(uuid: string): void {
    this.failing.delete(uuid);
  }

  /** Peers to probe now. */
  failingPeers(): string[] {
    return [...this.failing.keys()];
  }
}
