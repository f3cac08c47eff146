import { describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { FenceTable } from '../../src/replication/fence-table.js';
import { SeededRandom } from '../../src/util/random.js';

/**
 * FenceTable: the one place a peer checks fencing tokens. Its promise
 * (docs/replication.md, "Fencing"): a change is let through only once its
 * token is the newest known for the volume and durable, so a restart can
 * never forget it and let an older writer back in; once a save has failed,
 * nothing is let through until restart. Saves are grouped, so the
 * interleavings of learns, admits and saves that land or fail are where it
 * could go wrong: each save here is held until a step lets it land or fail.
 */

interface HeldSave {
  readonly fences: ReadonlyMap<number, number>;
  land(): void;
  fail(): void;
}

function heldPersistence(initial: ReadonlyMap<number, number> = new Map()) {
  /** What a restart would load: the last save that landed. */
  let durable = new Map(initial);
  const held: HeldSave[] = [];
  let saves = 0;
  return {
    held,
    durable: () => durable,
    saves: () => saves,
    persistence: {
      load: async () => new Map(durable),
      save: (fences: ReadonlyMap<number, number>) => {
        saves++;
        return new Promise<void>((resolve, reject) => {
          held.push({
            fences: new Map(fences),
            land: () => {
              durable = new Map(fences);
              resolve();
            },
            fail: () => reject(new Error('EIO: injected')),
          });
        });
      },
    },
  };
}

const turn = () => new Promise<void>((r) => setImmediate(r));

describe('FenceTable', () => {
  it('refuses an older token at once, lets the newest through once it is durable, and groups the saves of tokens learnt meanwhile', async () => {
    const p = heldPersistence(new Map([[1, 5]]));
    const table = await FenceTable.open(p.persistence);
    expect(table.current(1)).toBe(5);
    const old = await table.admit(1, 4).catch((e: unknown) => e);
    expect(isTorusError(old, 'TORUS_ERR_VOLUME_FENCED')).toBe(true);
    // The known token goes through at once: nothing is being saved.
    await table.admit(1, 5);
    let admitted = false;
    const newer = table.admit(1, 7).then(() => void (admitted = true));
    await turn();
    expect(admitted, 'not before token 7 is durable').toBe(false);
    await expect(table.admit(1, 6)).rejects.toSatisfy((e: unknown) => isTorusError(e, 'TORUS_ERR_VOLUME_FENCED'));
    // Learnt while the first save runs: one more save for both.
    const other = table.admit(2, 1);
    const third = table.admit(3, 9);
    await turn();
    expect(p.held.map((h) => [...h.fences])).toEqual([[[1, 7]]]);
    p.held.shift()!.land();
    await newer;
    expect(admitted).toBe(true);
    await turn();
    expect(p.held.map((h) => [...h.fences.entries()].sort())).toEqual([[[1, 7], [2, 1], [3, 9]]]);
    p.held.shift()!.land();
    await Promise.all([other, third]);
    expect(p.saves()).toBe(2);
    expect([...p.durable()].sort()).toEqual([[1, 7], [2, 1], [3, 9]]);
  });

  it('after a failed save refuses every change, known tokens included, until restart; the restart loads what last landed', async () => {
    const p = heldPersistence();
    const table = await FenceTable.open(p.persistence);
    const a = table.admit(1, 3).catch((e: unknown) => e);
    await turn();
    p.held.shift()!.fail();
    expect(isTorusError(await a, 'TORUS_ERR_STORE_IO')).toBe(true);
    for (const [v, t] of [[1, 3], [1, 4], [2, 1]] as const) {
      expect(isTorusError(await table.admit(v, t).catch((e: unknown) => e), 'TORUS_ERR_STORE_IO'), `admit(${v}, ${t})`).toBe(true);
    }
    expect(p.held).toEqual([]);
    const again = await FenceTable.open(p.persistence);
    expect(again.current(1)).toBe(0);
  });

  it('under random interleavings, lets a change through only with the newest token, durable, and never after a failed save (3000 seeds)', async () => {
    const failures: string[] = [];
    for (let seed = 1; seed <= 3000 && failures.length === 0; seed++) {
      const r = new SeededRandom(seed);
      const p = heldPersistence();
      const table = await FenceTable.open(p.persistence);
      /** The newest token asked for per volume so far. */
      const newest = new Map<number, number>();
      /** The same, asked before any save failed (what the table must never go below). */
      const registered = new Map<number, number>();
      let failedSave = false;
      const log: string[] = [];
      const pending: Promise<void>[] = [];
      for (let step = 0; step < 60; step++) {
        const pick = r.int(10);
        if (pick < 5) {
          const v = 1 + r.int(3);
          const t = r.int(6);
          const learnOnly = r.int(4) === 0;
          const newestThen = Math.max(newest.get(v) ?? 0, t);
          newest.set(v, newestThen);
          if (!failedSave) registered.set(v, Math.max(registered.get(v) ?? 0, t));
          const failedBefore = failedSave;
          const what = `${learnOnly ? 'learn' : 'admit'}(${v}, ${t})`;
          log.push(what);
          const call = learnOnly ? table.learn(v, t) : table.admit(v, t);
          pending.push(
            call.then(
              () => {
                // Let through: the token (or a newer one) is durable, and it was not older than what was known.
                const durable = p.durable().get(v) ?? 0;
                if (durable < t) failures.push(`seed ${seed}: ${what} resolved with ${durable} durable`);
                if (failedBefore) failures.push(`seed ${seed}: ${what} resolved after a failed save`);
              },
              (err: unknown) => {
                if (isTorusError(err, 'TORUS_ERR_VOLUME_FENCED')) {
                  if (learnOnly || t >= newestThen) failures.push(`seed ${seed}: ${what} fenced though newest`);
                } else if (!isTorusError(err, 'TORUS_ERR_STORE_IO')) failures.push(`seed ${seed}: ${String(err)}`);
              },
            ),
          );
        } else if (p.held.length > 0) {
          const save = p.held.shift()!;
          if (pick === 9) {
            log.push('fail a save');
            failedSave = true;
            save.fail();
          } else {
            log.push('land a save');
            save.land();
          }
        }
        await turn();
      }
      for (let k = 0; k < 200 && p.held.length > 0; k++) {
        p.held.shift()!.land();
        await turn();
      }
      await Promise.all(pending);
      // At rest the table knows the newest token asked for each volume, and
      // unless a save failed, the disk holds it too.
      for (const [v, t] of registered) {
        if (table.current(v) < t) failures.push(`seed ${seed}: the table forgot token ${t} of volume ${v}`);
        if (!failedSave && (p.durable().get(v) ?? 0) < t) failures.push(`seed ${seed}: token ${t} of volume ${v} never reached the disk`);
      }
      if (failures.length > 0) failures.push(`steps: ${log.join(', ')}`);
    }
    expect(failures).toEqual([]);
  });
});
