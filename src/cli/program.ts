import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { isTorusError } from '../errors/torus-error.js';
import { VERSION } from '../version.js';
import { examples, makeKit } from './action.js';
import { registerClusterCommands } from './cluster-commands.js';
import { etcdMetadataFactory, parseEndpoint, type CliIo, type MetadataFactory } from './context.js';
import { defaultEtcdEndpoint } from './defaults.js';
import { describeFailure, EXIT_OK } from './errors.js';
import { registerPeerCommands } from './peer-commands.js';
import { registerRingCommands } from './ring-commands.js';
import { registerVolumeCommands } from './volume-commands.js';

export interface CliDeps {
  readonly io: CliIo;
  readonly metadataFactory?: MetadataFactory;
}

function endpointOption(text: string): string {
  try {
    return parseEndpoint(text);
  } catch (err) {
    throw new InvalidArgumentError(isTorusError(err) ? 'expected host:port, e.g. 127.0.0.1:2379' : String(err));
  }
}

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** Builds the torusctl command tree. `onDispatch` learns the deepest command reached, for error hints. */
export function buildProgram(deps: CliDeps, onDispatch: (cmd: Command) => void): Command {
  const { io } = deps;
  const kit = makeKit(io, deps.metadataFactory ?? etcdMetadataFactory);
  const program = new Command('torusctl');
  program
    .description('Administer a torus cluster: format it, manage peers, the ring and volumes. State lives in etcd.')
    .version(VERSION, '-V, --version', 'print the torus version')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout(s),
      // Help printed because of an error (e.g. a group without a subcommand) is
      // replaced by one line; errors themselves are formatted by runCli.
      writeErr: () => undefined,
      outputError: () => undefined,
    })
    .showHelpAfterError(false)
    .addOption(new Option('-C, --etcd <host:port>', 'etcd endpoint (env ETCD_HOST, ETCD_PORT)').default(defaultEtcdEndpoint(io.env)).argParser(endpointOption))
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'))
    .option('--debug', 'log etcd calls to stderr')
    .addHelpText('after', examples(['$ torusctl init', '$ torusctl volume create-block pad 1GiB', '$ torusctl -C 10.0.0.5:2379 list-peers', '$ torusctl volume list -o json']));

  registerClusterCommands(program, kit);
  registerPeerCommands(program, kit);
  registerRingCommands(program, kit);
  registerVolumeCommands(program, kit);

  const hook = (cmd: Command): void => {
    cmd.hook('preSubcommand', (_parent, sub) => onDispatch(sub));
    for (const sub of cmd.commands) hook(sub);
  };
  hook(program);
  return program;
}

/** Runs torusctl with `args` (without node and script); resolves to the exit code. */
export async function runCli(args: readonly string[], deps: CliDeps): Promise<number> {
  let current: Command | undefined;
  const program = buildProgram(deps, (cmd) => {
    current = cmd;
  });
  current = program;
  try {
    await program.parseAsync([...args], { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    const here = current ?? program;
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return EXIT_OK; // --help, --version
      if (err.code === 'commander.help' || err.code === 'commander.executeSubCommandAsync') {
        const subs = here.commands.map((c) => c.name()).join(', ');
        err = new CommanderError(2, 'commander.missingSubcommand', `"${commandPath(here)}" needs a subcommand: one of ${subs}`);
      }
    }
    const failure = describeFailure(err, commandPath(here));
    deps.io.stderr(`${failure.line}\n`);
    if (program.opts()['debug'] === true && err instanceof Error && err.stack) deps.io.stderr(`${err.stack}\n`);
    return failure.exitCode;
  }
}
