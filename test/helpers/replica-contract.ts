/**
 * The ReplicaApi contract (src/model/replica-api.ts, docs/replication.md
 * "Versions" and "Fencing"): one suite run against the replica rules over
 * the in-memory twins, over the disk store with its fence file, and over
 * the wire through the peer protocol (targets: replica-targets.ts).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isTorusError } from '../../src/errors/torus-error.js';
import { blockRef, type BlockRef } from '../../src/model/block-ref.js';
import type { ChangeStamp, ReplicaApi, RequestContext } from '../../src/model/replica-api.js';
import { makeVersion, VERSION_ABSENT, type Version } from '../../src/model/version.js';

export interface ReplicaUnderTest {
  /** Changes on restart() (a new process, and a new connection to it). */
  readonly api: ReplicaApi;
  readonly blockSize: number;
  /** The ring version the replica's peer uses. */
  setRingVersion(v: number): void;
  setLive(live: boolean): void;
  /** The peer's process stops cleanly and starts again on the same store and fence persistence. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

const CTX: RequestContext = { ringVersion: 5 };
const T = 3; // the coordinator's token in most tests

function v(seq: number, token = T): Version {
  return makeVersion(token, seq);
}

function stamp(version: Version, prev: Version, token = T): ChangeStamp {
  return { token, version, prev };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isTorusError(err)) return err.code;
    throw err;
  }
  return 'OK';
}

export function replicaContract(name: string, make: () => Promise<ReplicaUnderTest>): void {
  describe(`ReplicaApi contract: ${name}`, () => {
    let r: ReplicaUnderTest;
    let api: ReplicaApi;
    let bs: number;
    let ref: BlockRef;
    const fill = (byte: number, n = bs) => Buffer.alloc(n, byte);

    beforeEach(async () => {
      r = await make();
      r.setRingVersion(5);
      r.setLive(true);
      api = r.api;
      bs = r.blockSize;
      ref = blockRef(7, 1, 3);
    });
    afterEach(async () => {
      await r.close();
    });

    it('reads an absent block as zeroes and says it is absent', async () => {
      const reply = await api.read(CTX, ref, 0, 4096);
      expect(reply.meta.state).toBe('absent');
      expect(reply.meta.version).toBe(VERSION_ABSENT);
      expect(reply.data.equals(Buffer.alloc(4096))).toBe(true);
    });

    it('applies a whole-block write and reports its version', async () => {
      await api.write(CTX, ref, 0, fill(0xaa), stamp(v(1), VERSION_ABSENT), { fua: false });
      const reply = await api.read(CTX, ref, 100, 50);
      expect(reply.meta).toMatchObject({ state: 'data', version: v(1), suspect: false });
      expect(reply.data.equals(fill(0xaa, 50))).toBe(true);
      const [meta] = await api.meta(CTX, [ref]);
      expect(meta!.digest).not.toBe(0);
    });

    it('applies partial writes in order when each builds on the last', async () => {
      await api.write(CTX, ref, 0, fill(1, 512), stamp(v(1), VERSION_ABSENT), { fua: false });
      // Pipelined: all sent before any answer, like a coordinator does.
      const n = 64;
      await Promise.all(
        Array.from({ length: n }, (_, i) => api.write(CTX, ref, 512 * ((i % 7) + 1), fill(i + 2, 512), stamp(v(i + 2), v(i + 1)), { fua: false })),
      );
      const [meta] = await api.meta(CTX, [ref]);
      expect(meta).toMatchObject({ state: 'data', version: v(n + 1), suspect: false });
      // The last write to each slot wins: slot s got writes i = s-1, s-1+7, ...
      for (let s = 1; s <= 7; s++) {
        let last = -1;
        for (let i = 0; i < n; i++) if ((i % 7) + 1 === s) last = i;
        const got = (await api.read(CTX, ref, 512 * s, 512)).data;
        expect(got.equals(fill(last + 2, 512))).toBe(true);
      }
    });

    it('refuses a partial write that does not build on the copy, and the block becomes suspect', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      expect(await code(api.write(CTX, ref, 0, fill(2, 512), stamp(v(3), v(2)), { fua: false }))).toBe('TORUS_ERR_REPLICA_STALE');
      const [meta] = await api.meta(CTX, [ref]);
      expect(meta!.suspect).toBe(true);
      expect(await code(api.read(CTX, ref, 0, 512))).toBe('TORUS_ERR_REPLICA_STALE');
    });

    it('refuses a partial write on top of an absent block unless it builds on absent', async () => {
      expect(await code(api.write(CTX, ref, 0, fill(2, 512), stamp(v(2), v(1)), { fua: false }))).toBe('TORUS_ERR_REPLICA_STALE');
      const other = blockRef(7, 1, 4);
      await api.write(CTX, other, 4096, fill(2, 512), stamp(v(1), VERSION_ABSENT), { fua: false });
      const reply = await api.read(CTX, other, 0, 8192);
      expect(reply.meta.version).toBe(v(1));
      expect(reply.data.subarray(0, 4096).equals(Buffer.alloc(4096))).toBe(true);
      expect(reply.data.subarray(4096, 4608).equals(fill(2, 512))).toBe(true);
    });

    it('takes a duplicate or an older change as done, changing nothing', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      await api.write(CTX, ref, 0, fill(2, 512), stamp(v(2), v(1)), { fua: false });
      await api.write(CTX, ref, 0, fill(2, 512), stamp(v(2), v(1)), { fua: false });
      await api.write(CTX, ref, 0, fill(9), stamp(v(1), VERSION_ABSENT), { fua: false });
      const reply = await api.read(CTX, ref, 0, 1024);
      expect(reply.meta.version).toBe(v(2));
      expect(reply.data.subarray(0, 512).equals(fill(2, 512))).toBe(true);
      expect(reply.data.subarray(512).equals(fill(1, 512))).toBe(true);
    });

    it('refuses changes with an older fencing token, and learns newer ones durably', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1, 4), VERSION_ABSENT, 4), { fua: false });
      expect(await code(api.write(CTX, blockRef(7, 1, 9), 0, fill(1), stamp(v(1, 3), VERSION_ABSENT, 3), { fua: false }))).toBe('TORUS_ERR_VOLUME_FENCED');
      await api.fence(CTX, 7, 6);
      expect(await code(api.write(CTX, ref, 0, fill(2), stamp(v(1, 5), v(1, 4), 5), { fua: false }))).toBe('TORUS_ERR_VOLUME_FENCED');
      expect(await code(api.install(CTX, ref, { state: 'data', version: v(9, 5), data: fill(3) }, { token: 5, fua: false }))).toBe('TORUS_ERR_VOLUME_FENCED');
      expect(await code(api.drop(CTX, ref, v(9, 5), { token: 5 }))).toBe('TORUS_ERR_VOLUME_FENCED');
      // Other volumes are not affected.
      await api.write(CTX, blockRef(8, 1, 0), 0, fill(1), stamp(v(1, 1), VERSION_ABSENT, 1), { fua: false });
      // An older fence() is a no-op, not an error.
      await api.fence(CTX, 7, 2);
      await api.write(CTX, ref, 0, fill(4), stamp(v(1, 6), v(1, 4), 6), { fua: false });
      expect((await api.read(CTX, ref, 0, 16)).meta.version).toBe(v(1, 6));
    });

    it('remembers learnt fencing tokens and flushed copies across a restart', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1, 4), VERSION_ABSENT, 4), { fua: true });
      await api.fence(CTX, 8, 6);
      const before = await api.hello(CTX);
      await r.restart();
      api = r.api;
      expect((await api.hello(CTX)).incarnation).not.toBe(before.incarnation);
      // Learnt with a write, and with fence(): both were made durable first.
      expect(await code(api.write(CTX, blockRef(7, 1, 9), 0, fill(1), stamp(v(1, 3), VERSION_ABSENT, 3), { fua: false }))).toBe('TORUS_ERR_VOLUME_FENCED');
      expect(await code(api.write(CTX, blockRef(8, 1, 0), 0, fill(1), stamp(v(1, 5), VERSION_ABSENT, 5), { fua: false }))).toBe('TORUS_ERR_VOLUME_FENCED');
      const reply = await api.read(CTX, ref, 0, 16);
      expect(reply.meta).toMatchObject({ state: 'data', version: v(1, 4), suspect: false });
      expect(reply.data.equals(fill(1, 16))).toBe(true);
    });

    it('keeps a suspect copy suspect across a restart', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: true });
      await code(api.write(CTX, ref, 0, fill(2, 512), stamp(v(3), v(2)), { fua: false }));
      await r.restart();
      api = r.api;
      expect((await api.meta(CTX, [ref]))[0]).toMatchObject({ state: 'data', suspect: true });
      expect(await code(api.read(CTX, ref, 0, 512))).toBe('TORUS_ERR_REPLICA_STALE');
    });

    it('installs only newer copies, and over suspect ones', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(5), VERSION_ABSENT), { fua: false });
      expect(await api.install(CTX, ref, { state: 'data', version: v(5), data: fill(1) }, { token: T, fua: false })).toBe('same');
      expect(await api.install(CTX, ref, { state: 'data', version: v(4), data: fill(7) }, { token: T, fua: false })).toBe('newer');
      expect((await api.read(CTX, ref, 0, 8)).data.equals(fill(1, 8))).toBe(true);
      expect(await api.install(CTX, ref, { state: 'data', version: v(6), data: fill(8) }, { token: T, fua: true })).toBe('installed');
      expect((await api.read(CTX, ref, 0, 8)).data.equals(fill(8, 8))).toBe(true);
      // A gap makes it suspect; then even an equal version installs.
      await code(api.write(CTX, ref, 0, fill(2, 512), stamp(v(9), v(8)), { fua: false }));
      expect(await api.install(CTX, ref, { state: 'data', version: v(6), data: fill(8) }, { token: T, fua: false })).toBe('installed');
      expect((await api.meta(CTX, [ref]))[0]).toMatchObject({ suspect: false, version: v(6) });
    });

    it('keeps a trim tombstone that no older copy can undo', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      await api.zero(CTX, ref, 0, bs, stamp(v(2), v(1)), { punch: true, fua: false });
      const reply = await api.read(CTX, ref, 0, 4096);
      expect(reply.meta).toMatchObject({ state: 'zero', version: v(2), digest: 0 });
      expect(reply.data.equals(Buffer.alloc(4096))).toBe(true);
      expect(await api.install(CTX, ref, { state: 'data', version: v(1), data: fill(1) }, { token: T, fua: false })).toBe('newer');
      expect((await api.read(CTX, ref, 0, 16)).data.equals(Buffer.alloc(16))).toBe(true);
      const listed = await api.list(CTX, 7, null, 10);
      expect(listed.blocks.map((b) => [b.ref.index, b.state])).toEqual([[3, 'zero']]);
      // A partial write on a tombstone builds on it.
      await api.write(CTX, ref, 512, fill(5, 512), stamp(v(3), v(2)), { fua: false });
      const after = await api.read(CTX, ref, 0, 1024);
      expect(after.meta).toMatchObject({ state: 'data', version: v(3) });
      expect(after.data.subarray(0, 512).equals(Buffer.alloc(512))).toBe(true);
      expect(after.data.subarray(512).equals(fill(5, 512))).toBe(true);
    });

    it('zeroes a partial range in order like a write', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      await api.zero(CTX, ref, 1024, 512, stamp(v(2), v(1)), { punch: true, fua: false });
      const reply = await api.read(CTX, ref, 512, 1536);
      expect(reply.meta).toMatchObject({ state: 'data', version: v(2) });
      expect(reply.data.subarray(0, 512).equals(fill(1, 512))).toBe(true);
      expect(reply.data.subarray(512, 1024).equals(Buffer.alloc(512))).toBe(true);
      expect(reply.data.subarray(1024).equals(fill(1, 512))).toBe(true);
      expect(await code(api.zero(CTX, ref, 0, 512, stamp(v(9), v(8)), { punch: false, fua: false }))).toBe('TORUS_ERR_REPLICA_STALE');
    });

    it('confirms a suspect copy whose digest matches, and only then', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      const [before] = await api.meta(CTX, [ref]);
      await code(api.write(CTX, ref, 0, fill(2, 512), stamp(v(3), v(2)), { fua: false }));
      expect(await api.confirm(CTX, ref, v(4), before!.digest ^ 1, { token: T })).toBe(false);
      expect((await api.meta(CTX, [ref]))[0]!.suspect).toBe(true);
      expect(await api.confirm(CTX, ref, v(4), before!.digest, { token: T })).toBe(true);
      expect((await api.meta(CTX, [ref]))[0]).toMatchObject({ suspect: false, version: v(4) });
    });

    it('drops a copy only when it is not newer than the caller says', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(5), VERSION_ABSENT), { fua: false });
      expect(await api.drop(CTX, ref, v(4), { token: T })).toBe(false);
      expect((await api.meta(CTX, [ref]))[0]!.state).toBe('data');
      expect(await api.drop(CTX, ref, v(5), { token: T })).toBe(true);
      expect((await api.meta(CTX, [ref]))[0]!.state).toBe('absent');
      expect(await api.drop(CTX, ref, v(5), { token: T })).toBe(true);
    });

    it('lists the blocks of one volume in order, page by page', async () => {
      const indexes = [9, 2, 33, 0, 17];
      for (const i of indexes) await api.write(CTX, blockRef(7, 1, i), 0, fill(i), stamp(v(1), VERSION_ABSENT), { fua: false });
      await api.write(CTX, blockRef(8, 1, 1), 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      const first = await api.list(CTX, 7, null, 3);
      expect(first.blocks.map((b) => b.ref.index)).toEqual([0, 2, 9]);
      expect(first.more).toBe(true);
      const rest = await api.list(CTX, 7, first.blocks[2]!.ref, 3);
      expect(rest.blocks.map((b) => b.ref.index)).toEqual([17, 33]);
      expect(rest.more).toBe(false);
      expect(rest.blocks.every((b) => b.state === 'data' && b.version === v(1))).toBe(true);
    });

    it('verifies a block against its checksums', async () => {
      await api.write(CTX, ref, 0, fill(3), stamp(v(1), VERSION_ABSENT), { fua: true });
      const meta = await api.verify(CTX, ref);
      expect(meta).toMatchObject({ state: 'data', version: v(1), suspect: false });
      expect(meta.digest).toBe((await api.meta(CTX, [ref]))[0]!.digest);
    });

    it('refuses a request placed with an older ring, saying its own version', async () => {
      r.setRingVersion(8);
      let err: unknown;
      try {
        await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      } catch (e) {
        err = e;
      }
      expect(isTorusError(err, 'TORUS_ERR_RING_OUTDATED')).toBe(true);
      expect((err as { details?: Record<string, unknown> }).details?.['ringVersion']).toBe(8);
      // Nothing was applied.
      const reply = await api.read({ ringVersion: 8 }, ref, 0, 16);
      expect(reply.meta.state).toBe('absent');
      // A newer sender is served.
      await api.write({ ringVersion: 9 }, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
    });

    it('takes no change while it is not live, but still serves reads, metadata and flushes', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      r.setLive(false);
      expect(await code(api.write(CTX, ref, 0, fill(2), stamp(v(2), v(1)), { fua: false }))).toBe('TORUS_ERR_PEER_NOT_LIVE');
      expect(await code(api.zero(CTX, ref, 0, bs, stamp(v(2), v(1)), { punch: true, fua: false }))).toBe('TORUS_ERR_PEER_NOT_LIVE');
      expect(await code(api.install(CTX, ref, { state: 'data', version: v(3), data: fill(3) }, { token: T, fua: false }))).toBe('TORUS_ERR_PEER_NOT_LIVE');
      expect(await code(api.drop(CTX, ref, v(9), { token: T }))).toBe('TORUS_ERR_PEER_NOT_LIVE');
      expect((await api.read(CTX, ref, 0, 16)).data.equals(fill(1, 16))).toBe(true);
      expect((await api.meta(CTX, [ref]))[0]!.version).toBe(v(1));
      await api.flush(CTX);
      const info = await api.hello(CTX);
      expect(info.ringVersion).toBe(5);
      expect(info.uuid.length).toBeGreaterThan(0);
      expect(info.incarnation.length).toBeGreaterThan(0);
    });

    it('flushes and reports usage', async () => {
      await api.write(CTX, ref, 0, fill(1), stamp(v(1), VERSION_ABSENT), { fua: false });
      await api.flush(CTX);
      const u = await api.usage(CTX);
      expect(u.blocks).toBe(1);
      expect(u.used).toBeGreaterThanOrEqual(bs);
    });
  });
}
