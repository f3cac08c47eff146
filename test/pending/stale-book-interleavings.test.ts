import { writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { StaleRecord } from '../../src/model/records.js';
import { SeededRandom } from '../../src/util/random.js';
import { staleBookSetup } from '../helpers/stale-book-fixture.js';

/**
 * PENDING, NOT YET DIAGNOSED (2026-12-07, end of stop 54). Kept out of the
 * default run (test/pending/vitest.config.ts); it fails within the first
 * 30 seeds. What is known:
 * - The harness is not deterministic yet: the memory twin answers on the
 *   system clock's timers and the test lets one event-loop turn pass per
 *   step, so the same seed can interleave differently from run to run
 *   (adding an await to one seed changed which seed failed first). It
 *   should drive the fixture on a manual clock and settle deterministically.
 * - With only record, clear, unsure and cover steps (no narrowing) 150
 *   seeds pass; the failures need narrowings.
 * - One mechanism was understood and is fixed (src/replication/stale-book.ts,
 *   applyNarrowNow; a case in test/unit/stale-book-narrow.test.ts): an
 *   unsure record made while the peer's whole-volume record was durable
 *   (`recordUnsure` returns at once: 'all' covers it) never reached etcd
 *   on its own, and a narrowing did not carry memory's unsure blocks:
 *   once it landed, etcd trusted the peer for a block memory held unsure.
 *   The narrowed record now keeps them (as stale).
 * - Others remain, among them the property that matters most: a cover of
 *   an owner left out as stale that waits for nothing while etcd does not
 *   name the block (seed 22 or 28 in the runs seen).
 * The test's model may also allow sequences no coordinator makes (clears
 * of blocks no learning found current, narrowing plans unrelated to any
 * listing): shrink a failing seed (SB_DUMP=/tmp/steps.txt writes its
 * steps) and check it against what the coordinator does before calling it
 * a bug.
 *
 * StaleBook alone, under random interleavings: its memory changes at once
 * while its etcd writes queue one behind another, and the bugs it had
 * (seeds 2124, 60697, 2906 and 1580 of the whole-cluster simulation) were
 * each a moment where the two disagreed. Here every etcd write is held
 * until the test lets it through, so records, clears, narrowings and
 * covers of skipped owners land in every order a seed picks (a
 * whole-volume record only at the start, as a coordinator makes one only
 * as it opens the volume). Two
 * properties, checked from each seed:
 * - a change that left an owner out as stale (it was stale in memory when
 *   the change was planned) finds etcd naming the block for it once
 *   coverSkipped has nothing left to wait for (or has resolved): what the
 *   coordinator needs before it acknowledges;
 * - once every write has landed, memory names for each peer exactly the
 *   blocks etcd names (none of etcd's writes fail here).
 */

const PEERS = ['peer-a', 'peer-b'] as const;
const BLOCKS = 12;
const STEPS = 160;
const SEEDS = 150;

function names(r: StaleRecord | null, i: number): boolean {
  if (r === null) return false;
  const inRanges = (rs: readonly (readonly [number, number])[] | undefined) => (rs ?? []).some(([s, e]) => i >= s && i < e);
  return r.all || inRanges(r.ranges) || inRanges(r.unsure);
}

describe('StaleBook under random interleavings of its etcd writes', () => {
  const setup = staleBookSetup(async () => undefined);

  it(`keeps memory and etcd agreeing, and a skipped owner recorded before a change is acknowledged (${SEEDS} seeds)`, async () => {
    for (let seed = 1; seed <= SEEDS; seed++) {
      const { md, lock, book, recordOf } = await setup();
      const r = new SeededRandom(seed);
      const held: (() => void)[] = [];
      const hold = <A extends unknown[]>(inner: (...a: A) => Promise<void>) => async (...a: A): Promise<void> => {
        await new Promise<void>((res) => held.push(res));
        await inner(...a);
      };
      md.addStale = hold(md.addStale.bind(md));
      md.removeStale = hold(md.removeStale.bind(md));
      md.narrowStale = hold(md.narrowStale.bind(md));
      // The memory twin answers on a macrotask: a turn of the event loop lets a released write land.
      const settle = () => new Promise<void>((res) => setImmediate(res));
      const failures: string[] = [];
      /** Book calls not settled yet: at rest only once there are none. */
      let outstanding = 0;
      const quiet = (p: Promise<unknown>) => {
        outstanding++;
        void p.catch((err: unknown) => failures.push(`seed ${seed}: ${String(err)}`)).finally(() => outstanding--);
      };
      /** Owners a change left out as stale, waiting for its cover. */
      const planned: { peer: string; block: number }[] = [];
      const covered = async (peer: string, block: number, when: string) => {
        const rec = await recordOf(peer);
        if (!names(rec, block)) failures.push(`seed ${seed}: ${when}: etcd does not name block ${block} for ${peer} (${JSON.stringify(rec)})`);
      };
      const log: string[] = [];
      // A whole-volume record is made only as a coordinator opens the
      // volume (peers that missed its fencing token after an expiry), before
      // any background pass could narrow one: each peer has it or not.
      for (const peer of PEERS) {
        if (r.int(3) === 0) continue;
        log.push(`record ${peer} all`);
        quiet(book.record(peer, 'all'));
        while (held.length > 0) {
          held.shift()!();
          await settle();
        }
      }
      for (let step = 0; step < STEPS && failures.length === 0; step++) {
        const peer = PEERS[r.int(PEERS.length)]!;
        const block = r.int(BLOCKS);
        const pick = r.int(100);
        if (pick < 22) {
          log.push(`record ${peer} ${block}`);
          quiet(book.record(peer, [block]));
        } else if (pick < 28) {
          log.push(`unsure ${peer} ${block}`);
          quiet(book.recordUnsure(peer, [block]));
        } else if (pick < 40) {
          log.push(`clear ${peer} ${block}`);
          quiet(book.clear(peer, [block], lock.token));
        } else if (pick < 46) {
          const keep = Array.from({ length: BLOCKS }, (_, i) => i).filter(() => r.int(3) === 0);
          log.push(`narrow ${peer} ${JSON.stringify(keep)}`);
          quiet(book.narrow(peer, keep, lock.token));
        } else if (pick < 56) {
          if (book.isStale(peer, block)) {
            log.push(`plan ${peer} ${block}`);
            planned.push({ peer, block });
          }
        } else if (pick < 66 && planned.length > 0) {
          const { peer: p, block: b } = planned.splice(r.int(planned.length), 1)[0]!;
          log.push(`cover ${p} ${b}`);
          const cover = book.coverSkipped([p], b);
          if (cover === null) await covered(p, b, `cover of ${p} ${b} waited for nothing`);
          else quiet(cover.then(() => covered(p, b, `cover of ${p} ${b} resolved`)));
        } else if (held.length > 0) {
          log.push('land one');
          held.shift()!();
        }
        await settle();
      }
      // Everything lands; then memory must say what etcd says.
      // (A write lands some turns after its release, and the next one
      // queued starts after it: at rest once every book call has settled.)
      for (let k = 0; k < 20_000 && (outstanding > 0 || held.length > 0); k++) {
        if (held.length > 0) held.shift()!();
        await settle();
      }
      expect(outstanding, `seed ${seed}: book calls still unsettled`).toBe(0);
      expect(held.length, `seed ${seed}: writes still held`).toBe(0);
      for (const peer of PEERS) {
        const rec = await recordOf(peer);
        for (let i = 0; i < BLOCKS; i++) {
          if (book.isStale(peer, i) !== names(rec, i)) failures.push(`seed ${seed}: at rest, memory says ${book.isStale(peer, i) ? 'stale' : 'trusted'} for ${peer} block ${i}, etcd ${JSON.stringify(rec)}`);
        }
      }
      if (failures.length > 0 && process.env.SB_DUMP) writeFileSync(process.env.SB_DUMP, log.join("\n"));
      expect(failures, `${failures.join('\n')}\nsteps: ${log.join(', ')}`).toEqual([]);
    }
  }, 120_000);
});
