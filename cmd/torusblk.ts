#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import '../src/daemon/threadpool.js';
import { Command, Option } from 'commander';
import pino from 'pino';
import { NbdGateway } from '../src/client/nbd-gateway.js';
import { runFlexDriver } from '../src/k8s/flex/client.js';
import { DEFAULT_FLEX_SOCKET, FLEX_SOCKET_ENV } from '../src/k8s/flex/protocol.js';
import { parseHostPort } from '../src/daemon/config.js';
import { defaultEtcdEndpoint } from '../src/model/defaults.js';
import { TorusError } from '../src/errors/torus-error.js';
import { VERSION } from '../src/version.js';

/**
 * `torusblk flex <call> [args...]`: the FlexVolume driver for nodes that have
 * Node.js (the static C driver in native/flex/ is what DROP_MOUNT_BIN
 * installs). kubelet reads stdout and stderr combined as one JSON object, so
 * this path bypasses commander (whose errors and help go to stderr) and
 * silences Node's own warnings.
 */
async function flexMain(argv: string[]): Promise<never> {
  process.removeAllListeners('warning');
  const socket = process.env[FLEX_SOCKET_ENV] || DEFAULT_FLEX_SOCKET;
  const out = await runFlexDriver(argv, socket);
  process.stdout.write(out.stdout, () => process.exit(out.code));
  return new Promise<never>(() => undefined);
}
if (process.argv[2] === 'flex') await flexMain(process.argv.slice(3));

const program = new Command('torusblk')
  .description('torus block clients: serve volumes over NBD from any machine that reaches the cluster.')
  .version(VERSION)
  .addOption(new Option('-C, --etcd <host:port>', 'etcd endpoint (env ETCD_HOST, ETCD_PORT)').default(defaultEtcdEndpoint(process.env)))
  .option('--debug', 'log data-path detail')
  .showHelpAfterError('(run torusblk --help for usage)')
  .configureOutput({ outputError: (str, write) => write(str.split('\n')[0] + '\n') });

program
  .command('nbdserve')
  .description(
    'Serve every volume over NBD (export name = volume name) until SIGINT/SIGTERM. Blocks are read and written on the peers of the ring; writing takes the volume lock, so a volume another process writes is refused with the holder named.\n\n' +
      'Example:\n  torusblk nbdserve -l 127.0.0.1:10809\n  nbdinfo nbd://127.0.0.1:10809/pad',
  )
  .option('-l, --listen <host:port>', 'address to listen on; loopback by default because NBD has no authentication', '127.0.0.1:10809')
  .option('--read-only', 'serve volumes read-only: no lock is taken, so this works beside a writer')
  .option('--cluster-secret-file <file>', 'file holding the shared secret peers authenticate with')
  .action(async (opts: { listen: string; readOnly?: boolean; clusterSecretFile?: string }) => {
    const global = program.opts<{ etcd: string; debug?: boolean }>();
    const logger = pino({ level: global.debug ? 'debug' : 'info' }, pino.destination(2));
    let gateway: NbdGateway | null = null;
    try {
      const listen = parseHostPort(opts.listen, '--listen');
      const secret = opts.clusterSecretFile ? readFileSync(opts.clusterSecretFile, 'utf8').trim() : '';
      gateway = new NbdGateway({ etcdEndpoints: global.etcd.split(','), listen, mode: opts.readOnly ? 'ro' : 'rw', secret, logger });
      const bound = await gateway.start();
      logger.info({ nbd: `${bound.host}:${bound.port}`, mode: opts.readOnly ? 'ro' : 'rw' }, 'torusblk nbdserve ready');
    } catch (err) {
      process.stderr.write(`torusblk: ${err instanceof TorusError ? err.toLine() : String(err)}\n`);
      await gateway?.stop().catch(() => undefined);
      process.exit(1);
    }
    const stop = () => {
      void gateway!.stop().then(() => process.exit(0), () => process.exit(1));
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });

program
  .command('flex')
  .description(
    `The kubelet FlexVolume driver (coreos.com/torus): init, mount DIR JSON, unmount DIR; one JSON object on stdout. mount and unmount go to the node's torusd over its unix socket (env ${FLEX_SOCKET_ENV}, default ${DEFAULT_FLEX_SOCKET}). Must be the first argument: torusblk flex init`,
  )
  .argument('[call...]')
  .allowUnknownOption()
  .action(async (call: string[]) => {
    await flexMain(call);
  });

await program.parseAsync();
