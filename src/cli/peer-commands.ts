import type { Command } from 'commander';
import { TorusError } from '../errors/torus-error.js';
import type { RingRecord } from '../model/records.js';
import { ringPhase } from '../ring/transition.js';
import { formatSize } from '../util/size.js';
import { arg, argList, examples, type CommandKit } from './action.js';
import { moveProgress, unbalancedReasons } from './cluster-view.js';
import type { CliContext } from './context.js';
import { DRAIN_POLL_INTERVAL_MS } from './defaults.js';
import { UsageError } from './errors.js';
import { renderCsv, renderJson, renderPlainTable } from './output.js';
import { buildPeerView, PEER_ALIGN, PEER_HEADERS, peerFooter, peerRows } from './peer-view.js';
import { ProgressReporter, type DrainState } from './progress.js';
import { describeRing, editRing } from './ring-commands.js';
import { planAddMembers, planRemoveMember } from './ring-edit.js';

async function listPeers(ctx: CliContext, opts: { csv?: boolean; si?: boolean }): Promise<void> {
  const md = ctx.metadata();
  const [peers, ring, volumes, stale, health] = await Promise.all([md.listPeers(), md.getRing(), md.listVolumes(), md.listStale(), md.listVolumeHealth()]);
  const view = buildPeerView(peers, ring, ctx.io.now(), unbalancedReasons(ring, volumes, stale, health));
  if (ctx.json) {
    ctx.out(renderJson(view));
    return;
  }
  const rows = peerRows(view, opts.si === true);
  if (opts.csv) {
    ctx.out(renderCsv(PEER_HEADERS, rows));
    return;
  }
  ctx.out(renderPlainTable(PEER_HEADERS, rows, { align: PEER_ALIGN }));
  ctx.out(`${peerFooter(view)}\n`);
}

async function addPeers(ctx: CliContext, selectors: string[], opts: { allPeers?: boolean }, path: string): Promise<void> {
  if (selectors.length === 0 && !opts.allPeers) throw new UsageError('name at least one peer (ADDRESS or UUID) or give --all-peers', path);
  const edit = await editRing(ctx, (ring, peers) => {
    const plan = planAddMembers(ring, peers, selectors, opts.allPeers === true, ctx.io.now());
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
  ctx.out(`${describeRing(edit.ring)}\n`);
  if (edit.changed && edit.ring.transition !== null) ctx.out('the peers copy blocks to their new owners; "torusctl cluster status" shows progress\n');
}

/** Reads what the drain of `uuid` has come to. */
async function drainState(ctx: CliContext, uuid: string): Promise<{ state: DrainState; ring: RingRecord }> {
  const md = ctx.metadata();
  const ring = await md.getRing();
  const t = ring.transition;
  const [volumes, moves, acks] = await Promise.all([
    t === null ? Promise.resolve([]) : md.listVolumes(),
    t === null ? Promise.resolve([]) : md.listVolumeMoves(t.startedVersion),
    t?.phase === 'settled' ? md.listRingAcks() : Promise.resolve([]),
  ]);
  return {
    ring,
    state: {
      uuid,
      ringVersion: ring.version,
      phase: ringPhase(ring),
      progress: moveProgress(ring, volumes, moves),
      member: ring.members.some((m) => m.uuid === uuid),
      acks: { live: acks.length, current: acks.filter((a) => a.ringVersion >= ring.version).length },
    },
  };
}

/** Waits until the ring is stable and no longer names `uuid`, showing progress. */
async function waitForDrain(ctx: CliContext, uuid: string): Promise<DrainState> {
  const mode = ctx.json ? 'json' : ctx.io.stdoutIsTTY === true ? 'tty' : 'lines';
  const progress = new ProgressReporter((t) => ctx.out(t), mode, ctx.clock);
  ctx.note(`torusctl: waiting until ${uuid} has left the ring; interrupting stops the waiting, not the drain ("torusctl cluster status" shows it)`);
  for (;;) {
    const { state, ring } = await drainState(ctx, uuid);
    if (ring.transition === null) {
      if (state.member) {
        throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', `peer ${uuid} was added back to the ring (ring version ${ring.version}) while it drained`, { details: { uuid, ringVersion: ring.version } });
      }
      progress.finish(state);
      return state;
    }
    progress.update(state);
    await ctx.sleep(DRAIN_POLL_INTERVAL_MS);
  }
}

async function removePeer(ctx: CliContext, selector: string, opts: { force?: boolean; wait?: boolean }): Promise<void> {
  const edit = await editRing(ctx, (ring, peers) => {
    const plan = planRemoveMember(ring, peers, selector, opts.force === true, ctx.io.now());
    return { next: plan.next, result: plan };
  });
  const { removed, wasDown } = edit.result;
  const wait = opts.wait !== false;
  if (ctx.json && !wait) {
    ctx.out(renderJson({ changed: edit.changed, removed: removed.uuid, wasDown, ring: edit.ring }));
    return;
  }
  if (ctx.json) {
    ctx.out(`${JSON.stringify({ event: 'removed', removed: removed.uuid, wasDown, ring: edit.ring })}\n`);
  } else {
    const how = wasDown ? 'its blocks are re-replicated from the other owners' : 'its blocks move to the other members';
    ctx.out(`removing peer ${removed.uuid} from the ring: ${how}\n${describeRing(edit.ring)}\n`);
  }
  if (!wait) return;
  await waitForDrain(ctx, removed.uuid);
}

const LIST_HELP =
  'Lists the peers (torusd processes) that report to etcd and the ring members that do not. ' +
  'Columns: ADDRESS and UUID of the peer; SIZE its capacity; USED the bytes it stores; MEMBER is OK (in the ring and ' +
  'reporting), Avail (reporting, not in the ring: "torusctl peer add" it) or DOWN (in the ring, no live record); ' +
  'UPDATED when it last reported; REB/REP DATA the bytes per second it copies to rebalance (ring transitions), catch up ' +
  'stale replicas and repair. The footer says Balanced: true when the ring is stable (no transition), no replica is ' +
  'recorded stale, and every volume was checked at the current ring version with no block short of its copies ' +
  '(-o json says why not); Usage is the cluster\'s used over capacity.';

function listCommand(cmd: Command, kit: CommandKit): Command {
  return cmd
    .summary('list peers, their ring membership, usage and rebalance rate')
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
    .summary('add peers to the ring (a ring transition)')
    .description(
      'Adds live peers (see "torusctl list-peers") to the ring with a weight equal to their capacity, by ' +
        'compare-and-swap on the ring version. This starts a ring transition: writes reach old and new owners while the ' +
        'peers copy blocks to the new ones, then the old owners let go ("torusctl cluster status" shows progress). Peers ' +
        'already in the ring are left as they are.',
    )
    .option('--all-peers', 'add every live peer that is not yet a member')
    .addHelpText('after', examples(['$ torusctl peer add 127.0.0.1:40000 127.0.0.1:40001', '$ torusctl peer add --all-peers']))
    .action(kit.action((ctx, c) => addPeers(ctx, argList(c, 0), c.opts(), 'torusctl peer add')));

  peer
    .command('remove')
    .argument('<peer>', 'ADDRESS (host:port) or UUID of a ring member')
    .summary('drain a peer out of the ring (a ring transition)')
    .description(
      'Removes a member from the ring by a ring transition: its blocks are copied to the members that own them next ' +
        'before the ring stops naming it, so no block loses a copy. Then it waits until the ring is stable and the member ' +
        'gone, showing progress: the share of all blocks gone through, volumes moved, blocks scanned and copied (a line redrawn in place on a ' +
        'terminal, a line every 10 s otherwise, one JSON object per line with -o json). Interrupting stops the waiting, ' +
        'not the drain. Refused without --force when the member is DOWN (no live peer record: its blocks are ' +
        're-replicated from the other owners instead) or when fewer members than the replication would remain.',
    )
    .option('--force', 'remove a DOWN member, or one that leaves fewer members than the replication')
    .option('--no-wait', 'start the drain and return at once')
    .addHelpText(
      'after',
      examples(['$ torusctl peer remove 127.0.0.1:40000', '$ torusctl peer remove 127.0.0.1:40000 --no-wait', '$ torusctl peer remove 5726a9c4-1d7b-11e6-9e26-5cf9388d5d60 --force']),
    )
    .action(kit.action((ctx, c) => removePeer(ctx, arg(c, 0), c.opts())));
}
