import { KEYS } from './keys.js';

/**
 * Locks an earlier run of this process left on a lease that this run
 * resumed (torusd keeps its lease across a restart when kernel attachments
 * hold volume locks on it; README, "Kernel attach").
 *
 * The earlier run may have held more than its attachments' locks on that
 * lease: the writer lock of a volume an NBD client had open, a maintenance
 * lock of a pass under way, a reader key, or an unlock that etcd did not
 * answer while it stopped. Nothing in this run holds those, and the lease
 * lives on for as long as this run keeps it alive, so each would keep
 * every other writer (or maintainer) out of its volume until torusd stops
 * with no attachment left: a ring transition waiting for the volume to
 * move would never end.
 *
 * A lock this run holds was written by this run (taken, or adopted and
 * renewed, which writes the key again), so it was changed after the
 * revision at which the lease was resumed. Every lock key on the lease not
 * changed since is the earlier run's and nothing holds it: it is let go by
 * a plain delete, guarded by its mod revision. As for a lock whose holder
 * died, the volume's next holder then counts the last token as expired
 * (docs/replication.md, "Fencing"), which costs a catch-up, never a change.
 */

/** The key prefixes of every kind of volume lock (writer, maintainer, reader). */
const LOCK_PREFIXES: readonly string[] = [KEYS.volumeLocksPrefix, KEYS.volumeMaintPrefix, KEYS.volumeReadersPrefix];

/** Lock keys scanned at most per prefix: more than any cluster's volumes and readers. */
export const LOCK_KEYS_SCANNED_MAX = 100_000;

export interface LockKeySeen {
  readonly key: string;
  /** The lease the key is attached to, as a decimal string ('0' or null: none). */
  readonly lease: string | null;
  readonly modRevision: bigint;
}

/** Of `seen`, the keys the earlier run left on `leaseId`: on it, and not changed after `resumedAt`. */
export function locksLeftByEarlierRun<T extends LockKeySeen>(seen: readonly T[], leaseId: string, resumedAt: bigint): T[] {
  return seen.filter((kv) => kv.lease === leaseId && kv.modRevision <= resumedAt);
}

/** How a session reads and deletes lock keys (etcd, or the in-memory twin). */
export interface LockKeyAccess<T extends LockKeySeen> {
  /** The keys under `prefix`. */
  list(prefix: string): Promise<T[]>;
  /** Deletes `kv.key` if it is still on the lease at `kv.modRevision`; true when it did. */
  letGo(kv: T): Promise<boolean>;
}

/** A resumed session's look for the earlier run's locks: asked for once, made again until one succeeds. */
export class EarlierRunLocks {
  private pending = false;

  constructor(
    private readonly leaseId: string,
    /** The revision at which the lease was resumed, before this run wrote anything under it. */
    private readonly resumedAt: bigint,
  ) {}

  /** Asked for and not done yet (etcd did not answer): the session's next reclaim makes it again. */
  get wanted(): boolean {
    return this.pending;
  }

  /** Lets go of every lock key the earlier run left on the lease; returns how many it deleted. */
  async release<T extends LockKeySeen>(access: LockKeyAccess<T>): Promise<number> {
    this.pending = true;
    let released = 0;
    for (const prefix of LOCK_PREFIXES) {
      for (const kv of locksLeftByEarlierRun(await access.list(prefix), this.leaseId, this.resumedAt)) {
        if (await access.letGo(kv)) released++;
      }
    }
    this.pending = false;
    return released;
  }
}
