import { lstat, unlink } from 'node:fs/promises';
import { TorusError } from '../errors/torus-error.js';

/**
 * Removes a unix socket left at `file` by a previous run (kill -9, a
 * container restart), which would make listen fail with EADDRINUSE. Only a
 * socket is removed: any other kind of file at that path is refused with
 * TORUS_ERR_DAEMON_START rather than deleted.
 */
export async function removeStaleSocket(file: string): Promise<void> {
  try {
    const st = await lstat(file);
    if (!st.isSocket()) throw new TorusError('TORUS_ERR_DAEMON_START', `${file} exists and is not a socket; not replacing it`);
    await unlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
