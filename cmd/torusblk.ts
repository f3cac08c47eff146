#!/usr/bin/env node
import '../src/daemon/threadpool.js';
import { Command, Option } from 'commander';
import pino from 'pino';
import { NbdGateway } from '../src/client/nbd-gateway.js';
import { parseHostPort } from '../src/daemon/config.js';
import { defaultEtcdEndpoint } from '../src/model/defaults.js';
import { TorusError } from '../src/errors/torus-error.js';
import { VERSION } from '../src/version.js';

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
      gateway = new NbdGateway({ etcdEndpoints: global.etcd.split(','), listen, mode: opts.readOnly ? 'ro' : 'rw', secretFile: opts.clusterSecretFile ?? null, logger });
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

await program.parseAsync();
