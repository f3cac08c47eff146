/**
 * The FlexVolume driver executables as kubelet runs them: the static C
 * driver (native/build/flex/torus, built here when missing or stale) and
 * `torusblk flex`. Results carry stdout and stderr apart, so tests can check
 * that only the JSON object is printed.
 */
import { execFile, spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './build.js';
import { TORUSBLK } from './torusd.js';

export const FLEX_DRIVER = path.join(ROOT, 'native/build/flex/torus');
const FLEX_SOURCE = path.join(ROOT, 'native/flex/torus-flex.c');

export function ensureFlexDriver(): string {
  let stale = true;
  try {
    stale = statSync(FLEX_DRIVER).mtimeMs < statSync(FLEX_SOURCE).mtimeMs;
  } catch {
    stale = true;
  }
  if (stale) {
    const r = spawnSync('bash', [path.join(ROOT, 'scripts/build-flex.sh')], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
    if (r.status !== 0) throw new Error(`scripts/build-flex.sh failed:\n${r.stdout}${r.stderr}`);
  }
  return FLEX_DRIVER;
}

/** True when the ELF file has no PT_INTERP segment: it needs no dynamic loader, so no libc on the node. */
export function isStaticElf(file: string): boolean {
  const b = readFileSync(file);
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) throw new Error(`${file} is not a 64-bit ELF file`);
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (b.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) return false;
  }
  return true;
}

export interface DriverRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export function runCmd(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env, timeoutMs = 180_000): Promise<DriverRun> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, timeout: timeoutMs, encoding: 'utf8', maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') return reject(err);
      resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
    });
  });
}

/** The C driver, with the socket path kubelet's environment would not set (tests use their own). */
export function flexC(socket: string | null, args: readonly string[]): Promise<DriverRun> {
  const env = { ...process.env };
  delete env.TORUS_FLEX_SOCKET;
  if (socket !== null) env.TORUS_FLEX_SOCKET = socket;
  return runCmd(FLEX_DRIVER, args, env);
}

export function flexTs(socket: string, args: readonly string[]): Promise<DriverRun> {
  return runCmd(process.execPath, [TORUSBLK, 'flex', ...args], { ...process.env, TORUS_FLEX_SOCKET: socket });
}

/** Parses the driver's stdout: exactly one JSON object and a newline. */
export function driverJson(r: DriverRun): Record<string, unknown> {
  if (!/^\{[^\n]*\}\n$/.test(r.stdout)) throw new Error(`driver stdout is not one JSON line: ${JSON.stringify(r.stdout)} (stderr ${JSON.stringify(r.stderr)})`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}
