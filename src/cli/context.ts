import type { Readable } from 'node:stream';
import pino, { type Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { EtcdMetadata } from '../metadata/etcd-metadata.js';
import type { MetadataService } from '../metadata/metadata-service.js';
import { systemClock, type Clock } from '../util/clock.js';
import { CLI_ETCD_CALL_TIMEOUT_MS } from './defaults.js';
import type { OutputFormat } from './output.js';

/** The process around torusctl, injected so tests can run it in-process. */
export interface CliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly stdin: Readable & { isTTY?: boolean };
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Wall-clock ms (for "updated 3 seconds ago"). */
  readonly now: () => number;
  /** stdout is a terminal: progress is one line redrawn in place. Default false. */
  readonly stdoutIsTTY?: boolean;
  /** Timers for commands that wait (peer remove); default the system clock. */
  readonly clock?: Clock;
}

export type MetadataFactory = (opts: { endpoint: string; logger: Logger }) => MetadataService;

export const etcdMetadataFactory: MetadataFactory = ({ endpoint, logger }) =>
  new EtcdMetadata({ endpoints: [endpoint], logger, callTimeoutMs: CLI_ETCD_CALL_TIMEOUT_MS });

export interface GlobalOptions {
  readonly etcd: string;
  readonly output: OutputFormat;
  readonly debug: boolean;
}

/** What a command action works with; the metadata connection opens on first use. */
export class CliContext {
  readonly logger: Logger;
  private md: MetadataService | undefined;

  constructor(
    readonly io: CliIo,
    readonly opts: GlobalOptions,
    private readonly factory: MetadataFactory,
  ) {
    this.logger = opts.debug ? pino({ level: 'debug' }, pino.destination(2)) : pino({ level: 'silent' });
  }

  get endpoint(): string {
    return this.opts.etcd;
  }

  get json(): boolean {
    return this.opts.output === 'json';
  }

  get clock(): Clock {
    return this.io.clock ?? systemClock;
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.clock.setTimeout(resolve, ms));
  }

  metadata(): MetadataService {
    this.md ??= this.factory({ endpoint: this.opts.etcd, logger: this.logger });
    return this.md;
  }

  out(text: string): void {
    this.io.stdout(text);
  }

  /** Remarks for humans that must not pollute stdout (which may be JSON). */
  note(text: string): void {
    this.io.stderr(text.endsWith('\n') ? text : `${text}\n`);
  }

  async close(): Promise<void> {
    const md = this.md;
    this.md = undefined;
    await md?.close();
  }
}

/** `host:port`, `http://host:port`; torusctl talks to one endpoint. */
export function parseEndpoint(text: string): string {
  const m = /^(?:https?:\/\/)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) {
    throw new TorusError('TORUS_ERR_ARG_INVALID', `invalid etcd endpoint "${text}": expected host:port, e.g. 127.0.0.1:2379`);
  }
  return text.trim();
}
