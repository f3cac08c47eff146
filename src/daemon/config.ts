import { TorusError } from '../errors/torus-error.js';
import { defaultEtcdEndpoint } from '../model/defaults.js';
import { parsePeerAddress, type PeerAddress } from '../peer/address.js';
import { parseSize, parseSizeOrPercent } from '../util/size.js';
import { parseWriteLevel, type WriteLevel } from '../replication/settings.js';

/**
 * torusd's settings, resolved from flags over the environment variables of
 * the Torus container (flags win). Pure: the caller passes flags and env.
 */
export interface DaemonFlags {
  etcd?: string;
  dataDir?: string;
  size?: string;
  peerAddress?: string;
  host?: string;
  port?: string;
  nbdAddress?: string;
  autoJoin?: boolean;
  debugInit?: boolean;
  debug?: boolean;
  clusterSecretFile?: string;
  writeLevel?: string;
  replicaTimeout?: string;
  downOutInterval?: string;
  rebalanceRate?: string;
  scrubInterval?: string;
  checkpointInterval?: string;
  flexSocket?: string;
  flexStateDir?: string;
}

export interface DaemonConfig {
  readonly etcdEndpoints: string[];
  readonly dataDir: string;
  readonly size: { bytes: number } | { percent: number };
  /** Where the peer listener binds and what other peers are told. */
  readonly peerAddress: PeerAddress;
  readonly http: { host: string; port: number };
  readonly nbd: { host: string; port: number };
  readonly autoJoin: boolean;
  readonly debugInit: boolean;
  readonly debug: boolean;
  readonly clusterSecretFile: string | null;
  /** docs/replication.md, "Write levels". */
  readonly writeLevel: WriteLevel;
  readonly replicaTimeoutMs: number;
  /** 0: never take DOWN members out of the ring. */
  readonly downOutIntervalMs: number;
  readonly rebalanceBytesPerSec: number;
  /** 0: no periodic scrub. */
  readonly scrubIntervalMs: number;
  /** How often the store makes the CRC tables of changed blocks durable (README, "Checksums across crashes"). */
  readonly checkpointIntervalMs: number;
  /** The FlexVolume driver's unix socket and state folder; null: no FlexVolume service. */
  readonly flex: { readonly socket: string; readonly stateDir: string } | null;
}

export const DEFAULTS = {
  etcd: '127.0.0.1:2379',
  dataDir: 'torus-data',
  size: '1GiB',
  listenHost: '127.0.0.1',
  httpPort: 4321,
  peerPort: 40000,
  nbdAddress: '127.0.0.1:10809',
  writeLevel: 'all',
  replicaTimeout: '8s',
  downOutInterval: '10m',
  rebalanceRate: '100MiB',
  scrubInterval: '24h',
  checkpointInterval: '60s',
  /** Under kubelet's own plugin folder, so staging mounts propagate to the host and outlive a torusd container. */
  flexStateDir: '/var/lib/kubelet/plugins/coreos.com~torus',
} as const;

export function resolveDaemonConfig(flags: DaemonFlags, env: Record<string, string | undefined>): DaemonConfig {
  const etcd = flags.etcd ?? defaultEtcdEndpoint(env);
  const listenHost = env.LISTEN_HOST || DEFAULTS.listenHost;
  const peer = flags.peerAddress ?? (env.PEER_ADDRESS || `http://${listenHost}:${DEFAULTS.peerPort}`);
  const httpHost = flags.host ?? listenHost;
  const httpPort = parsePort(flags.port ?? env.LISTEN_HTTP_PORT ?? String(DEFAULTS.httpPort), '--port');
  const nbd = parseHostPort(flags.nbdAddress ?? DEFAULTS.nbdAddress, '--nbd-address');
  return {
    etcdEndpoints: etcd.split(',').map((e) => normaliseEtcd(e.trim())),
    dataDir: flags.dataDir ?? DEFAULTS.dataDir,
    size: parseSizeOrPercent(flags.size ?? (env.STORAGE_SIZE || DEFAULTS.size)),
    peerAddress: parsePeerAddress(peer, { allowPortZero: true }),
    http: { host: httpHost, port: httpPort },
    nbd,
    autoJoin: flags.autoJoin ?? truthy(env.AUTO_JOIN),
    debugInit: flags.debugInit ?? truthy(env.DEBUG_INIT),
    debug: flags.debug ?? truthy(env.DEBUG),
    clusterSecretFile: flags.clusterSecretFile ?? env.TORUS_CLUSTER_SECRET_FILE ?? null,
    writeLevel: parseLevel(flags.writeLevel ?? env.WRITE_LEVEL ?? DEFAULTS.writeLevel),
    replicaTimeoutMs: parseDuration(flags.replicaTimeout ?? DEFAULTS.replicaTimeout, '--replica-timeout', 100),
    downOutIntervalMs: parseDuration(flags.downOutInterval ?? DEFAULTS.downOutInterval, '--down-out-interval', 0),
    rebalanceBytesPerSec: parseRate(flags.rebalanceRate ?? DEFAULTS.rebalanceRate),
    scrubIntervalMs: parseDuration(flags.scrubInterval ?? DEFAULTS.scrubInterval, '--scrub-interval', 0),
    checkpointIntervalMs: parseDuration(flags.checkpointInterval ?? DEFAULTS.checkpointInterval, '--checkpoint-interval', 100),
    flex: resolveFlex(flags, env),
  };
}

function parseLevel(text: string): WriteLevel {
  const level = parseWriteLevel(text);
  if (level === null) throw new TorusError('TORUS_ERR_ARG_INVALID', `--write-level "${text}": expected all, one or local`);
  return level;
}

/** `8s`, `500ms`, `10m`, `24h`, `0` (off where allowed). */
export function parseDuration(text: string, flag: string, minMs: number): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new TorusError('TORUS_ERR_ARG_INVALID', `${flag} "${text}": expected a duration such as 500ms, 8s, 10m or 24h`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  const ms = Math.round(Number(m[1]) * unit);
  if (ms !== 0 && ms < minMs) throw new TorusError('TORUS_ERR_ARG_INVALID', `${flag} "${text}": at least ${minMs} ms`);
  if (ms === 0 && minMs > 0) throw new TorusError('TORUS_ERR_ARG_INVALID', `${flag} "${text}": must be more than 0`);
  return ms;
}

/** `100MiB` or `100MiB/s`: bytes per second. */
function parseRate(text: string): number {
  const bytes = parseSize(text.replace(/\/s(ec)?$/, ''));
  if (bytes <= 0) throw new TorusError('TORUS_ERR_ARG_INVALID', `--rebalance-rate "${text}": expected a positive rate such as 100MiB`);
  return bytes;
}

function resolveFlex(flags: DaemonFlags, env: Record<string, string | undefined>): DaemonConfig['flex'] {
  const socket = flags.flexSocket ?? (env.TORUS_FLEX_SOCKET || undefined);
  if (socket === undefined) return null;
  const stateDir = flags.flexStateDir ?? DEFAULTS.flexStateDir;
  for (const [flag, p] of [['--flex-socket', socket], ['--flex-state-dir', stateDir]] as const) {
    if (!p.startsWith('/')) throw new TorusError('TORUS_ERR_ARG_INVALID', `${flag} "${p}": expected an absolute path`);
  }
  return { socket, stateDir };
}

function truthy(v: string | undefined): boolean {
  return v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());
}

function normaliseEtcd(e: string): string {
  const stripped = e.replace(/^https?:\/\//, '');
  if (!/^[^:/\s]+:\d+$/.test(stripped)) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `--etcd "${e}": expected host:port, e.g. 127.0.0.1:2379`);
  }
  return stripped;
}

function parsePort(text: string, flag: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `${flag} "${text}": expected a port number from 0 to 65535`);
  }
  return Number(text);
}

export function parseHostPort(text: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text.trim());
  if (!m) throw new TorusError('TORUS_ERR_ARG_INVALID', `${flag} "${text}": expected host:port, e.g. 127.0.0.1:10809`);
  return { host: (m[1] ?? m[2])!, port: parsePort(m[3]!, flag) };
}
