import { execFileSync } from 'node:child_process';

/**
 * Resolves a third-party tool or fails the test with how to install it.
 * Tests never skip silently when a tool is missing: test/run.sh installs
 * them (scripts/install-deps.sh), and a run without them fails loudly.
 */
export function requireTool(name: string, aptPackage: string): string {
  try {
    return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error(`${name} is not installed: run "bash scripts/install-deps.sh" (or apt-get install ${aptPackage})`);
  }
}
