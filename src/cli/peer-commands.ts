import type { Command } from 'commander';
import { formatSize } from '../util/size.js';
import { arg, argList, examples, type CommandKit } from './action.js';
import type { CliContext } from './context.js';
import { BALANCE_TOLERANCE_PERCENT } from './defaults.js';
import { UsageError } from './errors.js';
import { renderCsv, renderJson, renderTable } from './output.js';
import { buildPeerView, PEER_HEADERS, peerFooter, peerRows } from './peer-view.js';
import { planAddMembers, planRemoveMember } from './ring-edit.js';
import { editRing } from './ring-commands.js';

async function listPeers(ctx: CliContext, opts: { csv?: boolean; si?: boolean }): Promise<void> {
  const md = ctx.metadata();
  const [peers, ring] = await Promise.all([md.listPeers(), md.getRing()]);
  const view = buildPeerView(peers, ring, ctx.io.now(), BALANCE_TOLERANCE_PERCENT);
  if (ctx.json) {
    ctx.out(renderJson(view));
    return;
  }
  const rows = peerRows(view, opts.si === true);
  if (opts.csv) {
    ctx.out(renderCsv(PEER_HEADERS, rows));
    return;
  }
  ctx.out(renderTable(PEER_HEADERS, rows, { align: ['left', 'left', 'right', 'right', 'left', 'left', 'right', 'right'] }));
  ctx.out(`${peerFooter(view)}\n`);
}

async function addPeers(ctx: CliContext, selectors: string[], opts: { allPeers?: boolean }, path: string): Promise<void> {
  if (selectors.length === 0 && !opts.allPeers) throw new UsageError('name at least one peer (ADDRESS or UUID) or give --all-peers', path);
  const edit = await editRing(ctx, (ring, peers) => {
    const plan = planAddMembers(ring, peers, selectors, opts.allPeers === true);
    return { next: plan.next, result: plan };
  });
  const { added, alreadyMembers } = edit.result;
  if (ctx.json) {
    ctx.out(renderJson({ changed: edit.changed, added: added.map((p) => p.uuid), alreadyMembers: alreadyMembers.map((p) => p.uuid), ring: edit.ring }));
    return;
  }
  for (const p of added) ctx.out(`added peer ${p.uuid} (${p.address}, weight ${formatSize(p.capacity)}) to the ring\n`);
  for (const p of alreadyMembers) ctx.out(`peer ${p.uuid} (${p.address}) is already in the ring\n`);
  if (added.length === 0 && alreadyMembers.length === 0) ctx.out('no peers to add\n');
  ctx.out(`ring version ${edit.ring.version}: ${edit.ring.members.length} member(s), replication ${edit.ring.replication}\n`);
}

async function removePeer(ctx: CliContext, selector: string, opts: { force?: boolean }): Promise<void> {
  const edit = await editRing(ctx, (ring, peers) => {
    const plan = planRemoveMember(ring, peers, selector, opts.force === true);
    return { next: plan.next, result: plan.removed };
  });
  if (ctx.json) {
    ctx.out(renderJson({ changed: edit.changed, removed: edit.result.uuid, ring: edit.ring }));
    return;
  }
  ctx.out(`removed peer ${edit.result.uuid} from the ring (ring version ${edit.ring.version}: ${edit.ring.members.length} member(s))\n`);
}

const LIST_HELP =
  'Lists the peers (torusd processes) that report to etcd and the ring members that do not. ' +
  'Columns: ADDRESS and UUID of the peer; SIZE its capacity; USED bytes stored; MEMBER is OK (in the ring and ' +
  'reporting), Avail (reporting, not in the ring: "torusctl peer add" it) or DOWN (in the ring, no live record); ' +
  'UPDATED when it last reported; REB/REP rebalance/replication traffic; DATA used/capacity. ' +
  `The footer says Balanced: true when every OK member's DATA is within ${BALANCE_TOLERANCE_PERCENT} percentage points of ` +
  "the members' mean, and Usage: the cluster's used/capacity.";

function listCommand(cmd: Command, kit: CommandKit): Command {
  return cmd
    .summary('list peers, their ring membership and usage')
    .description(LIST_HELP)
    .option('--csv', 'print comma-separated values instead of a table')
    .option('--si', 'sizes in powers of 1000 (kB, MB, GB) instead of 1024')
    .action(kit.action((ctx, c) => listPeers(ctx, c.opts())));
}

export function registerPeerCommands(program: Command, kit: CommandKit): void {
  listCommand(program.command('list-peers'), kit).addHelpText('after', examples(['$ torusctl list-peers', '$ torusctl list-peers --csv --si', '$ torusctl -o json list-peers']));

  const peer = program
    .command('peer')
    .summary('list peers and change which of them are ring members')
    .description('Peers register themselves in etcd when torusd starts; only ring members store blocks.')
    .addHelpText('after', examples(['$ torusctl peer list', '$ torusctl peer add --all-peers', '$ torusctl peer remove 127.0.0.1:40000']));

  listCommand(peer.command('list'), kit).addHelpText('after', examples(['$ torusctl peer list', '$ torusctl peer list --csv']));

  peer
    .command('add')
    .argument('[peers...]', 'ADDRESS (host:port) or UUID of live peers')
    .summary('add peers to the ring')
    .description(
      'Adds live peers (see "torusctl list-peers") to the ring with a weight equal to their capacity, by ' +
        'compare-and-swap on the ring version. Peers already in the ring are left as they are.',
    )
    .option('--all-peers', 'add every live peer that is not yet a member')
    .addHelpText('after', examples(['$ torusctl peer add 127.0.0.1:40000 127.0.0.1:40001', '$ torusctl peer add --all-peers']))
    .action(kit.action((ctx, c) => addPeers(ctx, argList(c, 0), c.opts(), 'torusctl peer add')));

  peer
    .command('remove')
    .argument('<peer>', 'ADDRESS (host:port) or UUID of a ring member')
    .summary('remove a peer from the ring')
    .description(
      'Removes a member from the ring (it may be DOWN). Refused when fewer members than the replication factor ' +
        'would remain, since blocks would lose copies, unless --force. Blocks are moved by the peers (rebalance).',
    )
    .option('--force', 'remove even when fewer members than the replication factor remain')
    .addHelpText('after', examples(['$ torusctl peer remove 127.0.0.1:40000', '$ torusctl peer remove 5726a9c4-1d7b-11e6-9e26-5cf9388d5d60 --force']))
    .action(kit.action((ctx, c) => removePeer(ctx, arg(c, 0), c.opts())));
}
