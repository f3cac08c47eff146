import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';
import { requireTool } from './tools.js';

export interface EtcdHandle {
  /** host:port for --etcd. */
  readonly endpoint: string;
  readonly clientPort: number;
  readonly dataDir: string;
  /** The current run's process (a new one after restart()). */
  readonly process: ChildProcess;
  /** Stops etcd (SIGTERM, or SIGKILL with `hard`) and starts it again on the same data dir and ports; resolves once it serves. */
  restart(opts?: { hard?: boolean }): Promise<void>;
  /** Stops etcd (SIGTERM) and keeps its data dir: an outage until resume(). */
  halt(): Promise<void>;
  /** Starts etcd again after halt() on the same data dir and ports; resolves once it serves. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 30_000;

/**
 * Starts a real etcd (Debian's etcd-server) on free loopback ports with a
 * temporary data dir; resolves once it serves clients.
 */
export async function startEtcd(): Promise<EtcdHandle> {
  const bin = requireTool('etcd', 'etcd-server');
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'torus-etcd-'));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const client = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const args = [
    '--name', 'test',
    '--data-dir', dataDir,
    '--listen-client-urls', client,
    '--advertise-client-urls', client,
    '--listen-peer-urls', peer,
    '--initial-advertise-peer-urls', peer,
    '--initial-cluster', `test=${peer}`,
    '--log-level', 'error',
    '--logger', 'zap',
  ];
  let stderr = '';
  let child!: ChildProcess;
  let exited!: Promise<void>;
  const launch = (): void => {
    child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ETCD_UNSUPPORTED_ARCH: process.arch === 'arm64' ? 'arm64' : '' } });
    child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
    exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  };
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  // Ready when /health answers; etcd prints no stable readiness line at --log-level error.
  const ready = async (): Promise<void> => {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (!alive()) throw new Error(`etcd exited with ${child.exitCode ?? child.signalCode}: ${stderr}`);
      try {
        const res = await fetch(`${client}/health`, { signal: AbortSignal.timeout(1000) });
        if (res.ok && ((await res.json()) as { health?: string }).health === 'true') return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`etcd did not become healthy within ${READY_TIMEOUT_MS} ms: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  launch();
  const handle: EtcdHandle = {
    endpoint: `127.0.0.1:${clientPort}`,
    clientPort,
    dataDir,
    get process() {
      return child;
    },
    async restart(opts = {}) {
      if (alive()) child.kill(opts.hard ? 'SIGKILL' : 'SIGTERM');
      await exited;
      launch();
      await ready();
    },
    async halt() {
      if (alive()) child.kill('SIGTERM');
      await exited;
    },
    async resume() {
      if (alive()) throw new Error('etcd is running: halt() it first');
      launch();
      await ready();
    },
    async stop() {
      if (alive()) child.kill('SIGKILL');
      await exited;
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  try {
    await ready();
  } catch (err) {
    await handle.stop();
    throw err;
  }
  return handle;
}
