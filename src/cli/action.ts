import type { Command } from 'commander';
import { CliContext, type CliIo, type GlobalOptions, type MetadataFactory } from './context.js';

/** What command files need to turn an async function into a commander action. */
export interface CommandKit {
  readonly io: CliIo;
  action(fn: (ctx: CliContext, cmd: Command) => Promise<void>): (...args: unknown[]) => Promise<void>;
}

export function makeKit(io: CliIo, factory: MetadataFactory): CommandKit {
  return {
    io,
    action(fn) {
      return async (...args: unknown[]) => {
        // commander passes the command itself last.
        const cmd = args[args.length - 1] as Command;
        const ctx = new CliContext(io, cmd.optsWithGlobals<GlobalOptions>(), factory);
        try {
          await fn(ctx, cmd);
        } finally {
          await ctx.close();
        }
      };
    },
  };
}

/** The n-th positional argument, as commander parsed it. */
export function arg(cmd: Command, n: number): string {
  return String(cmd.processedArgs[n] ?? '');
}

export function argList(cmd: Command, n: number): string[] {
  const v: unknown = cmd.processedArgs[n];
  return Array.isArray(v) ? v.map(String) : v === undefined ? [] : [String(v)];
}

/** Help text appended after the options: a description and examples. */
export function examples(lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  ${l}`).join('\n')}\n`;
}
