import { Option, type Command } from 'commander';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { ClusterConfig, RingRecord } from '../model/records.js';
import { formatSize, parseSize } from '../util/size.js';
import { examples, type CommandKit } from './action.js';
import { readLine } from './confirm.js';
import type { CliContext } from './context.js';
import { CONFIRM_LINE_BYTES_MAX, CONFIRM_TIMEOUT_MS, DEFAULT_BLOCK_SIZE_BYTES, DEFAULT_REPLICATION } from './defaults.js';
import { buildClusterStatus, type ClusterStatus } from './cluster-view.js';
import { formatRate, renderJson, renderKeyValues, renderPlainTable } from './output.js';
import { parseCount } from './parse.js';

function describeConfig(ctx: CliContext, config: ClusterConfig, ring: RingRecord | null): string {
  const pairs: [string, string][] = [
    ['etcd', ctx.endpoint],
    ['block size', `${formatSize(config.blockSize)} (${config.blockSize} bytes)`],
    ['replication', String(config.replication)],
    ['created', config.createdAt],
  ];
  if (ring) {
    pairs.push(
      ['ring version', String(ring.version)],
      ['ring phase', ring.transition?.phase ?? 'stable'],
      ['ring replication', String(ring.replication)],
      ['ring minReplicas', String(ring.minReplicas)],
      ['ring members', String(ring.members.length)],
    );
  }
  return renderKeyValues(pairs);
}

async function view(ctx: CliContext): Promise<void> {
  const md = ctx.metadata();
  const config = await md.getClusterConfig();
  if (config === null) {
    throw new TorusError('TORUS_ERR_CLUSTER_NOT_INITIALISED', `the cluster in etcd at ${ctx.endpoint} is not initialised: run "torusctl init"`);
  }
  const ring = await md.getRing().catch((err: unknown) => {
    if (isTorusError(err, 'TORUS_ERR_CLUSTER_NOT_INITIALISED')) return null;
    throw err;
  });
  ctx.out(ctx.json ? renderJson({ etcd: ctx.endpoint, config, ring }) : describeConfig(ctx, config, ring));
}

async function init(ctx: CliContext, opts: { blockSize: string; replication: number; force?: boolean; view?: boolean }): Promise<void> {
  if (opts.view) return view(ctx);
  const blockSize = parseSize(opts.blockSize);
  const md = ctx.metadata();
  let config: ClusterConfig;
  try {
    config = await md.initCluster({ blockSize, replication: opts.replication }, { force: opts.force === true });
  } catch (err) {
    if (!isTorusError(err, 'TORUS_ERR_CLUSTER_ALREADY_INITIALISED')) throw err;
    const existing = await md.getClusterConfig().catch(() => null);
    const what = existing ? ` (block size ${formatSize(existing.blockSize)}, replication ${existing.replication}, created ${existing.createdAt})` : '';
    throw new TorusError(
      'TORUS_ERR_CLUSTER_ALREADY_INITIALISED',
      `the cluster in etcd at ${ctx.endpoint} is already initialised${what}; "torusctl init --view" shows it, "torusctl init --force" wipes every volume and starts over`,
      { cause: err },
    );
  }
  if (ctx.json) ctx.out(renderJson({ etcd: ctx.endpoint, config, forced: opts.force === true }));
  else ctx.out(`initialised torus in etcd at ${ctx.endpoint}: block size ${formatSize(config.blockSize)}, replication ${config.replication}${opts.force ? ' (previous data wiped)' : ''}\n`);
}

async function wipe(ctx: CliContext, opts: { yesIAmSure?: boolean }): Promise<void> {
  if (!opts.yesIAmSure) {
    if (ctx.io.stdin.isTTY !== true) {
      throw new TorusError(
        'TORUS_ERR_CONFIRMATION_REQUIRED',
        `refusing to wipe etcd at ${ctx.endpoint}: stdin is not a terminal to confirm on; pass --yes-i-am-sure`,
      );
    }
    ctx.io.stderr(`type YES to delete all torus data in etcd at ${ctx.endpoint}: `);
    const answer = await readLine(ctx.io.stdin, CONFIRM_LINE_BYTES_MAX, CONFIRM_TIMEOUT_MS);
    if (answer?.trim() !== 'YES') {
      throw new TorusError('TORUS_ERR_CONFIRMATION_REQUIRED', `wipe of etcd at ${ctx.endpoint} not confirmed (expected YES); nothing was deleted`);
    }
  }
  const deleted = await ctx.metadata().wipe();
  if (ctx.json) ctx.out(renderJson({ etcd: ctx.endpoint, keysDeleted: deleted }));
  else ctx.out(`wiped torus data in etcd at ${ctx.endpoint}: ${deleted} key(s) deleted\n`);
}

async function clusterStatus(ctx: CliContext): Promise<void> {
  const md = ctx.metadata();
  const ring = await md.getRing();
  const t = ring.transition;
  const [peers, volumes, stale, moves, health, acks] = await Promise.all([
    md.listPeers(),
    md.listVolumes(),
    md.listStale(),
    t === null ? Promise.resolve([]) : md.listVolumeMoves(t.startedVersion),
    md.listVolumeHealth(),
    md.listRingAcks(),
  ]);
  const status = buildClusterStatus({ ring, peers, volumes, stale, moves, health, acks });
  ctx.out(ctx.json ? renderJson(status) : describeStatus(status));
}

function describeStatus(s: ClusterStatus): string {
  const r = s.ring;
  const pairs: [string, string][] = [['ring', `version ${r.version}, ${r.phase}, replication ${r.replication}, minReplicas ${r.minReplicas}, ${r.members.length} member(s)`]];
  if (r.transition !== null) {
    const t = r.transition;
    pairs.push(['transition', `started at version ${t.startedVersion} on ${t.startedAt}: ${t.reason}; from replication ${t.fromReplication} over ${t.fromMembers.length} member(s)`]);
  }
  const p = s.progress;
  if (p !== null) {
    const unavailable = p.unavailable > 0 ? `, ${p.unavailable} block(s) with no reachable current copy (the move cannot finish)` : '';
    pairs.push(['moves', `${p.percent.toFixed(1)}% of the blocks gone through, ${p.volumesDone}/${p.volumes} volume(s) moved, ${p.scanned} block(s) scanned, ${p.copied} copied${unavailable}`]);
  }
  pairs.push(
    ['ring acks', `${s.acks.current}/${s.acks.live} live process(es) use version ${r.version}`],
    ['rebalance', formatRate(s.rebalanceBytesPerSec)],
    ['down', s.down.length === 0 ? 'none' : s.down.join(', ')],
    ['stale', `${s.stale.length} record(s), ${s.stale.reduce((n, x) => n + x.blocks, 0)} block(s)`],
    ['degraded', `${s.degraded.length} volume(s)`],
    ['balanced', s.balanced ? 'true' : `false (${s.unbalancedBecause.join('; ')})`],
  );
  let text = renderKeyValues(pairs);
  if (s.stale.length > 0) {
    text += `\nstale replicas (the peer is not read for these blocks until it has caught up):\n`;
    text += renderPlainTable(['VOLUME', 'ID', 'PEER', 'BLOCKS', 'ALL'], s.stale.map((x) => [x.volume, String(x.volumeId), x.peer, String(x.blocks), x.all ? 'yes' : 'no']), {
      align: ['left', 'right', 'left', 'right', 'left'],
    });
  }
  if (s.degraded.length > 0) {
    text += `\ndegraded volumes (blocks with fewer than ${r.replication} current copies):\n`;
    text += renderPlainTable(
      ['VOLUME', 'ID', 'SHORT BLOCKS', 'STALE PEERS', 'LAST CHECK SHORT'],
      s.degraded.map((d) => [d.volume, String(d.volumeId), String(d.shortBlocks), d.stalePeers.join(',') || '-', d.healthShort === null ? '-' : String(d.healthShort)]),
      { align: ['left', 'right', 'right', 'left', 'right'] },
    );
  }
  return text;
}

const STATUS_HELP =
  'Shows where replication stands. ring: version, phase (stable; moving: blocks are being copied to new owners, ' +
  'writes reach old and new owners; settled: every volume moved, waiting for every process to use the new placement), ' +
  'replication R, minReplicas (owners that must take a write) and members. transition: where and why the change ' +
  'started, and the placement it moves from. moves: volumes whose move for this transition is done, out of all volumes, ' +
  'with blocks scanned and copied so far, and blocks whose every current copy is on peers that are down (the ' +
  'transition cannot finish while there are any). ring acks: live processes doing I/O that use the current ring ' +
  'version (a transition advances only when all do). rebalance: bytes per second the peers copy, summed. down: ring ' +
  'members with no live peer record (not written, not read). stale: replicas that missed writes, per volume and peer, ' +
  'with their block counts (ALL: the whole volume). degraded: volumes with blocks that have fewer than R current ' +
  'copies (some replica is stale for them), or whose last check found such blocks. balanced: stable ring, no stale ' +
  'replica, every volume checked at this ring version and complete.';

export function registerClusterCommands(program: Command, kit: CommandKit): void {
  const cluster = program
    .command('cluster')
    .summary('the state of the cluster as a whole')
    .description('Commands about the whole cluster: replication state, ring transitions, stale replicas.')
    .addHelpText('after', examples(['$ torusctl cluster status', '$ torusctl cluster status -o json']));

  cluster
    .command('status')
    .summary('ring phase, transition progress, stale and degraded volumes, down members, rebalance rate')
    .description(STATUS_HELP)
    .addHelpText('after', examples(['$ torusctl cluster status', '$ torusctl -o json cluster status']))
    .action(kit.action((ctx) => clusterStatus(ctx)));

  program
    .command('init')
    .summary('format the cluster: set block size and replication in etcd')
    .description(
      'Formats a new torus cluster by writing its configuration (block size, replication), an empty ring (minReplicas ' +
        'R - floor(R/2)) and a random cluster secret (peers authenticate with it) to etcd, in one transaction. ' +
        'The block size is fixed for the life of the cluster. Refuses to touch a cluster that is already initialised ' +
        'unless --force is given, which first deletes ALL torus data in etcd (every volume). --view only prints the ' +
        'current configuration.',
    )
    .addOption(new Option('--block-size <size>', 'bytes per block: a power of two from 4KiB to 64MiB').default(formatSize(DEFAULT_BLOCK_SIZE_BYTES).replace(' ', '')))
    .addOption(new Option('--replication <n>', 'how many peers hold each block (1-16)').default(DEFAULT_REPLICATION).argParser(parseCount))
    .option('--force', 're-initialise an existing cluster, deleting all its data')
    .option('--view', 'print the current configuration and change nothing')
    .addHelpText('after', examples(['$ torusctl init', '$ torusctl -C 10.0.0.5:2379 init --block-size 512KiB --replication 3', '$ torusctl init --view -o json']))
    .action(kit.action((ctx, cmd) => init(ctx, cmd.opts())));

  program
    .command('wipe')
    .summary('delete ALL torus data (config, volumes, ring) from etcd')
    .description(
      'Deletes every key under the torus prefix in etcd: cluster configuration and secret, volumes, locks, ring and the ' +
        'replication records (stale, move, health). ' +
        'Without --yes-i-am-sure it asks you to type YES on the terminal, and refuses when stdin is not a terminal. ' +
        'Peers keep their data dirs; a freshly initialised cluster does not reuse them.',
    )
    .option('--yes-i-am-sure', 'do not ask for confirmation')
    .addHelpText('after', examples(['$ torusctl wipe', '$ torusctl -C 127.0.0.1:2379 wipe --yes-i-am-sure']))
    .action(kit.action((ctx, cmd) => wipe(ctx, cmd.opts())));
}
