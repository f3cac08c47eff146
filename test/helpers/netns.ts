/**
 * A second "host" on this machine for partition tests: a network namespace
 * joined to the root namespace by a veth pair with a private /30 (10.x.y.z).
 * A process started inside it (`ip netns exec`) reaches the root side at
 * `hostIp` and is reached at `nsIp`; `drop()` makes the namespace's side of
 * the link drop every packet in both directions (nftables), as a cable cut
 * or a switch that stopped forwarding would, without any error for either
 * end; `restore()` lets traffic through again.
 *
 * Names and addresses come from the test process's pid, and a /30 already
 * in use is skipped, so parallel runs on one machine do not collide.
 * destroy() removes everything and is safe to call twice; an exit hook
 * removes what a crashed run left.
 */
import { execFileSync, spawn } from 'node:child_process';
import { run, type ExecResult } from './nbd-exec.js';
import { requireTool } from './tools.js';

const TABLE = 'torus_e2e_drop';

async function ip(args: string[]): Promise<ExecResult> {
  const r = await run('ip', args, { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

export class NetNs {
  private destroyed = false;
  private dropping = false;

  private constructor(
    readonly name: string,
    /** The root namespace's end of the veth pair. */
    readonly vethHost: string,
    readonly vethNs: string,
    /** Address of the root side, reachable from inside. */
    readonly hostIp: string,
    /** Address inside the namespace, reachable from the root side. */
    readonly nsIp: string,
  ) {}

  /** Creates the namespace and the link; fails with how to fix it when `ip` or `nft` is missing. */
  static async create(tag: string): Promise<NetNs> {
    requireTool('ip', 'iproute2');
    requireTool('nft', 'nftables');
    const pid = process.pid;
    const name = `torus-e2e-${tag}-${pid}`;
    const id = (pid % 4096).toString(36);
    const vethHost = `tq${tag.slice(0, 3)}${id}h`.slice(0, 15);
    const vethNs = `tq${tag.slice(0, 3)}${id}n`.slice(0, 15);
    const used = (await ip(['-o', '-4', 'addr', 'show'])).stdout;
    for (let k = 0; k < 64; k++) {
      const n = (pid + k * 7919) % (50 * 256 * 64);
      const prefix = `10.${200 + (n % 50)}.${Math.floor(n / 50) % 256}`;
      const base = (Math.floor(n / (50 * 256)) % 64) * 4;
      const hostIp = `${prefix}.${base + 1}`;
      const nsIp = `${prefix}.${base + 2}`;
      if (used.includes(` ${hostIp}/`) || used.includes(` ${nsIp}/`)) continue;
      const ns = new NetNs(name, vethHost, vethNs, hostIp, nsIp);
      try {
        await ns.setUp();
      } catch (err) {
        await ns.destroy();
        throw err;
      }
      return ns;
    }
    throw new Error(`no free /30 in 10.200.0.0/14 for network namespace ${name}`);
  }

  private async setUp(): Promise<void> {
    registerExitCleanup(this);
    await ip(['netns', 'add', this.name]);
    await ip(['link', 'add', this.vethHost, 'type', 'veth', 'peer', 'name', this.vethNs]);
    await ip(['link', 'set', this.vethNs, 'netns', this.name]);
    await ip(['addr', 'add', `${this.hostIp}/30`, 'dev', this.vethHost]);
    await ip(['link', 'set', this.vethHost, 'up']);
    await ip(['netns', 'exec', this.name, 'ip', 'addr', 'add', `${this.nsIp}/30`, 'dev', this.vethNs]);
    await ip(['netns', 'exec', this.name, 'ip', 'link', 'set', this.vethNs, 'up']);
    await ip(['netns', 'exec', this.name, 'ip', 'link', 'set', 'lo', 'up']);
  }

  /** Drops every packet in and out of the namespace's veth (nftables inside the namespace). */
  async drop(): Promise<void> {
    const rules = [
      `table inet ${TABLE} {`,
      `  chain in { type filter hook input priority -300; policy accept; iifname "${this.vethNs}" drop; }`,
      `  chain out { type filter hook output priority -300; policy accept; oifname "${this.vethNs}" drop; }`,
      '}',
    ].join('\n');
    const r = await runStdin('ip', ['netns', 'exec', this.name, 'nft', '-f', '-'], rules);
    if (r.code !== 0) throw new Error(`nft -f - in ${this.name} exited ${r.code}: ${r.stderr}`);
    this.dropping = true;
  }

  async restore(): Promise<void> {
    if (!this.dropping) return;
    await ip(['netns', 'exec', this.name, 'nft', 'delete', 'table', 'inet', TABLE]);
    this.dropping = false;
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    // Deleting the namespace deletes its end of the pair, and with it the other end.
    await run('ip', ['netns', 'del', this.name], { timeoutMs: 10_000 }).catch(() => undefined);
    await run('ip', ['link', 'del', this.vethHost], { timeoutMs: 10_000 }).catch(() => undefined);
    live.delete(this);
  }

  /** Synchronous, for the exit hook. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const args of [['netns', 'del', this.name], ['link', 'del', this.vethHost]]) {
      try {
        execFileSync('ip', args, { stdio: 'ignore', timeout: 5000 });
      } catch {
        // already gone
      }
    }
  }
}

const live = new Set<NetNs>();
let hooked = false;

function registerExitCleanup(ns: NetNs): void {
  live.add(ns);
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const n of live) n.destroySync();
  });
}

function runStdin(cmd: string, args: string[], input: string): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(input);
  });
}
