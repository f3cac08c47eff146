import { describe, expect, it } from 'vitest';
import { GroupRun } from '../../src/util/group-run.js';

/** A job whose runs finish when the test says, counting how many run at once. */
function heldJob() {
  const runs: { finish: () => void; fail: (err: Error) => void }[] = [];
  let now = 0;
  let most = 0;
  const job = () =>
    new Promise<void>((resolve, reject) => {
      now++;
      most = Math.max(most, now);
      runs.push({ finish: () => (now--, resolve()), fail: (err) => (now--, reject(err)) });
    });
  return { job, runs, most: () => most };
}

const turns = async (n = 10) => {
  for (let i = 0; i < n; i++) await Promise.resolve();
};

describe('GroupRun', () => {
  it('answers a call made while a run is in progress with the next run, which every call meanwhile shares', async () => {
    const h = heldJob();
    const g = new GroupRun(h.job);
    const first = g.run();
    const second = g.run();
    const third = g.run();
    expect(second).toBe(third);
    expect(h.runs).toHaveLength(1);
    let secondDone = false;
    void second.then(() => (secondDone = true));
    h.runs[0]!.finish();
    await first;
    await turns();
    expect(h.runs).toHaveLength(2);
    expect(secondDone).toBe(false);
    h.runs[1]!.finish();
    await second;
    expect(h.most()).toBe(1);
  });

  it('a call in the turns between one run and the queued one joins the queued one, never a run beside it', async () => {
    const h = heldJob();
    const g = new GroupRun(h.job);
    const first = g.run();
    const queued = g.run();
    // Called as the first run settles, before the queued one has started.
    const late = first.then(() => g.run());
    h.runs[0]!.finish();
    expect(await Promise.race([late, turns(20).then(() => 'not settled')])).toBe('not settled');
    expect(h.runs).toHaveLength(2);
    h.runs[1]!.finish();
    await Promise.all([queued, late]);
    expect(h.most()).toBe(1);
    expect(h.runs).toHaveLength(2);
  });

  it('a failed run fails its callers; the run queued behind it still runs', async () => {
    const h = heldJob();
    const g = new GroupRun(h.job);
    const first = g.run();
    const second = g.run();
    h.runs[0]!.fail(new Error('sync failed'));
    await expect(first).rejects.toThrow('sync failed');
    await turns();
    expect(h.runs).toHaveLength(2);
    h.runs[1]!.finish();
    await expect(second).resolves.toBeUndefined();
    expect(g.current).toBeNull();
  });
});
