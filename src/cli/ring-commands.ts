import { Option, type Command } from 'commander';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { PeerRecord, RingRecord } from '../model/records.js';
import { ringPhase } from '../ring/transition.js';
import { formatSize } from '../util/size.js';
import { arg, examples, type CommandKit } from './action.js';
import type { CliContext } from './context.js';
import { RING_EDIT_ATTEMPTS_MAX } from './defaults.js';
import { UsageError } from './errors.js';
import { renderJson, renderTable } from './output.js';
import { parseCount } from './parse.js';
import { MANUAL_CHANGE_TYPES, planManualChange, planSetReplication, type ManualChangeType } from './ring-edit.js';

export interface RingEdit<T> {
  readonly ring: RingRecord;
  readonly previous: RingRecord;
  readonly result: T;
  readonly changed: boolean;
}

/**
 * Re-reads, re-plans and compare-and-swaps until the edit lands or there is
 * nothing to change; gives up after a bounded number of lost races.
 */
export async function editRing<T>(
  ctx: CliContext,
  plan: (ring: RingRecord, peers: PeerRecord[]) => { next: RingRecord | null; result: T } | Promise<{ next: RingRecord | null; result: T }>,
): Promise<RingEdit<T>> {
  const md = ctx.metadata();
  for (let attempt = 1; attempt <= RING_EDIT_ATTEMPTS_MAX; attempt++) {
    const [ring, peers] = await Promise.all([md.getRing(), md.listPeers()]);
    const { next, result } = await plan(ring, peers);
    if (next === null) return { ring, previous: ring, result, changed: false };
    try {
      await md.setRing(next);
      return { ring: next, previous: ring, result, changed: true };
    } catch (err) {
      if (!isTorusError(err, 'TORUS_ERR_CLUSTER_CONFLICT') || attempt === RING_EDIT_ATTEMPTS_MAX) throw err;
      ctx.logger.debug({ attempt }, 'ring changed under us; re-planning');
    }
  }
  throw new TorusError('TORUS_ERR_CLUSTER_CONFLICT', 'the ring kept changing; retry');
}

/** One line: `ring version 7: moving (peer add x), replication 2, minReplicas 1, 3 member(s)`. */
export function describeRing(ring: RingRecord): string {
  const t = ring.transition;
  const phase = t === null ? 'stable' : `${t.phase} (${t.reason})`;
  return `ring version ${ring.version}: ${phase}, replication ${ring.replication}, minReplicas ${ring.minReplicas}, ${ring.members.length} member(s)`;
}

function ringTable(ring: RingRecord, peers: readonly PeerRecord[]): string {
  const byUuid = new Map(peers.map((p) => [p.uuid, p]));
  const total = ring.members.reduce((s, m) => s + m.weight, 0);
  const rows = ring.members.map((m) => {
    const p = byUuid.get(m.uuid);
    return [m.uuid, p?.address ?? '', p ? 'OK' : 'DOWN', formatSize(m.weight), `${total > 0 ? ((m.weight / total) * 100).toFixed(2) : '0.00'}%`];
  });
  const lines = [
    `ring version ${ring.version}, ${ringPhase(ring)}, replication ${ring.replication}, minReplicas ${ring.minReplicas}, ${ring.members.length} member(s)`,
  ];
  const t = ring.transition;
  if (t !== null) {
    lines.push(
      `transition: ${t.phase}, started at ring version ${t.startedVersion} on ${t.startedAt}: ${t.reason}`,
      `  from: replication ${t.from.replication}, member(s) ${t.from.members.map((m) => m.uuid).join(', ') || '(none)'}`,
    );
  }
  return `${lines.join('\n')}\n${renderTable(['UUID', 'ADDRESS', 'STATUS', 'WEIGHT', 'SHARE'], rows, { align: ['left', 'left', 'left', 'right', 'right'] })}`;
}

async function ringGet(ctx: CliContext): Promise<void> {
  const md = ctx.metadata();
  const [ring, peers] = await Promise.all([md.getRing(), md.listPeers()]);
  ctx.out(ctx.json ? renderJson(ring) : ringTable(ring, peers));
}

function noteFewMembers(ctx: CliContext, ring: RingRecord): void {
  if (ring.members.length > 0 && ring.members.length < ring.replication) {
    ctx.note(`torusctl: note: the ring has ${ring.members.length} member(s), so blocks get min(${ring.replication}, members) copies until more peers join`);
  }
}

function describeEdit(edit: RingEdit<unknown>): string {
  const { ring, previous } = edit;
  if (!edit.changed) return `nothing changed: ${describeRing(ring)}\n`;
  const moves = ring.transition !== null && ring.transition.startedVersion === ring.version;
  const tail = moves ? '; the peers move blocks to the new placement ("torusctl cluster status" shows progress)' : '; no block moves';
  return `ring version ${previous.version} -> ${ring.version}: replication ${ring.replication}, minReplicas ${ring.minReplicas}, ${ring.members.length} member(s), ${ringPhase(ring)}${tail}\n`;
}

async function setReplication(ctx: CliContext, n: number, opts: { min?: number }): Promise<void> {
  const edit = await editRing(ctx, (ring) => ({ next: planSetReplication(ring, n, opts.min, ctx.io.now()), result: null }));
  noteFewMembers(ctx, edit.ring);
  if (ctx.json) ctx.out(renderJson({ changed: edit.changed, previousReplication: edit.previous.replication, previousMinReplicas: edit.previous.minReplicas, ring: edit.ring }));
  else ctx.out(describeEdit(edit));
}

function parseUuids(text: string): string[] {
  return text
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u.length > 0);
}

async function manualChange(
  ctx: CliContext,
  opts: { type: ManualChangeType; replication: number; min?: number; uuids?: string[]; allPeers?: boolean; force?: boolean },
  path: string,
): Promise<void> {
  if (opts.uuids !== undefined && opts.allPeers) throw new UsageError('give --uuids or --all-peers, not both', path);
  const md = ctx.metadata();
  const edit = await editRing(ctx, async (ring, peers) => {
    const volumes = opts.type === 'empty' ? (await md.listVolumes()).length : 0;
    const change = { type: opts.type, replication: opts.replication, min: opts.min, uuids: opts.uuids ?? [], allPeers: opts.allPeers === true, force: opts.force === true };
    return { next: planManualChange(ring, peers, change, volumes, ctx.io.now()), result: null };
  });
  noteFewMembers(ctx, edit.ring);
  if (ctx.json) ctx.out(renderJson({ changed: edit.changed, type: opts.type, ring: edit.ring }));
  else ctx.out(describeEdit(edit));
}

export function registerRingCommands(program: Command, kit: CommandKit): void {
  const ring = program
    .command('ring')
    .summary('show or change the placement ring')
    .description(
      'The ring decides which peers hold each block: its members (with weights), the replication R and minReplicas, the ' +
        'owners that must take a write. Every change of placement is a transition: the peers copy blocks to their new ' +
        'owners while writes reach old and new owners, then the old owners let go. Members change with "peer add" and "peer remove".',
    )
    .addHelpText('after', examples(['$ torusctl ring get', '$ torusctl ring set-replication 3', '$ torusctl ring manual-change --type mod --replication 2 --all-peers']));

  ring
    .command('get')
    .summary('print the ring: version, phase, replication, minReplicas, transition and members')
    .description(
      'Prints the ring version, its phase (stable, or moving/settled during a transition), replication and minReplicas; ' +
        'during a transition, where it started, why, and the placement it moves from; then each member with its address ' +
        '(if the peer reports), weight (its capacity in bytes) and share of the blocks. STATUS is DOWN for a member with no live peer record.',
    )
    .addHelpText('after', examples(['$ torusctl ring get', '$ torusctl ring get -o json']))
    .action(kit.action((ctx) => ringGet(ctx)));

  ring
    .command('set-replication')
    .argument('<n>', 'copies of each block (1-16)', parseCount)
    .summary('set how many peers hold each block, and how many must take a write')
    .description(
      'Changes the replication R of the ring, and minReplicas M, the owners of a block that must take a write for it to ' +
        'be acknowledged (default R - floor(R/2): 1 for R=2, 2 for R=3; 1 <= M <= R). A change of R is a ring transition: ' +
        'the peers copy blocks to their new owners ("torusctl cluster status" shows progress). A change of M alone moves ' +
        'nothing. Written by compare-and-swap: a concurrent ring change makes it re-read and retry. With fewer members ' +
        'than R, each block gets one copy per member.',
    )
    .addOption(new Option('--min <m>', 'owners that must take a write (default R - floor(R/2))').argParser(parseCount))
    .addHelpText('after', examples(['$ torusctl ring set-replication 3', '$ torusctl ring set-replication 3 --min 3']))
    .action(kit.action((ctx, cmd) => setReplication(ctx, Number(arg(cmd, 0)), cmd.opts())));

  ring
    .command('manual-change')
    .summary('replace the ring members and replication (Torus compatibility)')
    .description(
      'Sets the ring members and replication in one transition. Accepted for compatibility with Torus, whose ring types ' +
        'were placement algorithms: torus always places blocks by weighted rendezvous hashing, whatever --type says. The ' +
        'type only says which members the ring gets: empty (none; refused while volumes exist unless --force, since their ' +
        'blocks would have no owner), single (exactly one UUID), mod or ketama (the UUIDs given, or every live peer). ' +
        "A member's weight is its peer's capacity, or its current ring weight when it does not report.",
    )
    .addOption(new Option('--type <type>', 'ring type').choices([...MANUAL_CHANGE_TYPES]).makeOptionMandatory())
    .addOption(new Option('--replication <n>', 'copies of each block (1-16)').argParser(parseCount).makeOptionMandatory())
    .addOption(new Option('--min <m>', 'owners that must take a write (default R - floor(R/2))').argParser(parseCount))
    .addOption(new Option('--uuids <a,b,...>', 'member UUIDs, comma-separated').argParser(parseUuids))
    .option('--all-peers', 'every live peer becomes a member')
    .option('--force', 'empty the ring even though volumes exist')
    .addHelpText(
      'after',
      examples([
        '$ torusctl ring manual-change --type mod --replication 2 --all-peers',
        '$ torusctl ring manual-change --type single --replication 1 --uuids 5726a9c4-1d7b-11e6-9e26-5cf9388d5d60',
        '$ torusctl ring manual-change --type empty --replication 2 --force',
      ]),
    )
    .action(kit.action((ctx, cmd) => manualChange(ctx, cmd.opts(), 'torusctl ring manual-change')));
}
