#!/usr/bin/env node
import '../src/daemon/threadpool.js';
import { Command, Option } from 'commander';
import pino from 'pino';
import { runFlexDriver } from '../src/k8s/flex/client.js';
import { DEFAULT_FLEX_SOCKET, FLEX_SOCKET_ENV } from '../src/k8s/flex/protocol.js';
import { parseHostPort } from '../src/daemon/config.js';
import { defaultEtcdEndpoint } from '../src/model/defaults.js';
import { TorusError } from '../src/errors/torus-error.js';
import { exitOnInvariantBroken } from '../src/util/invariant.js';
import { VERSION } from '../src/version.js';
import { attachSocketPath } from '../src/attach/api.js';
import { AttachClient } from '../src/attach/api-client.js';
import { DEFAULTS } from '../src/daemon/config.js';
import { attachVolume, detachDevice, formatAttachments } from '../src/client/nbd-attach.js';

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
  .description('torus block clients: attach volumes to kernel nbd devices through this node\'s torusd, or serve volumes over NBD from any machine that reaches the cluster.')
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
    // Loaded here: etcd and gRPC take seconds to load on a slow machine, and `nbd` needs neither.
    const { NbdGateway } = await import('../src/client/nbd-gateway.js');
    let gateway: InstanceType<typeof NbdGateway> | null = null;
    try {
      const listen = parseHostPort(opts.listen, '--listen');
      // A broken invariant stops the process with exit code 70 (README, "Error codes").
      const onInvariantBroken = exitOnInvariantBroken(logger);
      gateway = new NbdGateway({ etcdEndpoints: global.etcd.split(','), listen, mode: opts.readOnly ? 'ro' : 'rw', secretFile: opts.clusterSecretFile ?? null, logger, onInvariantBroken });
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

function fail(err: unknown): never {
  process.stderr.write(`torusblk: ${err instanceof TorusError ? err.toLine() : String(err)}\n`);
  process.exit(1);
}

program
  .command('nbd')
  .description(
    'Attach VOLUME to a kernel nbd device (the first free one, or DEVICE) through this node\'s torusd, print "Attached to /dev/nbdN", and stay until SIGINT/SIGTERM, then flush and detach. ' +
      'The device is served by torusd, so it survives a torusd restart (netlink kernels); with --background torusblk exits and the device stays until `torusblk nbd -d DEVICE`.\n\n' +
      'Examples:\n  torusblk nbd pad\n  torusblk nbd --background pad /dev/nbd3 && mkfs.ext4 /dev/nbd3\n  torusblk nbd -d /dev/nbd3\n  torusblk nbd --list',
  )
  .argument('[volume]', 'volume to attach')
  .argument('[device]', '/dev/nbdN to use (default: a free one)')
  .option('-d, --detach <device>', 'flush and detach DEVICE, then exit')
  .option('-l, --list', "list this node's attachments")
  .option('--read-only', 'attach read-only: no volume lock, works beside a writer on another node')
  .option('--background', 'attach, print the device and exit; the attachment stays in torusd')
  .option('--data-dir <dir>', `torusd's --data-dir on this node, where its attach socket lives (env TORUS_DATA_DIR; default ${DEFAULTS.dataDir})`)
  .option('--attach-socket <path>', "torusd's attach socket (default <data-dir>/attach.sock)")
  .option('--timeout <seconds>', 'kernel request timeout: an unanswered request is re-sent on a new socket after this long (default 10)')
  .option('--dead-conn-timeout <seconds>', 'how long the kernel holds I/O while torusd is down (default 30, the volume lock lease)')
  .action(async (volume: string | undefined, device: string | undefined, opts: { detach?: string; list?: boolean; readOnly?: boolean; background?: boolean; dataDir?: string; attachSocket?: string; timeout?: string; deadConnTimeout?: string }) => {
    const socketPath = opts.attachSocket ?? attachSocketPath(opts.dataDir ?? (process.env.TORUS_DATA_DIR || DEFAULTS.dataDir));
    const out = (line: string) => process.stdout.write(line + '\n');
    const secs = (v: string | undefined, flag: string) => {
      if (v === undefined) return undefined;
      if (!/^[0-9]+$/.test(v)) fail(new TorusError('TORUS_ERR_ARG_INVALID', `${flag} must be a whole number of seconds`));
      return Number(v);
    };
    try {
      if (opts.list) {
        out(formatAttachments(await new AttachClient(socketPath).list()));
        return;
      }
      if (opts.detach !== undefined) {
        await detachDevice(opts.detach, socketPath, 0);
        out(`Detached ${opts.detach}`);
        return;
      }
      if (volume === undefined) fail(new TorusError('TORUS_ERR_ARG_INVALID', 'nbd needs a VOLUME (or -d DEVICE, or --list)'));
      const info = await attachVolume(volume, device, {
        socketPath,
        readOnly: opts.readOnly === true,
        timeoutSeconds: secs(opts.timeout, '--timeout'),
        deadConnTimeoutSeconds: secs(opts.deadConnTimeout, '--dead-conn-timeout'),
        out,
      });
      if (opts.background) return;
      // Signal listeners alone do not keep Node running: hold the loop open.
      const keep = setInterval(() => undefined, 1 << 30);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      clearInterval(keep);
      await detachDevice(info.device, socketPath);
      out(`Detached ${info.device}`);
    } catch (err) {
      fail(err);
    }
  });

program
  .command('csi')
  .description(
    'The CSI driver (torus.csi.coreos.com): Identity, Controller and Node services over gRPC on a unix socket, until SIGINT/SIGTERM. ' +
      "The node service attaches through this node's torusd (its attach socket) and mounts here, so it runs where it can mount into kubelet's directories. " +
      'Logs one JSON line per RPC on stderr.\n\n' +
      'Examples:\n  torusblk csi --endpoint unix:///csi/csi.sock --node-id $NODE_NAME -C etcd-torus:2379\n  torusblk csi --controller-only --endpoint unix:///csi/csi.sock -C etcd-torus:2379',
  )
  .requiredOption('--endpoint <unix:///path>', 'the CSI endpoint: a unix socket (env CSI_ENDPOINT)', process.env.CSI_ENDPOINT)
  .option('--node-id <name>', "this node's id, as kubelet knows the node (env NODE_NAME); required unless --controller-only", process.env.NODE_NAME)
  .option('--controller-only', 'serve Identity and Controller only (the controller Deployment)')
  .option('--node-only', 'serve Identity and Node only (the node DaemonSet)')
  .option('--data-dir <dir>', `torusd's --data-dir on this node, where its attach socket lives (env TORUS_DATA_DIR; default ${DEFAULTS.dataDir})`)
  .option('--attach-socket <path>', "torusd's attach socket (default <data-dir>/attach.sock)")
  .action(async (opts: { endpoint: string; nodeId?: string; controllerOnly?: boolean; nodeOnly?: boolean; dataDir?: string; attachSocket?: string }) => {
    const global = program.opts<{ etcd: string; debug?: boolean }>();
    const logger = pino({ level: global.debug ? 'debug' : 'info' }, pino.destination(2));
    if (opts.controllerOnly && opts.nodeOnly) fail(new TorusError('TORUS_ERR_ARG_INVALID', '--controller-only and --node-only exclude each other'));
    const role = opts.controllerOnly ? 'controller' : opts.nodeOnly ? 'node' : 'all';
    if (role !== 'controller' && !opts.nodeId) fail(new TorusError('TORUS_ERR_ARG_INVALID', 'the node service needs --node-id (or env NODE_NAME)'));
    const { startCsiDriver } = await import('../src/k8s/csi/driver.js');
    const { systemClock } = await import('../src/util/clock.js');
    let driver: Awaited<ReturnType<typeof startCsiDriver>>;
    try {
      driver = await startCsiDriver({
        endpoint: opts.endpoint,
        nodeId: opts.nodeId ?? '',
        role,
        etcd: global.etcd.split(','),
        attachSocket: opts.attachSocket ?? attachSocketPath(opts.dataDir ?? (process.env.TORUS_DATA_DIR || DEFAULTS.dataDir)),
        logger,
        clock: systemClock,
      });
    } catch (err) {
      fail(err);
    }
    logger.info({ endpoint: opts.endpoint, role, node: opts.nodeId ?? null, version: VERSION }, 'torusblk csi ready');
    const stop = () => {
      void driver.close().then(() => process.exit(0), () => process.exit(1));
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
