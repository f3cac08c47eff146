/**
 * Seeded fuzzing of the real TCP server: garbage, truncated handshakes and
 * garbled requests from many connections, while a well-behaved client keeps
 * reading and writing its own export. Reproduce a failure with
 * NBD_FUZZ_SEED=<seed printed in the failure>.
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryExportProvider } from '../../src/nbd/memory-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { runOk } from '../helpers/nbd-exec.js';
import { fuzzPort, fuzzSeed, Rng } from '../helpers/nbd-fuzz.js';
import { NbdTestClient } from '../helpers/nbd-test-client.js';
import { requireTool } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const ITERATIONS_MAX = 400;
const FUZZ_TIME_MS = 4000;
const CONCURRENCY = 8;

let provider: MemoryExportProvider;
let server: NbdServer;
let port: number;
let warnings = 0;

beforeAll(async () => {
  provider = new MemoryExportProvider([
    { name: 'disk', size: 8 * MiB },
    { name: 'good', size: MiB },
  ]);
  const logger = pino({ level: 'warn' }, {
    write: () => {
      warnings++;
    },
  });
  server = new NbdServer({ provider, logger, handshakeTimeoutMs: 5000, closeTimeoutMs: 2000 });
  ({ port } = await server.listen('127.0.0.1', 0));
});

afterAll(async () => {
  await server?.close();
});

describe('NBD server under fuzzing', () => {
  it('survives random and malformed traffic while a good client keeps working', async () => {
    const nbdinfo = requireTool('nbdinfo', 'libnbd-bin');
    const seed = fuzzSeed('NBD_FUZZ_SEED');
    const rng = new Rng(seed);
    try {
      const good = await NbdTestClient.tcp(port);
      await good.structuredReplies();
      await good.go('good');
      const expected = Buffer.alloc(MiB);
      const goodWrite = async (i: number) => {
        const off = (i * 8191) % (MiB - 4096);
        const data = Buffer.alloc(4096, (i % 251) + 1);
        await good.write(off, data);
        data.copy(expected, off);
      };
      await goodWrite(0);

      let stop = false;
      let goodOps = 0;
      const goodLoop = (async () => {
        for (let i = 1; !stop; i++) {
          await goodWrite(i);
          const off = (i * 4099) % (MiB - 65536);
          const got = await good.read(off, 65536);
          if (!got.equals(expected.subarray(off, off + 65536))) throw new Error(`good client read wrong data at ${off}`);
          goodOps++;
        }
      })();
      goodLoop.catch(() => {
        // awaited below; this only keeps an early failure from going unhandled
      });

      let started: number;
      try {
        started = await fuzzPort(port, rng, { exportName: 'disk', offsetMax: 8 * MiB }, { deadline: Date.now() + FUZZ_TIME_MS, connectionsMax: ITERATIONS_MAX, concurrency: CONCURRENCY });
      } finally {
        stop = true;
      }
      await goodLoop;

      expect(started).toBeGreaterThan(50);
      expect(goodOps).toBeGreaterThan(10);
      // the fuzzer did reach transmission and the checks that close connections
      expect(provider.opens).toBeGreaterThan(20);
      expect(warnings).toBeGreaterThan(0);

      // everything the good client wrote is intact, over the protocol and in memory
      expect((await good.read(0, MiB)).equals(expected)).toBe(true);
      expect(provider.disk('good').peek(0, MiB).equals(expected)).toBe(true);
      await good.disconnect();

      // every fuzzing connection went away and released what it opened
      await waitFor('fuzz connections closed', () => server.connectionCount === 0, 15_000);
      expect(provider.releases).toBe(provider.opens);
      expect(provider.disk('disk').stats.writes + provider.disk('disk').stats.reads).toBeGreaterThan(0);

      // and the server still serves real clients
      expect((await runOk(nbdinfo, ['--size', `nbd://127.0.0.1:${port}/good`])).stdout.trim()).toBe(String(MiB));
    } catch (err) {
      throw new Error(`NBD fuzz failed; reproduce with NBD_FUZZ_SEED=${seed}: ${(err as Error).stack ?? String(err)}`);
    }
  });
});
