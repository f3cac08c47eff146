import type { Command } from 'commander';
import { createVolume, deleteVolume } from '../admin/volumes.js';
import { TorusError } from '../errors/torus-error.js';
import type { VolumeLockRecord, VolumeRecord } from '../model/records.js';
import { formatSize, parseSize } from '../util/size.js';
import { arg, examples, type CommandKit } from './action.js';
import type { CliContext } from './context.js';
import { renderCsv, renderJson, renderTable } from './output.js';

async function createBlock(ctx: CliContext, name: string, sizeText: string, opts: { overcommit?: string }): Promise<void> {
  const size = parseSize(sizeText);
  let overcommit: number | null = null;
  if (opts.overcommit !== undefined) {
    overcommit = Number(opts.overcommit);
    if (opts.overcommit.trim() === '' || !Number.isFinite(overcommit)) throw new TorusError('TORUS_ERR_ARG_INVALID', `--overcommit ${JSON.stringify(opts.overcommit)} is not a number`);
  }
  const volume = await createVolume(ctx.metadata(), name, size, { overcommit });
  if (ctx.json) ctx.out(renderJson(volume));
  else ctx.out(`created block volume "${volume.name}" (id ${volume.id}): ${formatSize(volume.size)}, block size ${formatSize(volume.blockSize)}\n`);
}

interface VolumeStatus {
  readonly volume: VolumeRecord;
  readonly lock: VolumeLockRecord | null;
}

const VOLUME_HEADERS = ['VOLUME', 'NAME', 'SIZE', 'TYPE', 'STATUS'] as const;

async function list(ctx: CliContext, opts: { csv?: boolean; si?: boolean }): Promise<void> {
  const md = ctx.metadata();
  const volumes = await md.listVolumes();
  // Sequential on purpose: one etcd round trip at a time, whatever the volume count.
  const statuses: VolumeStatus[] = [];
  for (const volume of volumes) statuses.push({ volume, lock: await md.getVolumeLock(volume.id) });
  if (ctx.json) {
    ctx.out(
      renderJson({
        volumes: statuses.map(({ volume, lock }) => ({
          ...volume,
          status: lock ? 'in-use' : 'free',
          ...(lock ? { holder: lock.holder, lockedSince: lock.acquiredAt, lockToken: lock.token } : {}),
        })),
      }),
    );
    return;
  }
  const rows = statuses.map(({ volume, lock }) => [String(volume.id), volume.name, formatSize(volume.size, opts.si === true), volume.type, lock ? 'in-use' : 'free']);
  if (opts.csv) ctx.out(renderCsv(VOLUME_HEADERS, rows));
  else ctx.out(renderTable(VOLUME_HEADERS, rows, { align: ['right', 'left', 'right', 'left', 'left'] }));
}

async function remove(ctx: CliContext, name: string): Promise<void> {
  const volume = await deleteVolume(ctx.metadata(), name);
  if (ctx.json) ctx.out(renderJson({ deleted: volume }));
  else ctx.out(`deleted volume "${volume.name}" (id ${volume.id}, ${formatSize(volume.size)}); the peers free its blocks in the background\n`);
}

export function registerVolumeCommands(program: Command, kit: CommandKit): void {
  const volume = program
    .command('volume')
    .summary('create, list and delete volumes')
    .description('Volumes are block devices served over NBD (torusblk); their blocks are spread over the ring.')
    .addHelpText('after', examples(['$ torusctl volume create-block pad 1GiB', '$ torusctl volume list', '$ torusctl volume delete pad']));

  volume
    .command('create-block')
    .argument('<name>', 'volume name: 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit')
    .argument('<size>', 'size such as 1GiB, 500MiB, 2G (binary) or 500MB (decimal); a multiple of 512 bytes')
    .option('--overcommit <ratio>', 'reserve SIZE x replication against the live ring capacity times this ratio (1 = no overcommit), as the CSI driver does; refused beyond it')
    .summary('create a block volume')
    .description(
      'Creates a block volume of the given size. Space is used on the peers only as blocks are written; without --overcommit ' +
        'nothing is reserved (thin provisioning), with it the create is refused when the volumes would reserve more than the ring has.',
    )
    .addHelpText('after', examples(['$ torusctl volume create-block pad 1GiB', '$ torusctl -o json volume create-block db 500MiB', '$ torusctl volume create-block db 20GiB --overcommit 1']))
    .action(kit.action((ctx, cmd) => createBlock(ctx, arg(cmd, 0), arg(cmd, 1), cmd.opts())));

  volume
    .command('list')
    .summary('list volumes and whether a writer holds them')
    .description(
      'Lists the volumes: VOLUME is the id, STATUS is in-use while a writer (torusd serving it over NBD) holds its ' +
        'lock, else free. With -o json an in-use volume also names the holder.',
    )
    .option('--csv', 'print comma-separated values instead of a table')
    .option('--si', 'sizes in powers of 1000 (kB, MB, GB) instead of 1024')
    .addHelpText('after', examples(['$ torusctl volume list', '$ torusctl volume list --csv', '$ torusctl -o json volume list']))
    .action(kit.action((ctx, cmd) => list(ctx, cmd.opts())));

  volume
    .command('delete')
    .argument('<name>', 'the volume to delete')
    .summary('delete a volume (refused while it is in use)')
    .description(
      'Deletes the volume record. Refused while a writer or a reader lock holds the volume (the error names it). The peers watch ' +
        'for deleted volumes and free their blocks in the background.',
    )
    .addHelpText('after', examples(['$ torusctl volume delete pad']))
    .action(kit.action((ctx, cmd) => remove(ctx, arg(cmd, 0))));
}
