import type { Command } from 'commander';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { PeerRecord, RingRecord } from '../model/records.js';
import { formatSize } from '../util/size.js';
import { arg, examples, type CommandKit } from './action.js';
import type { CliContext } from './context.js';
import { RING_EDIT_ATTEMPTS_MAX } from './defaults.js';
import { renderJson, renderTable } from './output.js';
import { parseCount } from './parse.js';
import { planSetReplication } from './ring-edit.js';

export interface RingEdit<T> {
  readonly ring: RingRecord;
  readonly result: T;
  readonly changed: boolean;
}

/**
 * Re-reads, re-plans and compare-and-swaps until the edit lands or there is
 * nothing to change; gives up after a bounded number of lost races.
 */
export async function editRing<T>(
  ctx: CliContext,
  plan: (ring: RingRecord, peers: PeerRecord[]) => { next: RingRecord | null; result: T },
): Promise<RingEdit<T>> {
  const md = ctx.metadata();
  for (let attempt = 1; attempt <= RING_EDIT_ATTEMPTS_MAX; attempt++) {
    const [ring, peers] = await Promise.all([md.getRing(), md.listPeers()]);
    const { next, result } = plan(ring, peers);
    if (next === null) return { ring, result, changed: false };
    try {
      await md.setRing(next);
      return { ring: next, result, changed: true };
    } catch (err) {
      if (!isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT') || attempt === RING_EDIT_ATTEMPTS_MAX) throw err;
      ctx.logger.debug({ attempt }, 'ring changed under us; re-planning');
    }
  }
  throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', 'the ring kept changing; retry');
}

function ringTable(ring: RingRecord, peers: readonly PeerRecord[]): string {
  const byUuid = new Map(peers.map((p) => [p.uuid, p]));
  const total = ring.members.reduce((s, m) => s + m.weight, 0);
  const rows = ring.members.map((m) => {
    const p = byUuid.get(m.uuid);
    return [m.uuid, p?.address ?? '', p ? 'OK' : 'DOWN', formatSize(m.weight), `${total > 0 ? ((m.weight / total) * 100).toFixed(2) : '0.00'}%`];
  });
  const head = `ring version ${ring.version}, replication ${ring.replication}, ${ring.members.length} member(s)\n`;
  return head + renderTable(['UUID', 'ADDRESS', 'STATUS', 'WEIGHT', 'SHARE'], rows, { align: ['left', 'left', 'left', 'right', 'right'] });
}

async function ringGet(ctx: CliContext): Promise<void> {
  const md = ctx.metadata();
  const [ring, peers] = await Promise.all([md.getRing(), md.listPeers()]);
  ctx.out(ctx.json ? renderJson(ring) : ringTable(ring, peers));
}

async function setReplication(ctx: CliContext, n: number): Promise<void> {
  const edit = await editRing(ctx, (ring) => ({ next: planSetReplication(ring, n), result: ring.replication }));
  if (edit.ring.members.length < n) {
    ctx.note(`torusctl: note: the ring has ${edit.ring.members.length} member(s), so blocks get min(${n}, members) copies until more peers join`);
  }
  if (ctx.json) ctx.out(renderJson({ changed: edit.changed, previousReplication: edit.result, ring: edit.ring }));
  else if (!edit.changed) ctx.out(`ring replication is already ${n} (version ${edit.ring.version}); nothing changed\n`);
  else ctx.out(`ring replication set from ${edit.result} to ${n} (ring version ${edit.ring.version})\n`);
}

export function registerRingCommands(program: Command, kit: CommandKit): void {
  const ring = program
    .command('ring')
    .summary('show or change the placement ring')
    .description('The ring decides which peers hold each block. Its members are changed with "peer add" and "peer remove".')
    .addHelpText('after', examples(['$ torusctl ring get', '$ torusctl ring set-replication 3']));

  ring
    .command('get')
    .summary('print the ring: version, replication and members with their weights')
    .description(
      'Prints the ring version, its replication and each member with its address (if the peer reports), weight ' +
        '(its capacity in bytes) and share of the blocks. STATUS is DOWN for a member with no live peer record.',
    )
    .addHelpText('after', examples(['$ torusctl ring get', '$ torusctl ring get -o json']))
    .action(kit.action((ctx) => ringGet(ctx)));

  ring
    .command('set-replication')
    .argument('<n>', 'copies of each block (1-16)', parseCount)
    .summary('set how many peers hold each block')
    .description(
      'Changes the replication of the ring by compare-and-swap (a concurrent ring change makes it re-read and retry). ' +
        'Peers move blocks to match; with fewer members than N, each block gets one copy per member.',
    )
    .addHelpText('after', examples(['$ torusctl ring set-replication 3']))
    .action(kit.action((ctx, cmd) => setReplication(ctx, Number(arg(cmd, 0)))));
}
