import { CommanderError } from 'commander';
import { isTorusError } from '../errors/torus-error.js';

/**
 * How torusctl fails: exactly one line on stderr,
 * `torusctl: <what went wrong> (TORUS_ERR_...)`, and exit code 1; a command
 * line that does not parse (unknown command or option, missing argument) exits
 * 2 with one line that says what is wrong and which --help to read.
 */

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** A command line that parses but makes no sense (e.g. `peer add` with nothing to add). */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly commandPath: string,
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

export function usageLine(message: string, commandPath: string): string {
  const what = oneLine(message.replace(/^error:\s*/i, '')).replace(/\.$/, '');
  return `torusctl: ${what}; see "${commandPath} --help" (TORUS_ERR_ARG_INVALID)`;
}

export interface Failure {
  readonly line: string;
  readonly exitCode: number;
}

/** Turns anything thrown into the line torusctl prints and its exit code. */
export function describeFailure(err: unknown, commandPath: string): Failure {
  if (err instanceof UsageError) return { line: usageLine(err.message, err.commandPath), exitCode: EXIT_USAGE };
  if (err instanceof CommanderError) return { line: usageLine(err.message, commandPath), exitCode: EXIT_USAGE };
  if (isTorusError(err)) return { line: `torusctl: ${oneLine(err.message)} (${err.code})`, exitCode: EXIT_FAILURE };
  // Anything else escaped the code that should have turned it into a TorusError: a bug.
  const message = err instanceof Error ? err.message : String(err);
  return { line: `torusctl: unexpected error: ${oneLine(message)} (TORUS_ERR_ASSERTION)`, exitCode: EXIT_FAILURE };
}
