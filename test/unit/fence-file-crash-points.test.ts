/**
 * The fencing-token file (store/fence-file.ts) crashed at every kind of
 * point, on the crash-point test's model disk (test/helpers/crash-disk.ts):
 * saves of growing tokens, several in flight, calls finished in a drawn
 * order, then a crash at a drawn call and a load of what it left. A peer
 * that forgot a token it had saved would let an older writer's changes
 * through after a restart (docs/replication.md, "Fencing"), so the load
 * must never fail and must give every volume at least the token of every
 * save that resolved, and never a token no save asked for.
 */
import { expect, it } from 'vitest';
import { FileFencePersistence } from '../../src/store/fence-file.js';
import { SeededRandom } from '../../src/util/random.js';
import { CrashDisk } from '../helpers/crash-disk.js';

const SEEDS = Number(process.env.FENCE_CRASH_SEEDS ?? 1000);
const DIR = '/data/store';

/** Saves resolved before their crash, over all seeds: the test must reach past the first ones. */
let resolvedSaves = 0;

async function runSeed(seed: number): Promise<string | null> {
  const r = new SeededRandom(seed);
  const disk = new CrashDisk({ dirs: new Set(['/data']), files: new Map() });
  const file = new FileFencePersistence(DIR, disk);
  const table = new Map<number, number>();
  /** Per volume: the highest token a resolved save held, and the highest any save held. */
  const resolved = new Map<number, number>();
  const asked = new Map<number, number>();
  const saves = 1 + r.int(8);
  const crashAt = r.int(saves * 8);
  let inFlight = 0;
  for (let k = 0; k < saves && disk.steps < crashAt; k++) {
    const volume = 1 + r.int(3);
    table.set(volume, (table.get(volume) ?? 0) + 1 + r.int(3));
    const snapshot = new Map(table);
    for (const [v, t] of snapshot) asked.set(v, Math.max(asked.get(v) ?? 0, t));
    inFlight++;
    void file.save(snapshot).then(
      () => {
        inFlight--;
        resolvedSaves++;
        for (const [v, t] of snapshot) resolved.set(v, Math.max(resolved.get(v) ?? 0, t));
      },
      () => inFlight--,
    );
    // Let some of it run before the next save is asked for.
    const until = Math.min(crashAt, disk.steps + r.int(6));
    await disk.runUntil(r, () => disk.steps >= until);
  }
  await disk.runUntil(r, () => inFlight === 0, crashAt);
  const image = disk.crash(r);
  const after = new CrashDisk(image);
  const loading = new FileFencePersistence(DIR, after).load();
  let loaded: Map<number, number> | string = 'not loaded';
  loading.then(
    (m) => (loaded = m),
    (err: unknown) => (loaded = `load failed: ${(err as Error).message}`),
  );
  await after.runUntil(r, () => loaded !== 'not loaded');
  if (typeof loaded === 'string') return loaded;
  const got: Map<number, number> = loaded;
  for (const [v, t] of resolved) if ((got.get(v) ?? 0) < t) return `volume ${v}: a resolved save held token ${t}, the load gave ${got.get(v) ?? 'none'}`;
  for (const [v, t] of got) if (t > (asked.get(v) ?? 0)) return `volume ${v}: the load gave token ${t}, no save asked for more than ${asked.get(v) ?? 'none'}`;
  return null;
}

it(`fencing tokens survive a crash at any point: every resolved save's tokens load back, none invented (seeds 1-${SEEDS})`, async () => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    const failure = await runSeed(seed);
    if (failure !== null) expect.fail(`seed ${seed}: ${failure}`);
  }
  expect(resolvedSaves).toBeGreaterThan(SEEDS);
}, 120_000);
