/** Open-file flags as the kernel reports them, for tests that check how a file was opened. */
import fs from 'node:fs';

/** The flags fd was opened with (the octal `flags:` line of /proc/self/fdinfo/<fd>). */
export function openFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (m === null) throw new Error(`no flags line in /proc/self/fdinfo/${fd}`);
  return parseInt(m[1]!, 8);
}
