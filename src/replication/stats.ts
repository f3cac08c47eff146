/**
 * Counters of the replication layer, kept as plain numbers by the node and
 * read by /metrics at scrape time (src/http/metrics.ts).
 */
export class ReplicationStats {
  /** Changes acknowledged with some owners recorded stale instead. */
  degradedChanges = 0;
  /** Change attempts that could not reach minReplicas (not acknowledged; a first attempt sent again counts here too). */
  failedChanges = 0;
  /** Changes sent again once the owners that refused them until caught up were caught up. */
  retriedChanges = 0;
  /** Blocks recorded stale for an owner. */
  staleRecorded = 0;
  /** Blocks copied or confirmed for a peer that had missed changes. */
  caughtUp = 0;
  /** Blocks brought to their new owners in ring transitions. */
  moved = 0;
  /** Copies replaced after a failed checksum, a read that found them behind, or a scrub. */
  repaired = 0;
  /** Blocks a scrub compared. */
  scrubbed = 0;
  /** Blocks whose copies differ at one version (a bug or corruption the CRCs did not catch). */
  divergent = 0;
}
