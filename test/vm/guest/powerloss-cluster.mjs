// What both power-loss scenarios do inside the test VM, with I/O: the
// protocol lines to the host, the tools, the disks, the torusd processes of
// one boot and the checks run against them. powerloss.mjs cuts the power of
// the whole guest (the host kills QEMU); peer-powerloss.mjs cuts one peer's
// disk while the others run. The data model they check against is pure, in
// powerloss-pattern.mjs.
import { spawn, execFile } from 'node:child_process';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SECTOR_BYTES, STALE_CHUNK, classify, judge, readsDiffer, runsOf, sectorBytes } from './powerloss-pattern.mjs';
import { loadNbdClient } from './nbd-client.mjs';
import { checkCopies, describeCheck } from '../../bench/lib/copies.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const DIST = path.join(ROOT, 'dist');
const NbdClient = await loadNbdClient(DIST);
const { ownersOf } = await import(path.join(DIST, 'src/replication/owners.js'));

/** Writes in flight at once. */
const WRITE_QUEUE_MAX = 8;
/** Bytes per read while checking, and reads in flight. */
const READ_CHUNK_BYTES = 256 * 1024;
const READ_QUEUE_MAX = 4;
/** How long the cluster may take to be balanced (replicated runs). */
const BALANCED_TIMEOUT_MS = 240_000;

export function env(k) {
  const v = process.env[k];
  if (v === undefined || v === '') throw new Error(`${k} is not set (the host script sets it)`);
  return v;
}

/**
 * What the host tells every boot (powerloss-host.mjs): the state folder on
 * the host's share, etcd's address as the guest reaches it, the volume, the
 * data pattern's seed and the data dirs' file system.
 */
export function bootSettings() {
  return {
    state: env('TORUS_PL_STATE'),
    etcd: env('TORUS_PL_ETCD'),
    volume: env('TORUS_PL_VOLUME'),
    volumeId: Number(env('TORUS_PL_VOLUME_ID')),
    seed: Number(env('TORUS_PL_SEED')) >>> 0,
    fs: env('TORUS_PL_FS'),
  };
}

const t0 = Date.now();
export const log = (...a) => console.log(`[guest ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
/** A protocol line for the host; written straight to the console (a tty: synchronous). */
export const tell = (line) => writeSync(1, `powerloss: ${line}\n`);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Every failure of this boot, each told to the host as it is found. */
export const failures = [];
export function fail(what) {
  failures.push(what);
  tell(`fail ${what}`);
}

export function run(cmd, args, { timeoutMs = 120_000, allowFail = false, env: extraEnv } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8', env: extraEnv ? { ...process.env, ...extraEnv } : process.env }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      if (code !== 0 && !allowFail) reject(new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr || stdout || err?.message}`));
      else resolve({ code, stdout, stderr });
    });
  });
}

export async function waitFor(what, probe, timeoutMs, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      if (err.fatal) throw err;
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(intervalMs);
  }
}

export function syncDir(dir) {
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/** Writes a file on the host's share durably: the next boot reads it after a power loss. */
export function writeDurably(file, data) {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  syncDir(path.dirname(file));
}

/** Mounts a file system with its default options (ext4: data=ordered, barriers on: what a node runs); returns the options. */
export async function mountDisk(fsys, dev, mnt) {
  mkdirSync(mnt, { recursive: true });
  await run('mount', ['-t', fsys.type, dev, mnt]);
  return readFileSync('/proc/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === mnt)?.split(' ')[3];
}

/**
 * Before torusd's first start, fills the file system's free space with a
 * deleted file's bytes (STALE_CHUNK, durable, then the file unlinked), so
 * that the blocks torusd's files are given were someone else's. A crash that
 * left a block file pointing at disk blocks its data never reached would then
 * read back as "a deleted file's bytes" and fail the check, where on a fresh
 * image it would read as zeroes and pass unseen.
 */
export function fillWithStaleData(mnt) {
  const file = path.join(mnt, 'stale.fill');
  const started = Date.now();
  const fd = openSync(file, 'w');
  let bytes = 0;
  try {
    for (;;) {
      try {
        bytes += writeSync(fd, STALE_CHUNK);
      } catch (err) {
        if (err.code === 'ENOSPC') break;
        throw err;
      }
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  unlinkSync(file);
  syncDir(mnt);
  log(`filled ${(bytes / 1048576).toFixed(0)} MiB of free space on ${mnt} with a deleted file's bytes in ${Date.now() - started} ms`);
}

/** File-system trouble the kernel logged since the boot's `dmesg -C`. */
export async function kernelFsErrors() {
  return (await run('dmesg', [], { allowFail: true })).stdout.split('\n').filter((l) => /EXT4-fs error|I\/O error|Remounting filesystem read-only|journal.*(error|abort)|XFS \(.*\):.*(corrupt|error|shutdown)/i.test(l));
}

/**
 * One torusd: `n` (1-based) names it in logs, its data dir is its own, its
 * peer port fixed like a real node's (it is recorded in etcd and must be the
 * same after a restart; the guest's loopback belongs to this test).
 */
export function startPeer({ n, dataDir, logFile, etcd, args = [] }) {
  mkdirSync(dataDir, { recursive: true });
  const out = openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(DIST, 'cmd/torusd.js'), '-C', etcd, '--data-dir', dataDir, '--size', '256MiB',
    '--peer-address', `127.0.0.1:${39999 + n}`, '--nbd-address', '127.0.0.1:0', '--port', '0', '--auto-join', ...args], {
    stdio: ['ignore', out, out],
    env: { ...process.env },
  });
  closeSync(out);
  const exit = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const lines = () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return [];
    }
  });
  return { n, child, exit, logFile, lines, ready: null, http: null };
}

export async function untilReady(p) {
  p.ready = await waitFor(`torusd ${p.n} ready`, () => {
    if (p.child.exitCode !== null) throw Object.assign(new Error(`torusd ${p.n} exited ${p.child.exitCode}: ${readFileSync(p.logFile, 'utf8').slice(-2000)}`), { fatal: true });
    return p.lines().find((l) => l.msg === 'torusd ready');
  }, 240_000);
  p.http = `http://${p.ready.http}`;
}

/** CRC failures the given torusd processes logged. */
export function crcLogged(peers) {
  return peers.flatMap((p) => p.lines()).filter((l) => l.msg === 'block page failed its checksum' || /CRC_MISMATCH/.test(JSON.stringify(l))).length;
}

/** SIGTERM to every peer; each must exit 0 within 60 s. */
export async function stopPeers(peers) {
  await Promise.all(peers.map(async (p) => {
    p.child.kill('SIGTERM');
    const st = await Promise.race([p.exit, sleep(60_000).then(() => null)]);
    if (st === null) {
      p.child.kill('SIGKILL');
      fail(`torusd ${p.n} did not stop within 60 s of SIGTERM`);
    } else if (st.code !== 0) fail(`torusd ${p.n} exited ${st.code ?? st.signal} on SIGTERM`);
  }));
}

async function getJson(url) {
  const r = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  if (!r.ok) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

/**
 * The cluster of one boot as the checks see it: `peers` is the live list of
 * torusd processes (a scenario may replace one that it restarted).
 */
export function clusterView({ etcd, peers, volume, volumeId, seed }) {
  async function torusctlJson(args) {
    const r = await run(process.execPath, [path.join(DIST, 'cmd/torusctl.js'), '-C', etcd, ...args, '-o', 'json']);
    return JSON.parse(r.stdout);
  }
  /** One peer's copies of the volume (GET /v1/blocks): [{ index, version, suspect, ... }]. */
  const copiesOf = async (p) => (await getJson(`${p.http}/v1/blocks?volume=${volumeId}`)).blocks;
  /** Every peer's copies of the volume, by peer uuid. */
  async function copiesByPeer() {
    const lists = await Promise.all(peers.map(copiesOf));
    return Object.fromEntries(peers.map((p, i) => [p.ready.uuid, lists[i]]));
  }
  return {
    torusctlJson,
    copiesOf,
    copiesByPeer,
    logLines: () => peers.flatMap((p) => p.lines()),
    /** Blocks listed and suspect copies, summed over the peers. */
    async suspectBlocks() {
      const all = Object.values(await copiesByPeer()).flat();
      return { blocks: all.length, suspect: all.filter((b) => b.suspect).length };
    },
    /** CRC failures counted by the running processes. */
    async crcFailures() {
      let counted = 0;
      for (const p of peers) {
        const r = await fetch(`${p.http}/metrics`, { signal: AbortSignal.timeout(30_000) });
        const m = /^torus_store_crc_failures_total (\S+)$/m.exec(await r.text());
        if (m === null) throw new Error(`torus_store_crc_failures_total is missing from torusd ${p.n}'s /metrics`);
        counted += Number(m[1]);
      }
      return counted;
    },
    /** Waits for a stable ring of `members` peers. */
    async stableRing(members) {
      const started = Date.now();
      const ring = await waitFor(`a stable ring of ${members} peers`, async () => {
        const r = await torusctlJson(['ring', 'get']);
        return r.transition === null && r.members.length === members ? r : null;
      }, 240_000, 1000);
      log(`ring version ${ring.version} stable with ${members} members ${((Date.now() - started) / 1000).toFixed(1)} s later`);
      return ring;
    },
    /** An NBD connection to the volume through peer p. A lock a killed process held is dropped when its lease is revoked or runs out. */
    connectTo(p) {
      const [host, port] = p.ready.nbd.split(':');
      return waitFor(`NBD export ${volume} on torusd ${p.n}`, () => NbdClient.connect(host, Number(port), volume), 90_000, 1000);
    },
    /**
     * Reads the whole volume through one NBD connection; returns the
     * generation each sector holds and, judged against `exp` (or not, when
     * null: powerloss-pattern.mjs), the count of each verdict.
     */
    async checkVolume(nbd, exp) {
      const sectors = nbd.size / SECTOR_BYTES;
      const now = new Uint32Array(sectors);
      const counts = { flushed: 0, flushedWritten: 0, flushedNewer: 0, unflushed: 0, windowOld: 0, lost: 0, garbage: 0, unknown: 0 };
      const examples = [];
      let next = 0;
      const worker = async () => {
        while (next < nbd.size) {
          const offset = next;
          const length = Math.min(READ_CHUNK_BYTES, nbd.size - offset);
          next += length;
          let buf;
          try {
            buf = await nbd.read(offset, length);
          } catch (err) {
            fail(`reading ${offset}+${length} failed: ${err.message}`);
            continue;
          }
          for (let at = 0; at < length; at += SECTOR_BYTES) {
            const s = (offset + at) / SECTOR_BYTES;
            const got = classify(seed, s, buf, at);
            now[s] = got.gen ?? 0;
            if (exp === null) continue;
            const verdict = judge(exp, s, got);
            counts[verdict]++;
            // In the unacknowledged window but old: those writes did not land (or never started).
            if (verdict === 'flushed' && exp.later.has(s)) counts.windowOld++;
            if (verdict === 'flushed' && exp.floor[s] > 0) counts.flushedWritten++;
            if (verdict === 'unflushed' && exp.floor[s] > 0) counts.flushedNewer++;
            if (verdict !== 'flushed' && verdict !== 'unflushed' && examples.length < 8) {
              examples.push(`sector ${s}: ${verdict}, holds ${got.garbage ?? `generation ${got.gen}`}, flushed generation ${exp.floor[s]}, unflushed ${JSON.stringify(exp.later.get(s) ?? [])}`);
            }
          }
        }
      };
      await Promise.all(Array.from({ length: READ_QUEUE_MAX }, worker));
      return { now, counts, examples };
    },
    /** Reads the whole volume through its own connection to peer p (checkVolume). */
    async readThrough(p, exp) {
      const c = await this.connectTo(p);
      const r = await this.checkVolume(c, exp);
      await c.disconnect();
      return r;
    },
    /** Waits for `cluster status` to say balanced; the seconds it took, or null (a failure) when it never did. */
    async balanced() {
      const started = Date.now();
      try {
        await waitFor('the cluster balanced', async () => (await torusctlJson(['cluster', 'status'])).balanced === true, BALANCED_TIMEOUT_MS, 1000);
        return (Date.now() - started) / 1000;
      } catch (err) {
        fail(err.message);
        return null;
      }
    },
    /** Every block has exactly R equal copies, none suspect, on its ring owners (test/bench/lib/copies.mjs, the bench's own check). */
    async checkCopies(replication) {
      const ring = await torusctlJson(['ring', 'get']);
      const vol = (await torusctlJson(['volume', 'list'])).volumes.find((v) => v.id === volumeId);
      const volumeNow = { id: volumeId, generation: vol.generation, blocks: Math.ceil(vol.size / vol.blockSize) };
      const check = checkCopies({ volume: volumeNow, ring, copiesByPeer: await copiesByPeer(), replication, expectFull: false, ownersOf });
      log(describeCheck(`volume ${volume}`, check));
      if (!check.ok) {
        for (const p of check.problems) log(`  ${p}`);
        fail(describeCheck(`volume ${volume}`, check));
      }
      return check;
    },
  };
}

/** Logs and fails on what a judged read (checkVolume) found wrong, named by `where` ("through torusd 2"). */
export function reportJudged(r, where) {
  for (const e of r.examples) log(`  ${where}: ${e}`);
  const bad = r.counts.lost + r.counts.garbage + r.counts.unknown;
  if (bad > 0) fail(`${where}: ${r.counts.lost} sectors older than a write they must hold, ${r.counts.garbage} garbage, ${r.counts.unknown} of an unknown generation`);
}

/** Compares a judged read through torusd `n` with the reference read; logs and fails on any difference or misjudged sector. Returns the count that differ. */
export function compareReads(reference, again, n, refName = 'torusd 1') {
  const d = readsDiffer(reference, again.now);
  for (const e of d.examples) log(`  sector ${e.sector}: generation ${e.a} through ${refName}, ${e.b} through torusd ${n}`);
  if (d.count > 0) fail(`${d.count} sectors read differently through torusd ${n} than through ${refName}`);
  reportJudged(again, `through torusd ${n}`);
  return d.count;
}

/** Writes generation `gen` (its runs, powerloss-pattern.mjs) through one NBD connection, then FLUSHes it. */
export async function writeGeneration(nbd, seed, gen, sectors) {
  const writes = [];
  for (const r of runsOf(seed, gen, sectors)) {
    const data = Buffer.allocUnsafe(r.count * SECTOR_BYTES);
    for (let i = 0; i < r.count; i++) sectorBytes(seed, r.start + i, gen, data, i * SECTOR_BYTES);
    writes.push({ offset: r.start * SECTOR_BYTES, data });
  }
  let i = 0;
  await Promise.all(Array.from({ length: WRITE_QUEUE_MAX }, async () => {
    while (i < writes.length) {
      const w = writes[i++];
      await nbd.write(w.offset, w.data);
    }
  }));
  await nbd.flush();
}

/** Checks an unmounted file system with its own tool, read-only; a failure when it finds anything. */
export async function checkFs(fsys, dev) {
  const [cmd, args] = fsys.fsck(dev);
  const r = await run(cmd, args, { allowFail: true });
  if (r.code !== 0) fail(`${cmd} ${args.join(' ')} exited ${r.code}: ${(r.stdout + r.stderr).slice(-500)}`);
  else log(`${cmd} ${args.join(' ')}: the file system is clean`);
}
