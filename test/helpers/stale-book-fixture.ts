import pino from 'pino';
import { afterEach } from 'vitest';
import type { MetadataSession } from '../../src/metadata/metadata-service.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import type { StaleRecord } from '../../src/model/records.js';
import { StaleBook } from '../../src/replication/stale-book.js';
import { type Clock, systemClock } from '../../src/util/clock.js';

const MiB = 1024 * 1024;

/**
 * A coordinator's StaleBook over the memory twin: a 64 MiB volume of 1 MiB
 * blocks, locked as its coordinator (the token fences the book's removals).
 * `close()` ends the session; tests call it after each case. Both the
 * book and the twin run on `clock` (a manual one makes the whole fixture
 * deterministic: nothing then waits on a real timer).
 */
export async function staleBookFixture(clock: Clock = systemClock) {
  const md = new MemoryMetadata({ clock });
  await md.initCluster({ blockSize: MiB, replication: 2 }, { force: false });
  const vol = await md.createVolume('pad', 64 * MiB);
  const session: MetadataSession = await md.openSession({ ttlSeconds: 10 });
  const lock = await session.lockVolume('pad', 'coordinator');
  const book = new StaleBook(vol.id, md, clock, pino({ level: 'silent' }), () => lock.token);
  /** The peer's record as etcd holds it now, or null. */
  const recordOf = async (peer: string): Promise<StaleRecord | null> => (await md.getStale(vol.id)).find((r) => r.peer === peer) ?? null;
  return { md, vol, lock, book, recordOf, close: () => session.close().catch(() => undefined) };
}

type StaleBookFixture = Awaited<ReturnType<typeof staleBookFixture>>;

/**
 * For a describe block: a `setup()` that makes a fixture and runs
 * `prepare` on it; every fixture's session is closed after each case.
 */
export function staleBookSetup(prepare: (f: StaleBookFixture) => Promise<unknown>): () => Promise<StaleBookFixture> {
  const closes: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const close of closes.splice(0)) await close();
  });
  return async () => {
    const f = await staleBookFixture();
    closes.push(f.close);
    await prepare(f);
    return f;
  };
}
