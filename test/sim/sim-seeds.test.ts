/**
 * The whole-cluster simulation against the real code: seeds 1..200, each
 * at least 1,000 requests with faults (crashes, partitions, message loss,
 * freezes past the lease, ring changes, full disks, corrupt pages); the
 * same seeds with old writers paused as suspended VMs (--suspend), with
 * read-only opens reading beside the writers (--readers), with etcd calls
 * answered out of order (--etcd-delays), and with half the crashes made
 * orderly stops (--stops).
 *
 * Every seed must pass except the ones listed in KNOWN_FAILING, each a
 * product bug (or, for `bug`, a harness limit) still open under issue 5,
 * with the guarantee it breaks. The list only shrinks: a listed seed that
 * passes fails this test too, so the list is kept exact. A seed is a pure
 * function of its number and the code, so this is not flaky: a change in
 * outcome is a change in behaviour. `npm run sim -- --seed N` replays one.
 *
 * Nothing here depends on wall-clock time: how long the seeds took is
 * printed, never asserted.
 */
import { describe, expect, it } from 'vitest';
import { runSeedsInChildren } from './parallel.js';
import { OPS_DEFAULT } from './run-seed.js';

const SEEDS = 200;
const JOBS = 2;

/**
 * Seeds that fail today, each with the guarantee it breaks: a seed that
 * fails now is a regression (or a new bug a change of path uncovered) to
 * fix, or to list here with its diagnosis. Listed seeds past SEEDS run too
 * (KNOWN_BEYOND), so a fix shows as a listed seed that passes.
 * None today. 63105 was listed until 2026-12-05 (G1/G4): bit rot on one
 * page of a block's copy, then a whole-block write to that copy, then a
 * power loss before the write reached the disk. The disk store's repair
 * after an unclean stop recomputes the CRCs of every page of a block the
 * dirty log names, so the rotted page came back with a valid CRC, and
 * adoption installed it everywhere. Recording the owners a failed change
 * missed (seed 14768) changed that seed's run, and it passes now; the
 * store's limit it showed stands (README, "Not yet": a store redesign).
 */
const KNOWN_FAILING: ReadonlyMap<number, string> = new Map<number, string>();
const KNOWN_BEYOND: readonly number[] = [];

/**
 * Seeds past 200 that once failed, each for a bug since fixed: they run
 * too, so the fix stays in (a few seconds in all).
 * - 377, 575: a move took a block its listing missed for absent, though a
 *   write had created it on the old owners meanwhile.
 * - 205, 302: a new client was handed an open whose lock went with the
 *   lease and that another holder had taken since.
 * - 316: a crashed writer's suspect copy was adopted over the other
 *   owner's newer copy, recorded stale for an unflushed change only.
 * - 225, 289, 291, 311: fixed by the changes above.
 * - 240: a change acknowledged early (write level one) by a new owner
 *   only, lost when the ring change was called off.
 * - 397: a torusd whose new etcd session was lost during the reconnect
 *   kept the dead session for good.
 * - 495: a suspect copy adopted while an owner recorded stale, holding a
 *   newer copy, did not answer.
 * - 442, 506: the checker (zeroes a store holds told nothing; a writer at
 *   level one that lost its lock may lose what it did not flush).
 * With the background loop backing off while idle (docs/replication.md,
 * "Maintenance"; seeds 18 and 180 among the first 200 too):
 * - 852: a change that failed for want of a stale record was read back,
 *   and after a takeover the owner that missed it was trusted;
 * - 794, 874: a write failed below minReplicas with every peer up: the
 *   owners behind a failed change's copy were not caught up first;
 * - 556, 847: a close during a relock kept the new lock for good;
 * - 553: the checker (a writer at level local fenced for good may lose
 *   what it did not flush).
 * - 1216: an adoption skipped the newest suspect copy because its peer did
 *   not answer for a moment, and took an older one.
 * - 1375: a ring change back to the placement being left called a moving
 *   transition off at once, and the only current copy, on an owner of the
 *   replaced target, was dropped as a leftover.
 * - 725: a flush passed although an owner a change missed was recorded
 *   stale in memory only (etcd refused it).
 * - 1988: a trim of a block learnt as absent was skipped while an owner
 *   unsure for it held a failed change, which was later trusted again.
 * - 1968: the checker (a writer at level one whose node died may lose what
 *   it did not flush).
 * - 2351: with garbage collection keeping leftovers until the owners'
 *   copies check out, a leftover newer than the trusted copies sat on a
 *   peer a later ring made an owner again, and the move refused to
 *   overwrite it for good.
 * - 36515: a rescue that could adopt no suspect copy (the one left had
 *   lost the block's creation, and its peer, back without etcd, refused
 *   to drop it) took the other owner's older copy with no loss reported;
 *   the next FLUSH passed without the acknowledged change.
 * - 37957: a writer frozen through a takeover learnt, once thawed, a block
 *   whose copies were all suspect, one made under the new writer's token,
 *   and its adoption asserted (a version older than the one it builds on)
 *   instead of finding itself fenced off.
 * - 39315: a change no owner confirmed (both owners recorded unsure)
 *   landed on one; a read while the other was silent returned it, and the
 *   next writer, with the first owner silent, trusted the other again and
 *   read its older copy.
 * - 42271: every owner of a block recorded stale and behind what a read
 *   returned (taken from an old owner while the ring moved): the block
 *   stayed unavailable with every peer up; the old owner kept the copy.
 * - 39321: the checker (a writer at level one whose close failed let its
 *   lock go as if it expired, so what it did not flush may be lost: a trim
 *   acknowledged early on one owner, replaced by the next writer's
 *   catch-up).
 * - 2124: a whole-volume stale record was narrowed from listings taken
 *   while a change that skipped the peer was on its way to the others, so
 *   the peer was trusted again for a block it never got that change of.
 * - 3757: a lock call whose answer an etcd outage lost had taken the lock;
 *   nothing in the process held it, and no peer could open the volume
 *   until that process stopped (3914 too).
 * - 4470: the checker (a writer at level one taken over may lose what it
 *   did not flush, back to before a failed write that may never have
 *   landed, not only back to that write).
 * - 73608: the checker (a read in flight across a crash returned an
 *   acknowledged, unflushed change the crash then took from its only copy;
 *   seeing it narrowed the model past the crash, and the next writer's
 *   read of the older copy, after the loss was reported, was judged back
 *   in time).
 * - 77115: a failed trim that only the writer's own node took, as a
 *   carried owner while the ring moved, was read back; the rescue took
 *   only a former owner's data copies, so the block stayed unavailable.
 * - 78604: a whole-volume catch-up that could not narrow the record first
 *   cleared it at the end of its pass, though a write to a block it had
 *   already copied skipped the peer meanwhile: the next writer trusted the
 *   peer's older copy.
 * - 89579: a write that an old owner refused because the move had just
 *   found its copy rotten failed with every peer up (the old owners had to
 *   take every change): the owner is now caught up and the change sent
 *   again.
 */
const FIXED_BEYOND: readonly number[] = [205, 225, 240, 289, 291, 302, 311, 316, 377, 397, 442, 495, 506, 553, 556, 575, 725, 794, 847, 852, 874, 1216, 1375, 1968, 1988, 2124, 2351, 2600, 2623, 2705, 3757, 4470, 5413, 8994, 9034, 9639, 12805, 14982, 16297, 16677, 16773, 18022, 19399, 21919, 22201, 22496, 24435, 27155, 36515, 37957, 39315, 39321, 42271, 50071, 52648, 60191, 60697, 73608, 77115, 78604, 89579];

/**
 * Seeds past SEEDS that each once failed with --suspend, now fixed:
 * - 2906: a change that failed but landed on one owner skipped another as
 *   stale while that owner's whole-volume record was being narrowed from
 *   a plan made before the change; a read returned the change, the
 *   narrowing trusted the skipped owner again, and once the writer was
 *   gone the next one read its older copy.
 * - 45755: the checker (a node removed from the ring, suspended with its
 *   writer through a takeover, applied the writer's queued change to its
 *   own leftover on waking; no coordinator could tell it the new token,
 *   and nothing reads a leftover).
 * - 14768: a change failed when its writer could not re-read the ring an
 *   owner refused it for; that owner went silent, learning returned the
 *   other owner's copy of the failed change, and the next writer read the
 *   silent owner's older copy. The owners a failed change missed are now
 *   recorded, and learning waits for etcd to hold the records.
 */
const FIXED_BEYOND_SUSPEND: readonly number[] = [2906, 14768, 45755];

/**
 * Seeds past SEEDS that each once failed with --readers, now fixed:
 * - 429: a read-only open kept the stale records it read at open and only
 *   added to them; it trusted an owner etcd had since recorded stale, and
 *   read its older copy after a newer change was acknowledged.
 * - 7354: a flush found an owner had restarted and lost a change, but etcd
 *   refused its stale record; the flush threw before it counted the block
 *   short, and the next one acknowledged it with one durable copy.
 * - 25342: a read-only open compared only the owners that answered with a
 *   copy that was not suspect, and re-read the stale records only when one
 *   did not answer; the one owner that took a write had restarted without
 *   it (suspect), and the other owner's older copy, recorded stale after
 *   the reader last read etcd, was read as current.
 * - 29752: the harness (the client's reaction to a lost flush and the
 *   settle closed one handle together; the second close answered at once,
 *   while the first was still flushing, and was taken for an acknowledged
 *   flush; the first reported the loss, as it must).
 */
const FIXED_BEYOND_READERS: readonly number[] = [429, 7354, 25342, 29752];

/**
 * Seeds that each once failed with --readers --suspend, now fixed:
 * - 2940: the checker (a new owner of a block in a moving ring, suspended
 *   through a clean handover, took the old writer's queued move copy on
 *   waking; nothing reads that copy before the move is done, and the move
 *   compares versions).
 */
const FIXED_BEYOND_READERS_SUSPEND: readonly number[] = [2940];

/**
 * Seeds that each once failed with --etcd-delays (and --readers), now fixed:
 * - 884: a peer restarting during an etcd outage lost its new session while
 *   it joined; start() went on with it, failed at the peer record
 *   (TORUS_ERR_SESSION_LOST), and the peer never started (torusd would have
 *   exited). The reconnect the loss begins now finishes the join.
 */
const FIXED_BEYOND_ETCD_DELAYS_READERS: readonly number[] = [884];

/**
 * Seeds that each once failed with --stops (and other modes), now fixed:
 * - 1580 (with --readers --etcd-delays): a narrowing of a whole-volume
 *   stale record put back in memory a block a learning had cleared while
 *   it was on its way; the clear then took it out of etcd, and a write
 *   that left the peer out was acknowledged with no record naming it.
 */
const FIXED_BEYOND_STOPS_READERS_ETCD_DELAYS: readonly number[] = [1580];

describe('whole-cluster simulation against the real code', () => {
  it(`passes every one of ${SEEDS} seeds (and ${FIXED_BEYOND.length} fixed ones past them) but the ${KNOWN_FAILING.size} known failures, which still fail as listed`, async () => {
    const seeds = [...Array.from({ length: SEEDS }, (_, i) => i + 1), ...FIXED_BEYOND, ...KNOWN_BEYOND];
    const started = Date.now();
    const lines = await runSeedsInChildren(seeds, { jobs: JOBS });
    // A seed whose process died is a failure line too (parallel.ts): none vanishes.
    expect(lines.map((l) => l.seed)).toEqual(seeds);
    const unexpected = lines.filter((l) => !l.ok && !KNOWN_FAILING.has(l.seed)).map((l) => l.report);
    const nowPassing = lines.filter((l) => l.ok && KNOWN_FAILING.has(l.seed)).map((l) => l.seed);
    const changed = lines.filter((l) => !l.ok && KNOWN_FAILING.has(l.seed) && KNOWN_FAILING.get(l.seed) !== l.guarantee).map((l) => `${l.seed}: listed ${KNOWN_FAILING.get(l.seed)}, now ${l.guarantee}`);
    console.log(`${seeds.length} seeds in ${((Date.now() - started) / 1000).toFixed(1)} s on ${JOBS} processes: ${lines.filter((l) => l.ok).length} passed`);
    expect(unexpected, `seeds that passed before now fail:\n${unexpected.join('\n')}`).toEqual([]);
    expect(nowPassing, 'these listed seeds pass now: take them off KNOWN_FAILING').toEqual([]);
    expect(changed, 'these listed seeds fail differently now: look at them and update KNOWN_FAILING').toEqual([]);
    // A seed that passed ran its whole workload (a failure stops it early).
    expect(lines.filter((l) => l.ok && l.ops < OPS_DEFAULT).map((l) => l.seed), 'passing seeds that ran fewer requests than the minimum').toEqual([]);
  }, 30 * 60_000);

  it(`passes every one of ${SEEDS} seeds with old writers paused as suspended VMs (--suspend: guarantee 6 without trusting clocks), and ${FIXED_BEYOND_SUSPEND.length} fixed ones past them`, async () => {
    const seeds = [...Array.from({ length: SEEDS }, (_, i) => i + 1), ...FIXED_BEYOND_SUSPEND];
    const started = Date.now();
    const lines = await runSeedsInChildren(seeds, { jobs: JOBS, suspend: true });
    expect(lines.map((l) => l.seed)).toEqual(seeds);
    console.log(`${seeds.length} seeds with --suspend in ${((Date.now() - started) / 1000).toFixed(1)} s on ${JOBS} processes: ${lines.filter((l) => l.ok).length} passed`);
    const failed = lines.filter((l) => !l.ok).map((l) => l.report);
    expect(failed, `seeds that fail with --suspend:\n${failed.join('\n')}`).toEqual([]);
    expect(lines.filter((l) => l.ops < OPS_DEFAULT).map((l) => l.seed), 'seeds that ran fewer requests than the minimum').toEqual([]);
  }, 30 * 60_000);

  it(`passes every one of ${SEEDS} seeds with read-only opens reading beside the writers (--readers: what other processes see), and ${FIXED_BEYOND_READERS.length + FIXED_BEYOND_READERS_SUSPEND.length} fixed ones past them`, async () => {
    const seeds = [...Array.from({ length: SEEDS }, (_, i) => i + 1), ...FIXED_BEYOND_READERS];
    const started = Date.now();
    const lines = [
      ...(await runSeedsInChildren(seeds, { jobs: JOBS, readers: true })),
      ...(await runSeedsInChildren(FIXED_BEYOND_READERS_SUSPEND, { jobs: JOBS, readers: true, suspend: true })),
    ];
    expect(lines.map((l) => l.seed)).toEqual([...seeds, ...FIXED_BEYOND_READERS_SUSPEND]);
    console.log(`${lines.length} seeds with --readers in ${((Date.now() - started) / 1000).toFixed(1)} s on ${JOBS} processes: ${lines.filter((l) => l.ok).length} passed`);
    const failed = lines.filter((l) => !l.ok).map((l) => l.report);
    expect(failed, `seeds that fail with --readers:\n${failed.join('\n')}`).toEqual([]);
    expect(lines.filter((l) => l.ops < OPS_DEFAULT).map((l) => l.seed), 'seeds that ran fewer requests than the minimum').toEqual([]);
  }, 30 * 60_000);

  it(`passes every one of ${SEEDS} seeds with etcd calls served and answered out of order (--etcd-delays), and ${FIXED_BEYOND_ETCD_DELAYS_READERS.length} fixed one past them`, async () => {
    const seeds = Array.from({ length: SEEDS }, (_, i) => i + 1);
    const started = Date.now();
    const lines = [...(await runSeedsInChildren(seeds, { jobs: JOBS, etcdDelays: true })), ...(await runSeedsInChildren(FIXED_BEYOND_ETCD_DELAYS_READERS, { jobs: JOBS, etcdDelays: true, readers: true }))];
    expect(lines.map((l) => l.seed)).toEqual([...seeds, ...FIXED_BEYOND_ETCD_DELAYS_READERS]);
    console.log(`${seeds.length} seeds with --etcd-delays in ${((Date.now() - started) / 1000).toFixed(1)} s on ${JOBS} processes: ${lines.filter((l) => l.ok).length} passed`);
    const failed = lines.filter((l) => !l.ok).map((l) => l.report);
    expect(failed, `seeds that fail with --etcd-delays:\n${failed.join('\n')}`).toEqual([]);
    expect(lines.filter((l) => l.ops < OPS_DEFAULT).map((l) => l.seed), 'seeds that ran fewer requests than the minimum').toEqual([]);
  }, 30 * 60_000);

  it(`passes every one of ${SEEDS} seeds with half the crashes made orderly stops (--stops: clients let go, locks and lease released, then a restart), and ${FIXED_BEYOND_STOPS_READERS_ETCD_DELAYS.length} fixed one past them`, async () => {
    const seeds = Array.from({ length: SEEDS }, (_, i) => i + 1);
    const started = Date.now();
    const lines = [...(await runSeedsInChildren(seeds, { jobs: JOBS, stops: true })), ...(await runSeedsInChildren(FIXED_BEYOND_STOPS_READERS_ETCD_DELAYS, { jobs: JOBS, stops: true, readers: true, etcdDelays: true }))];
    expect(lines.map((l) => l.seed)).toEqual([...seeds, ...FIXED_BEYOND_STOPS_READERS_ETCD_DELAYS]);
    const stops = lines.reduce((n, l) => n + (l.faults?.['stop'] ?? 0), 0);
    console.log(`${seeds.length} seeds with --stops in ${((Date.now() - started) / 1000).toFixed(1)} s on ${JOBS} processes: ${lines.filter((l) => l.ok).length} passed, ${stops} orderly stops`);
    const failed = lines.filter((l) => !l.ok).map((l) => l.report);
    expect(failed, `seeds that fail with --stops:\n${failed.join('\n')}`).toEqual([]);
    expect(lines.filter((l) => l.ops < OPS_DEFAULT).map((l) => l.seed), 'seeds that ran fewer requests than the minimum').toEqual([]);
    // The mode did what it says: a seed plans about one extra crash in ten faults, half of them stops.
    expect(stops, 'orderly stops across the seeds').toBeGreaterThan(SEEDS / 4);
  }, 30 * 60_000);

  it(`passes every one of ${SEEDS} seeds with half the etcd outages and peer cuts made flaky windows (--etcd-flaky: calls fail unapplied or lose their answer, one at a time)`, async () => {
    const seeds = Array.from({ length: SEEDS }, (_, i) => i + 1);
    const started = Date.now();
    const lines = await runSeedsInChildren(seeds, { jobs: JOBS, etcdFlaky: true });
    expect(lines.map((l) => l.seed)).toEqual(seeds);
    const sum = (k: string) => lines.reduce((n, l) => n + (l.faults?.[k] ?? 0), 0);
    console.log(`${seeds.length} seeds with --etcd-flaky in ${((Date.now() - started) / 1000).toFixed(1)} s on ${JOBS} processes: ${lines.filter((l) => l.ok).length} passed, ${sum('flaky')} flaky windows, ${sum('flakyCallsFailed')} calls failed, ${sum('flakyCallsLost')} answers lost`);
    const failed = lines.filter((l) => !l.ok).map((l) => l.report);
    expect(failed, `seeds that fail with --etcd-flaky:\n${failed.join('\n')}`).toEqual([]);
    expect(lines.filter((l) => l.ops < OPS_DEFAULT).map((l) => l.seed), 'seeds that ran fewer requests than the minimum').toEqual([]);
    // The mode did what it says: windows happened, and calls in them failed both ways.
    expect(sum('flaky'), 'flaky windows across the seeds').toBeGreaterThan(SEEDS / 4);
    expect(sum('flakyCallsLost'), 'answers lost across the seeds').toBeGreaterThan(SEEDS);
  }, 30 * 60_000);
});
