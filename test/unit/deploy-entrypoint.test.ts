/**
 * deploy/docker/entrypoint.sh, run for real with a fake torusd on PATH that
 * records its arguments: the Torus environment variables become torusd's
 * flags, DROP_MOUNT_BIN installs a working driver, bad values stop the
 * container. No container engine is needed (none runs on these machines).
 */
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveDaemonConfig } from '../../src/daemon/config.js';
import { ensureFlexDriver } from '../helpers/flex-driver.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const ENTRYPOINT = path.join(ROOT, 'deploy/docker/entrypoint.sh');

let tmp: string;
let bin: string;
let record: string;

beforeAll(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'torus-entrypoint-'));
  bin = path.join(tmp, 'bin');
  mkdirSync(bin);
  record = path.join(tmp, 'args');
  // Prints each argument on its own line, as torusd would receive them.
  writeFileSync(path.join(bin, 'torusd'), `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a"; done > "${record}"\n`);
  chmodSync(path.join(bin, 'torusd'), 0o755);
});

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Run {
  code: number;
  stderr: string;
  args: string[];
}

function entrypoint(env: Record<string, string>, args: string[] = []): Promise<Run> {
  rmSync(record, { force: true });
  // Only what a container would have: PATH and the variables given.
  const base = { PATH: `${bin}:/usr/bin:/bin`, TORUS_PLUGIN_DIR: path.join(tmp, 'plugin-absent'), ...env };
  return new Promise((resolve) => {
    execFile('/bin/sh', [ENTRYPOINT, ...args], { env: base, encoding: 'utf8' }, (err, _stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      const recorded = existsSync(record) ? readFileSync(record, 'utf8').split('\n').slice(0, -1) : [];
      resolve({ code, stderr, args: recorded });
    });
  });
}

/** The flags as a map (flag -> value, or true for a switch). */
function flags(args: string[]): Map<string, string | true> {
  const out = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      out.set(a, next);
      i++;
    } else {
      out.set(a, true);
    }
  }
  return out;
}

describe('entrypoint.sh: the Torus environment onto torusd flags', () => {
  it('the walkthrough DaemonSet env', async () => {
    const r = await entrypoint({
      ETCD_HOST: '10.3.0.100',
      STORAGE_SIZE: '5GiB',
      LISTEN_HOST: '10.2.55.2',
      AUTO_JOIN: '1',
      DEBUG_INIT: '1',
      DROP_MOUNT_BIN: '0',
    });
    expect(r.code).toBe(0);
    expect(r.args).toEqual([
      '--etcd', '10.3.0.100:2379',
      '--data-dir', '/data',
      '--size', '5GiB',
      '--peer-address', 'http://10.2.55.2:40000',
      '--host', '10.2.55.2',
      '--port', '4321',
      '--flex-socket', '/run/torus/flex.sock',
      '--flex-state-dir', '/var/lib/kubelet/plugins/coreos.com~torus',
      '--auto-join',
      '--debug-init',
    ]);
  });

  it('defaults when nothing is set', async () => {
    const r = await entrypoint({});
    expect(r.code).toBe(0);
    expect(Object.fromEntries(flags(r.args))).toEqual({
      '--etcd': '127.0.0.1:2379',
      '--data-dir': '/data',
      '--size': '2GiB',
      '--peer-address': 'http://127.0.0.1:40000',
      '--host': '127.0.0.1',
      '--port': '4321',
      '--flex-socket': '/run/torus/flex.sock',
      '--flex-state-dir': '/var/lib/kubelet/plugins/coreos.com~torus',
    });
  });

  it('every variable: ETCD_PORT, PEER_ADDRESS, LISTEN_HTTP_PORT, DEBUG, the secret, extra arguments, flex off', async () => {
    const r = await entrypoint(
      {
        ETCD_HOST: 'etcd-torus',
        ETCD_PORT: '32379',
        STORAGE_SIZE: '20%',
        LISTEN_HOST: '0.0.0.0',
        PEER_ADDRESS: 'tdp://node-1.example:40001',
        LISTEN_HTTP_PORT: '9100',
        AUTO_JOIN: 'true',
        DEBUG_INIT: 'no',
        DEBUG: 'on',
        TORUS_CLUSTER_SECRET_FILE: '/etc/torus/secret',
        TORUS_FLEX_SOCKET: '',
      },
      ['--nbd-address', '127.0.0.1:10810'],
    );
    expect(r.code).toBe(0);
    const f = flags(r.args);
    expect(f.get('--etcd')).toBe('etcd-torus:32379');
    expect(f.get('--size')).toBe('20%');
    expect(f.get('--peer-address')).toBe('tdp://node-1.example:40001');
    expect(f.get('--host')).toBe('0.0.0.0');
    expect(f.get('--port')).toBe('9100');
    expect(f.get('--auto-join')).toBe(true);
    expect(f.has('--debug-init')).toBe(false);
    expect(f.get('--debug')).toBe(true);
    expect(f.get('--cluster-secret-file')).toBe('/etc/torus/secret');
    expect(f.get('--nbd-address')).toBe('127.0.0.1:10810');
    expect(f.has('--flex-socket')).toBe(false);
  });

  it('the flags it produces are ones torusd accepts and resolve to the same settings', async () => {
    const r = await entrypoint({ ETCD_HOST: '10.3.0.100', STORAGE_SIZE: '5GiB', LISTEN_HOST: '10.2.55.2', AUTO_JOIN: '1', DEBUG: '1' });
    const f = flags(r.args);
    const cfg = resolveDaemonConfig(
      {
        etcd: f.get('--etcd') as string,
        dataDir: f.get('--data-dir') as string,
        size: f.get('--size') as string,
        peerAddress: f.get('--peer-address') as string,
        host: f.get('--host') as string,
        port: f.get('--port') as string,
        flexSocket: f.get('--flex-socket') as string,
        flexStateDir: f.get('--flex-state-dir') as string,
        autoJoin: f.get('--auto-join') === true,
        debug: f.get('--debug') === true,
      },
      {},
    );
    expect(cfg).toMatchObject({
      etcdEndpoints: ['10.3.0.100:2379'],
      dataDir: '/data',
      size: { bytes: 5 * 1024 ** 3 },
      http: { host: '10.2.55.2', port: 4321 },
      autoJoin: true,
      debug: true,
      flex: { socket: '/run/torus/flex.sock', stateDir: '/var/lib/kubelet/plugins/coreos.com~torus' },
    });
    expect(cfg.peerAddress).toMatchObject({ host: '10.2.55.2', port: 40000 });
  });

  it.each([
    [{ AUTO_JOIN: 'maybe' }, /AUTO_JOIN="maybe": expected 1 or 0/],
    [{ DEBUG_INIT: '2' }, /DEBUG_INIT="2": expected 1 or 0/],
    [{ ETCD_HOST: 'etcd:2379' }, /ETCD_HOST="etcd:2379" holds a port/],
    [{ DROP_MOUNT_BIN: '1' }, /DROP_MOUNT_BIN=1 but the driver .* is missing/],
  ])('refuses %j instead of guessing, and never starts torusd', async (env, re) => {
    const r = await entrypoint(env as Record<string, string>);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(re);
    expect(r.args).toEqual([]);
  });

  it('says LOG_FLAGS is not used', async () => {
    const r = await entrypoint({ LOG_FLAGS: '--log-level=debug' });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/LOG_FLAGS is not used by torus/);
  });
});

describe('entrypoint.sh: DROP_MOUNT_BIN=1', () => {
  it('installs the static driver as coreos.com~torus/torus, a standalone executable that answers kubelet', async () => {
    const driver = ensureFlexDriver();
    const plugin = path.join(tmp, 'plugin');
    mkdirSync(plugin);
    // An older driver already there (a DaemonSet upgrade): replaced whole.
    mkdirSync(path.join(plugin, 'coreos.com~torus'));
    writeFileSync(path.join(plugin, 'coreos.com~torus/torus'), 'old driver');
    const r = await entrypoint({ DROP_MOUNT_BIN: '1', TORUS_PLUGIN_DIR: plugin, TORUS_FLEX_DRIVER: driver });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/installed the FlexVolume driver as .*coreos.com~torus\/torus/);
    const installed = path.join(plugin, 'coreos.com~torus/torus');
    expect(readFileSync(installed).equals(readFileSync(driver))).toBe(true);
    expect(statSync(installed).mode & 0o777).toBe(0o755);
    expect(existsSync(path.join(plugin, 'coreos.com~torus/.torus.new'))).toBe(false);
    // Run as kubelet would, from the plugin dir, with no torusd around.
    const out = await new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(installed, ['init'], { env: {}, encoding: 'utf8' }, (err, stdout) => resolve({ code: err ? Number(err.code) : 0, stdout })),
    );
    expect(out).toEqual({ code: 0, stdout: '{"status":"Success","capabilities":{"attach":false}}\n' });
    // torusd still starts after the install.
    expect(r.args[0]).toBe('--etcd');
  });

  it('fails when the plugin dir is not mounted', async () => {
    const r = await entrypoint({ DROP_MOUNT_BIN: '1', TORUS_FLEX_DRIVER: ensureFlexDriver() });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/plugin-absent is not mounted/);
  });
});
