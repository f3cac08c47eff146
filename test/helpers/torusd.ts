/**
 * Runs the real compiled daemons and CLIs (dist/cmd/*.js) as child processes
 * for end-to-end tests: torusd on free ports, torusctl / torusblk one-shots,
 * and a long-running `torusblk nbdserve`. Call ensureBuilt() first.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { DIST, ROOT } from './build.js';
import { run } from './nbd-exec.js';
import { openExport, type NbdTestClient } from './nbd-test-client.js';
import { freePort } from './ports.js';

export const TORUSD = path.join(DIST, 'cmd/torusd.js');
export const TORUSCTL = path.join(DIST, 'cmd/torusctl.js');
export const TORUSBLK = path.join(DIST, 'cmd/torusblk.js');

const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 20_000;
const CLI_TIMEOUT_MS = 30_000;
/**
 * Output kept per run: the start (where start-up and recovery are logged) and
 * the latest part (what a failure message needs); the middle of a long,
 * chatty run is dropped.
 */
const HEAD_CHARS_MAX = 1024 * 1024;
const TAIL_CHARS_MAX = 4 * 1024 * 1024;
const HEAD_LINES_MAX = 5_000;
const TAIL_LINES_MAX = 20_000;

/** One pino line as torusd / torusblk print it. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** The environment the processes see: no torus settings leak in from the caller's shell. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['ETCD_HOST', 'ETCD_PORT', 'STORAGE_SIZE', 'LISTEN_HOST', 'PEER_ADDRESS', 'LISTEN_HTTP_PORT', 'AUTO_JOIN', 'DEBUG_INIT', 'DEBUG', 'TORUS_CLUSTER_SECRET_FILE']) {
    delete env[k];
  }
  return { ...env, ...extra };
}

function execNode(script: string, args: string[], timeoutMs: number): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [script, ...args],
      { cwd: ROOT, env: cleanEnv(), timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number') {
          if (err.killed) return reject(new Error(`${path.basename(script)} ${args.join(' ')} did not exit within ${timeoutMs} ms; stderr: ${stderr}`));
          return reject(err);
        }
        resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
      },
    );
  });
}

/** Runs `torusctl -C etcd ARGS` and resolves with its exit code and output. */
export function torusctl(etcd: string, args: string[], timeoutMs = CLI_TIMEOUT_MS): Promise<CliResult> {
  return execNode(TORUSCTL, ['-C', etcd, ...args], timeoutMs);
}

/** Like torusctl() but fails with the output when the exit code is not 0. */
export async function torusctlOk(etcd: string, args: string[]): Promise<CliResult> {
  const r = await torusctl(etcd, args);
  if (r.code !== 0) throw new Error(`torusctl ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** Runs a one-shot `torusblk -C etcd ARGS` (for long-running nbdserve use startTorusblkServe). */
export function torusblk(etcd: string, args: string[], timeoutMs = CLI_TIMEOUT_MS): Promise<CliResult> {
  return execNode(TORUSBLK, ['-C', etcd, ...args], timeoutMs);
}

/** Collects a child's output as text and as parsed JSON lines (bounded); wakes waiters on every line. */
class OutputLog {
  private head = '';
  private tailText = '';
  private droppedChars = 0;
  private partial = '';
  private headLines: LogLine[] = [];
  private tailLines: LogLine[] = [];
  private readonly listeners = new Set<() => void>();

  append(chunk: string): void {
    let rest = chunk;
    if (this.head.length < HEAD_CHARS_MAX) {
      const room = HEAD_CHARS_MAX - this.head.length;
      this.head += rest.slice(0, room);
      rest = rest.slice(room);
    }
    this.tailText += rest;
    if (this.tailText.length > 2 * TAIL_CHARS_MAX) {
      this.droppedChars += this.tailText.length - TAIL_CHARS_MAX;
      this.tailText = this.tailText.slice(-TAIL_CHARS_MAX);
    }
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop() ?? '';
    for (const p of parts) {
      if (!p.startsWith('{')) continue;
      let line: LogLine;
      try {
        line = JSON.parse(p) as LogLine;
      } catch {
        continue; // not a log line (e.g. a stack trace from a crash): kept in the text only
      }
      if (this.headLines.length < HEAD_LINES_MAX) this.headLines.push(line);
      else this.tailLines.push(line);
    }
    if (this.tailLines.length > 2 * TAIL_LINES_MAX) this.tailLines = this.tailLines.slice(-TAIL_LINES_MAX);
    for (const l of [...this.listeners]) l();
  }

  /** Parsed lines kept: the first ones and the latest ones. */
  get lines(): LogLine[] {
    return this.headLines.concat(this.tailLines);
  }

  all(): string {
    return this.droppedChars > 0 ? `${this.head}\n[... ${this.droppedChars} characters of output dropped ...]\n${this.tailText}` : this.head + this.tailText;
  }

  tail(chars = 6000): string {
    const t = this.all();
    return t.length > chars ? `...${t.slice(-chars)}` : t;
  }

  /** Resolves with the first line (already seen or future) that matches, or rejects after timeoutMs. */
  waitForLine(what: string, pred: (l: LogLine) => boolean, timeoutMs: number, exited?: Promise<unknown>): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      let done = false;
      const finish = (fn: () => void) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.listeners.delete(check);
        fn();
      };
      const check = () => {
        const hit = this.headLines.find(pred) ?? this.tailLines.find(pred);
        if (hit) finish(() => resolve(hit));
      };
      const timer = setTimeout(() => finish(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for log line: ${what}\n${this.tail()}`))), timeoutMs);
      this.listeners.add(check);
      void exited?.then(() => {
        // Let the last output chunks arrive before giving up.
        setTimeout(() => {
          check();
          finish(() => reject(new Error(`process exited before log line: ${what}\n${this.tail()}`)));
        }, 100);
      });
      check();
    });
  }
}

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

interface Run {
  readonly child: ChildProcess;
  readonly out: OutputLog;
  readonly exited: Promise<ExitStatus>;
  exit: ExitStatus | null;
}

/**
 * Every daemon this module started that has not exited. If the test process
 * goes away first (a timed-out hook, a crash), they are killed with it rather
 * than left running against a deleted data dir.
 */
const live = new Set<ChildProcess>();
let exitHook = false;

function registerChild(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** Spawns node with `args`; inside network namespace `netns` (`ip netns exec`, which execs: the pid is node's) when given. */
function spawnLogged(args: string[], env: NodeJS.ProcessEnv, netns?: string): Run {
  const child =
    netns === undefined
      ? spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn('ip', ['netns', 'exec', netns, process.execPath, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  registerChild(child);
  const out = new OutputLog();
  child.stdout!.setEncoding('utf8').on('data', (d: string) => out.append(d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => out.append(d));
  const run: Run = {
    child,
    out,
    exit: null,
    exited: new Promise<ExitStatus>((resolve) => {
      // 'close' fires after the pipes drain, so the log is complete.
      child.once('close', (code, signal) => {
        run.exit = { code, signal };
        resolve(run.exit);
      });
      child.once('error', (err) => {
        out.append(`spawn error: ${String(err)}\n`);
      });
    }),
  };
  return run;
}

async function killAndWait(run: Run, signal: NodeJS.Signals, timeoutMs: number, what: string): Promise<ExitStatus> {
  if (run.exit) return run.exit;
  run.child.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not exit within ${timeoutMs} ms of ${signal}\n${run.out.tail()}`)), timeoutMs);
  });
  try {
    return await Promise.race([run.exited, timeout]);
  } catch (err) {
    run.child.kill('SIGKILL');
    await run.exited;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

export interface TorusdOptions {
  /** host:port of etcd (startEtcd().endpoint). */
  readonly etcd: string;
  /** Reused across restarts; a temporary directory (removed by destroy()) when omitted. */
  readonly dataDir?: string;
  /** --size, default 2GiB. */
  readonly size?: string;
  /** NBD port; a free one when omitted. Kept across restarts. */
  readonly nbdPort?: number;
  readonly extraArgs?: string[];
  readonly env?: NodeJS.ProcessEnv;
  /** --auto-join (default true); false leaves the peer out of the ring until `torusctl peer add`. */
  readonly autoJoin?: boolean;
  /** Address the peer, NBD and HTTP listeners bind (default 127.0.0.1): a network namespace's own address. */
  readonly host?: string;
  /** Runs torusd inside this network namespace (`ip netns exec`); `host` must be an address there. */
  readonly netns?: string;
}

export interface TorusdHandle {
  readonly etcd: string;
  readonly dataDir: string;
  readonly nbdPort: number;
  /** Where the NBD listener is (127.0.0.1 unless started with `host`). */
  readonly nbdHost: string;
  /** From the current run's "torusd ready" line. */
  readonly httpUrl: string;
  readonly peerAddress: string;
  readonly uuid: string;
  readonly pid: number;
  /** True while the current run has not exited. */
  readonly running: boolean;
  /** How the current run exited (a refused start, for one), or null while it runs. */
  readonly exit: ExitStatus | null;
  /** How many times the daemon was started (1 after startTorusd). */
  readonly runs: number;
  nbdUri(exportName: string): string;
  /** The current run's stdout+stderr (bounded). */
  output(): string;
  /** The current run's last output, for failure messages. */
  tail(chars?: number): string;
  /** Parsed JSON log lines of the current run. */
  lines(): LogLine[];
  waitForLog(what: string, pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Sends a signal and waits (bounded) for the process to exit. */
  kill(signal: NodeJS.Signals): Promise<ExitStatus>;
  /** SIGTERM and wait (bounded); fails if the daemon does not exit cleanly with code 0. */
  stop(): Promise<void>;
  /**
   * Starts the daemon again on the same data dir and NBD port (stops it
   * first if running); `extraArgs` are added for this run only. Resolves
   * once it is ready, or at once with `{ ready: false }` (a start that waits
   * for etcd): then waitReady().
   */
  restart(extraArgs?: string[], opts?: { ready?: boolean }): Promise<void>;
  /** Waits for the current run's "torusd ready" (after restart(args, { ready: false })). */
  waitReady(timeoutMs?: number): Promise<void>;
  /** Stops (SIGKILL if it will not stop) and removes a temporary data dir. Never throws. */
  destroy(): Promise<void>;
}

/** Spawns torusd on free ports and resolves once it logs "torusd ready". */
export async function startTorusd(opts: TorusdOptions): Promise<TorusdHandle> {
  const ownDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(path.join(os.tmpdir(), 'torus-e2e-data-')));
  const nbdPort = opts.nbdPort ?? (await freePort());
  const host = opts.host ?? '127.0.0.1';
  const args = [
    TORUSD,
    '-C', opts.etcd,
    '--data-dir', dataDir,
    '--size', opts.size ?? '2GiB',
    '--peer-address', `${host}:0`,
    '--host', host,
    '--port', '0',
    '--nbd-address', `${host}:${nbdPort}`,
    ...(opts.autoJoin === false ? [] : ['--auto-join']),
    '--debug-init',
    ...(opts.extraArgs ?? []),
  ];
  const env = cleanEnv(opts.env);
  let run: Run;
  let ready: LogLine = {};
  let runs = 0;
  let destroyed = false;

  async function launch(extraArgs: string[] = []): Promise<void> {
    spawnRun(extraArgs);
    await waitReady(READY_TIMEOUT_MS);
  }

  function spawnRun(extraArgs: string[]): void {
    // A test that timed out may still be running after afterAll destroyed the daemon.
    if (destroyed) throw new Error('torusd was destroyed; not starting it again');
    run = spawnLogged([...args, ...extraArgs], env, opts.netns);
    runs++;
  }

  async function waitReady(timeoutMs: number): Promise<void> {
    const current = run;
    try {
      ready = await current.out.waitForLine('"torusd ready"', (l) => l.msg === 'torusd ready', timeoutMs, current.exited);
    } catch (err) {
      await killAndWait(current, 'SIGKILL', STOP_TIMEOUT_MS, 'torusd').catch(() => undefined);
      throw err;
    }
  }

  await launch();

  const handle: TorusdHandle = {
    etcd: opts.etcd,
    dataDir,
    nbdPort,
    nbdHost: host,
    get httpUrl() {
      return `http://${String(ready.http)}`;
    },
    get peerAddress() {
      return String(ready.peer);
    },
    get uuid() {
      return String(ready.uuid);
    },
    get pid() {
      return run.child.pid ?? -1;
    },
    get running() {
      return run.exit === null;
    },
    get exit() {
      return run.exit;
    },
    get runs() {
      return runs;
    },
    nbdUri: (name) => `nbd://${host}:${nbdPort}/${name}`,
    output: () => run.out.all(),
    tail: (chars) => run.out.tail(chars),
    lines: () => run.out.lines,
    waitForLog: (what, pred, timeoutMs = 20_000) => run.out.waitForLine(what, pred, timeoutMs, run.exited),
    kill: (signal) => killAndWait(run, signal, STOP_TIMEOUT_MS, 'torusd'),
    async stop() {
      const st = await killAndWait(run, 'SIGTERM', STOP_TIMEOUT_MS, 'torusd');
      if (st.code !== 0) throw new Error(`torusd exited with ${st.code ?? st.signal} on SIGTERM\n${run.out.tail()}`);
    },
    async restart(extraArgs, restartOpts = {}) {
      if (run.exit === null) await handle.stop();
      if (restartOpts.ready === false) spawnRun(extraArgs ?? []);
      else await launch(extraArgs);
    },
    waitReady: (timeoutMs = READY_TIMEOUT_MS) => waitReady(timeoutMs),
    async destroy() {
      destroyed = true;
      await killAndWait(run, 'SIGTERM', STOP_TIMEOUT_MS, 'torusd').catch(() => undefined);
      if (ownDir) await rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
  return handle;
}

export interface TorusblkServeHandle {
  readonly port: number;
  readonly pid: number;
  nbdUri(exportName: string): string;
  output(): string;
  lines(): LogLine[];
  waitForLog(what: string, pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** SIGTERM and wait (bounded). Never throws. */
  stop(): Promise<ExitStatus>;
}

/** Spawns `torusblk nbdserve` on a free port and resolves once it logs that it is ready. */
export async function startTorusblkServe(opts: { etcd: string; readOnly?: boolean; debug?: boolean; extraArgs?: string[] }): Promise<TorusblkServeHandle> {
  const port = await freePort();
  const args = [TORUSBLK, '-C', opts.etcd, ...(opts.debug ? ['--debug'] : []), 'nbdserve', '-l', `127.0.0.1:${port}`, ...(opts.readOnly ? ['--read-only'] : []), ...(opts.extraArgs ?? [])];
  const run = spawnLogged(args, cleanEnv());
  try {
    await run.out.waitForLine('"torusblk nbdserve ready"', (l) => l.msg === 'torusblk nbdserve ready', READY_TIMEOUT_MS, run.exited);
  } catch (err) {
    await killAndWait(run, 'SIGKILL', STOP_TIMEOUT_MS, 'torusblk').catch(() => undefined);
    throw err;
  }
  return {
    port,
    pid: run.child.pid ?? -1,
    nbdUri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    output: () => run.out.all(),
    lines: () => run.out.lines,
    waitForLog: (what, pred, timeoutMs = 20_000) => run.out.waitForLine(what, pred, timeoutMs, run.exited),
    stop: () => killAndWait(run, 'SIGTERM', STOP_TIMEOUT_MS, 'torusblk').catch(() => ({ code: null, signal: 'SIGKILL' as const })),
  };
}

export interface TorusblkCsiHandle {
  readonly socketPath: string;
  readonly pid: number;
  output(): string;
  lines(): LogLine[];
  waitForLog(what: string, pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** SIGTERM and wait (bounded). Never throws. */
  stop(): Promise<ExitStatus>;
}

/** Spawns `torusblk csi` on a unix socket and resolves once it logs that it is ready. */
export async function startTorusblkCsi(opts: { etcd: string; socketPath: string; nodeId?: string; dataDir?: string; extraArgs?: string[]; env?: NodeJS.ProcessEnv }): Promise<TorusblkCsiHandle> {
  const args = [
    TORUSBLK,
    '-C', opts.etcd,
    'csi',
    '--endpoint', `unix://${opts.socketPath}`,
    ...(opts.nodeId ? ['--node-id', opts.nodeId] : []),
    ...(opts.dataDir ? ['--data-dir', opts.dataDir] : []),
    ...(opts.extraArgs ?? []),
  ];
  const run = spawnLogged(args, cleanEnv(opts.env));
  try {
    await run.out.waitForLine('"torusblk csi ready"', (l) => l.msg === 'torusblk csi ready', READY_TIMEOUT_MS, run.exited);
  } catch (err) {
    await killAndWait(run, 'SIGKILL', STOP_TIMEOUT_MS, 'torusblk').catch(() => undefined);
    throw err;
  }
  return {
    socketPath: opts.socketPath,
    pid: run.child.pid ?? -1,
    output: () => run.out.all(),
    lines: () => run.out.lines,
    waitForLog: (what, pred, timeoutMs = 20_000) => run.out.waitForLine(what, pred, timeoutMs, run.exited),
    stop: () => killAndWait(run, 'SIGTERM', STOP_TIMEOUT_MS, 'torusblk').catch(() => ({ code: null, signal: 'SIGKILL' as const })),
  };
}

/** GET a torusd HTTP path; resolves with status and body text (bounded). */
export async function httpGet(url: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.text() };
}

/** torusd's GET /v1/status document (the fields the tests read). */
export interface TorusdStatus {
  uuid: string;
  capacity: number;
  used: number;
  openVolumes: { name: string; id: number; mode: string; connections: number; lockToken: number | null }[];
  replication?: { failingPeers: string[]; peerRequestsInFlight: Record<string, number> };
}

export async function torusdStatus(d: TorusdHandle): Promise<TorusdStatus> {
  const r = await httpGet(`${d.httpUrl}/v1/status`);
  if (r.status !== 200) throw new Error(`GET /v1/status answered ${r.status}: ${r.body}`);
  return JSON.parse(r.body) as TorusdStatus;
}

/** `torusctl volume list -o json`, as name -> {id, size, status}. */
export interface VolumeListEntry {
  readonly id: number;
  readonly size: number;
  readonly status: string;
  readonly holder?: string;
  readonly lockToken?: number;
}

export async function volumeList(etcd: string): Promise<Map<string, VolumeListEntry>> {
  const r = await torusctlOk(etcd, ['volume', 'list', '-o', 'json']);
  const doc = JSON.parse(r.stdout) as { volumes: (VolumeListEntry & { name: string })[] };
  return new Map(doc.volumes.map((v) => [v.name, { id: v.id, size: v.size, status: v.status, holder: v.holder, lockToken: v.lockToken }]));
}

/** Runs `qemu-io -f raw [-r] -c CMD... URI` and resolves with its exit code and output. */
export function qemuIo(uri: string, commands: string[], opts: { readOnly?: boolean; timeoutMs?: number } = {}): Promise<CliResult> {
  const args = ['-f', 'raw', ...(opts.readOnly ? ['-r'] : []), ...commands.flatMap((c) => ['-c', c]), uri];
  return run('qemu-io', args, { timeoutMs: opts.timeoutMs ?? 60_000 });
}

/** Like qemuIo() but fails with the output unless qemu-io exits 0 and reports no failed command. */
export async function qemuIoOk(uri: string, commands: string[], opts: { readOnly?: boolean; timeoutMs?: number } = {}): Promise<CliResult> {
  const r = await qemuIo(uri, commands, opts);
  // qemu-io runs every -c command and may exit 0 after one failed: check the text too.
  if (r.code !== 0 || /failed|Pattern verification|error/i.test(r.stdout + r.stderr)) {
    throw new Error(`qemu-io ${commands.join(' ; ')} ${uri} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
  return r;
}

/** A raw NBD client over TCP that negotiated structured replies, base:allocation and GO for `name`. */
export async function nbdConnect(port: number, name: string, host = '127.0.0.1'): Promise<NbdTestClient> {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  return openExport(socket, name);
}
