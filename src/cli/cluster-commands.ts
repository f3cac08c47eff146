import { Option, type Command } from 'commander';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { ClusterConfig, RingRecord } from '../model/records.js';
import { formatSize, parseSize } from '../util/size.js';
import { examples, type CommandKit } from './action.js';
import { readLine } from './confirm.js';
import type { CliContext } from './context.js';
import { CONFIRM_LINE_BYTES_MAX, CONFIRM_TIMEOUT_MS, DEFAULT_BLOCK_SIZE_BYTES, DEFAULT_REPLICATION } from './defaults.js';
import { renderJson, renderKeyValues } from './output.js';
import { parseCount } from './parse.js';

function describeConfig(ctx: CliContext, config: ClusterConfig, ring: RingRecord | null): string {
  const pairs: [string, string][] = [
    ['etcd', ctx.endpoint],
    ['block size', `${formatSize(config.blockSize)} (${config.blockSize} bytes)`],
    ['replication', String(config.replication)],
    ['created', config.createdAt],
  ];
  if (ring) {
    pairs.push(['ring version', String(ring.version)], ['ring replication', String(ring.replication)], ['ring members', String(ring.members.length)]);
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

export function registerClusterCommands(program: Command, kit: CommandKit): void {
  program
    .command('init')
    .summary('format the cluster: set block size and replication in etcd')
    .description(
      'Formats a new torus cluster by writing its configuration (block size, replication) and an empty ring to etcd. ' +
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
      'Deletes every key under the torus prefix in etcd: cluster configuration, volumes, locks and ring. ' +
        'Without --yes-i-am-sure it asks you to type YES on the terminal, and refuses when stdin is not a terminal. ' +
        'Peers keep their data dirs; a freshly initialised cluster does not reuse them.',
    )
    .option('--yes-i-am-sure', 'do not ask for confirmation')
    .addHelpText('after', examples(['$ torusctl wipe', '$ torusctl -C 127.0.0.1:2379 wipe --yes-i-am-sure']))
    .action(kit.action((ctx, cmd) => wipe(ctx, cmd.opts())));
}
