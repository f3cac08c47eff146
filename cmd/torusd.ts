#!/usr/bin/env node
import '../src/daemon/threadpool.js';
import { Command, Option } from 'commander';
import pino from 'pino';
import { resolveDaemonConfig, DEFAULTS, type DaemonFlags } from '../src/daemon/config.js';
import { TorusDaemon } from '../src/daemon/torusd.js';
import { TorusError } from '../src/errors/torus-error.js';
import { exitOnInvariantBroken, isAssertionFailure } from '../src/util/invariant.js';
import { VERSION } from '../src/version.js';

const program = new Command('torusd')
  .description(
    'The torus storage daemon: pools this node\'s data dir into the cluster, serves the peer protocol, and exports volumes over NBD.\n\n' +
      'Example:\n  torusd --etcd 127.0.0.1:2379 --data-dir /srv/torus --size 20GiB --auto-join --debug-init',
  )
  .version(VERSION)
  .addOption(new Option('-C, --etcd <host:port>', `etcd endpoint(s), comma separated (env ETCD_HOST/ETCD_PORT; default ${DEFAULTS.etcd})`))
  .addOption(new Option('--data-dir <dir>', `where blocks, the journal and the peer id live (default ${DEFAULTS.dataDir})`))
  .addOption(new Option('--size <size>', `storage cap: 20GiB, 500MiB, or N% of the disk holding --data-dir (env STORAGE_SIZE; default ${DEFAULTS.size})`))
  .addOption(new Option('--peer-address <addr>', 'peer listener, host:port, http://host:port or tdp://host:port (env PEER_ADDRESS; default http://$LISTEN_HOST:40000)'))
  .addOption(new Option('--host <host>', 'HTTP listen host for /metrics, /healthz, /v1/status (env LISTEN_HOST; default 127.0.0.1)'))
  .addOption(new Option('--port <port>', 'HTTP listen port (env LISTEN_HTTP_PORT; default 4321)'))
  .addOption(new Option('--nbd-address <host:port>', `NBD listener; loopback by default because NBD has no authentication (default ${DEFAULTS.nbdAddress})`))
  .addOption(new Option('--auto-join', 'add this peer to the ring if it is not a member (env AUTO_JOIN=1)'))
  .addOption(new Option('--debug-init', 'initialise the cluster with defaults if etcd holds none (env DEBUG_INIT=1)'))
  .addOption(new Option('--cluster-secret-file <file>', 'file holding the shared secret peers authenticate with (env TORUS_CLUSTER_SECRET_FILE)'))
  .addOption(new Option('--write-level <level>', `when a write is acknowledged: all (every reachable replica has it, at least the ring's minimum), one (one replica), local (this node's replica); see README "Write levels" (default ${DEFAULTS.writeLevel})`))
  .addOption(new Option('--replica-timeout <duration>', `a replica that does not answer within this has failed that request, e.g. 8s, 500ms (default ${DEFAULTS.replicaTimeout})`))
  .addOption(new Option('--down-out-interval <duration>', `a ring member DOWN this long is taken out of the ring and its blocks re-replicated; 0 never (default ${DEFAULTS.downOutInterval})`))
  .addOption(new Option('--rebalance-rate <rate>', `bytes per second this peer copies for rebalancing, catch-up, repair and scrub, e.g. 50MiB (default ${DEFAULTS.rebalanceRate})`))
  .addOption(new Option('--scrub-interval <duration>', `compare and check every copy of every volume this often; 0 never (default ${DEFAULTS.scrubInterval})`))
  .addOption(new Option('--checkpoint-interval <duration>', `make the checksums of changed blocks durable this often: shorter means less to recompute after a crash, and more syncs (default ${DEFAULTS.checkpointInterval})`))
  .addOption(new Option('--flex-socket <path>', 'serve the FlexVolume driver on this unix socket, e.g. /run/torus/flex.sock (env TORUS_FLEX_SOCKET; default off)'))
  .addOption(new Option('--flex-state-dir <dir>', `FlexVolume attachments record and staging mounts (default ${DEFAULTS.flexStateDir})`))
  .addOption(new Option('--debug', 'log data-path detail (env DEBUG=1)'))
  .showHelpAfterError('(run torusd --help for usage)')
  .configureOutput({ outputError: (str, write) => write(str.split('\n')[0] + '\n') });

program.parse();
const flags = program.opts<DaemonFlags>();

let config;
try {
  config = resolveDaemonConfig(flags, process.env);
} catch (err) {
  process.stderr.write(`torusd: ${err instanceof TorusError ? err.toLine() : String(err)}\n`);
  process.exit(2);
}

const logger = pino({ level: config.debug ? 'debug' : 'info', base: { pid: process.pid } });
// A broken invariant stops the process with exit code 70 (README, "Error codes"): no clean stop, as in a crash.
const onInvariantBroken = exitOnInvariantBroken(logger);
const daemon = new TorusDaemon(config, logger, onInvariantBroken);

let stopping = false;
const stop = (signal: string) => {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'stopping');
  daemon.stop().then(
    () => process.exit(0),
    (err) => {
      logger.error({ err }, 'stop failed');
      process.exit(1);
    },
  );
};
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));

daemon.start().catch(async (err: unknown) => {
  if (isAssertionFailure(err)) return onInvariantBroken(err, { module: 'torusd', where: 'start' });
  // A stop during the start (SIGTERM while it waits for etcd) ends the
  // start with an error: the stop exits, with its own code.
  if (stopping) return;
  logger.fatal({ err }, 'torusd could not start');
  process.stderr.write(`torusd: ${err instanceof TorusError ? err.toLine() : String(err)}\n`);
  await daemon.stop().catch(() => undefined);
  process.exit(1);
});
