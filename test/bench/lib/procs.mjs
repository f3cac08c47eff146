// Every process the bench starts goes through one Supervisor, so that all of
// them are stopped on exit, failure or Ctrl-C (newest first: torusd still
// talks to etcd while it stops). Also: bounded waits and one-shot commands.
import { execFile, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';

const STOP_TIMEOUT_MS = 15_000;

export class BenchError extends Error {}

/** Quotes one argument for a shell command line that a reader can paste. */
export function shellQuote(arg) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${String(arg).replace(/'/g, `'\\''`)}'`;
}

export function commandLine(cmd, args) {
  return [cmd, ...args].map(shellQuote).join(' ');
}

export class Supervisor {
  #running = new Set();
  #say;

  constructor({ say }) {
    this.#say = say;
  }

  /**
   * Starts CMD ARGS with stdout and stderr appended to logFile. The handle's
   * `exited` resolves (never rejects) with { code, signal } when it ends.
   */
  start(name, cmd, args, { logFile, env, cwd } = {}) {
    const fd = logFile ? openSync(logFile, 'a') : 'ignore';
    let child;
    try {
      child = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: env ?? process.env, cwd });
    } finally {
      if (typeof fd === 'number') closeSync(fd);
    }
    const handle = {
      name,
      pid: child.pid,
      child,
      logFile,
      commandLine: commandLine(cmd, args),
      done: false,
      exitCode: null,
      exitSignal: null,
    };
    handle.exited = new Promise((resolve) => {
      const finish = (code, signal) => {
        if (handle.done) return;
        handle.done = true;
        handle.exitCode = code;
        handle.exitSignal = signal;
        this.#running.delete(handle);
        resolve({ code, signal });
      };
      child.once('exit', finish);
      child.once('error', (err) => {
        handle.spawnError = err;
        finish(null, null);
      });
    });
    if (child.pid === undefined) {
      // spawn failed synchronously enough to have no pid (ENOENT): the 'error' event follows.
      handle.pid = null;
    }
    this.#running.add(handle);
    return handle;
  }

  /** SIGTERM, then SIGKILL after STOP_TIMEOUT_MS. */
  async stop(handle) {
    if (handle.done) return;
    try {
      process.kill(handle.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    const timer = setTimeout(() => {
      if (!handle.done) {
        this.#say(`${handle.name} (pid ${handle.pid}) ignored SIGTERM for ${STOP_TIMEOUT_MS / 1000}s; sending SIGKILL`);
        try {
          process.kill(handle.pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }, STOP_TIMEOUT_MS);
    await handle.exited;
    clearTimeout(timer);
  }

  /** SIGKILL at once (a peer that dies without stopping). */
  async kill9(handle) {
    if (handle.done) return;
    try {
      process.kill(handle.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await handle.exited;
  }

  async stopAll() {
    const all = [...this.#running].reverse();
    // Clients and servers first (fio, nbdkit, torusd), etcd last.
    const late = all.filter((h) => h.name.startsWith('etcd'));
    await Promise.all(all.filter((h) => !late.includes(h)).map((h) => this.stop(h)));
    await Promise.all(late.map((h) => this.stop(h)));
  }
}

/** Runs a one-shot command; resolves with { code, stdout, stderr } (rejects only on timeout or spawn failure). */
export function run(cmd, args, { timeoutMs = 60_000, env } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 256 * 1024 * 1024, encoding: 'utf8', env: env ?? process.env }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        if (err.killed) return reject(new BenchError(`${commandLine(cmd, args)} did not finish within ${timeoutMs / 1000}s`));
        return reject(err);
      }
      resolve({ code: err ? err.code : 0, stdout, stderr });
    });
  });
}

/** Like run() but a non-zero exit is an error carrying the command's output. */
export async function runOk(cmd, args, opts) {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new BenchError(`${commandLine(cmd, args)} exited ${r.code}\n${(r.stderr || r.stdout).trim()}`);
  return r;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls check() until it returns a truthy value, which is returned. Fails
 * after timeoutMs, or early when one of the handles in `alive` exited (with
 * the tail of its log).
 */
export async function waitFor(what, check, { timeoutMs, intervalMs = 200, alive = [] }) {
  const deadline = Date.now() + timeoutMs;
  let lastErr = null;
  for (;;) {
    for (const h of alive) {
      if (h.done) throw new BenchError(`${h.name} exited (code ${h.exitCode}, signal ${h.exitSignal}) while waiting for ${what}\n${logTail(h.logFile)}`);
    }
    try {
      const v = await check();
      if (v) return v;
      lastErr = null;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) {
      const logs = alive.map((h) => `--- ${h.name} (${h.logFile}):\n${logTail(h.logFile)}`).join('\n');
      throw new BenchError(`${what}: not within ${Math.round(timeoutMs / 1000)}s${lastErr ? ` (last error: ${lastErr.message})` : ''}${logs ? `\n${logs}` : ''}`);
    }
    await sleep(intervalMs);
  }
}

export function logTail(file, lines = 20) {
  if (!file) return '';
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '(no log)';
  }
}

/** GET url as text with a bounded wait; throws on non-2xx. */
export async function httpText(url, timeoutMs = 10_000) {
  const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await r.text();
  if (!r.ok) throw new BenchError(`GET ${url}: ${r.status} ${text.slice(0, 200)}`);
  return text;
}

export async function httpJson(url, timeoutMs = 10_000) {
  return JSON.parse(await httpText(url, timeoutMs));
}
