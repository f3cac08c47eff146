import { InvalidArgumentError } from 'commander';

/** A whole number for an option or argument; commander reports a bad one as a usage error. */
export function parseCount(text: string): number {
  if (!/^\d{1,9}$/.test(text.trim())) throw new InvalidArgumentError('expected a whole number.');
  return Number(text.trim());
}
