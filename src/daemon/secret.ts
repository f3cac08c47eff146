import { chmod, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { isTorusError, TorusError } from '../errors/torus-error.js';
import type { MetadataService } from '../metadata/metadata-service.js';

const SECRET_FILE = 'cluster-secret';

/**
 * The cluster secret peers authenticate with (docs/replication.md). Kept in
 * etcd (created by `torusctl init`, or by the first peer of a 0.1.0 cluster);
 * each peer keeps a copy in its data dir (mode 0600) so that a restart
 * during an etcd outage still serves. `--cluster-secret-file` overrides
 * both. `etcdUnreachable`: the caller has just found etcd unreachable (a
 * start from the copies in the data dir, src/daemon/cluster-copies.ts), so
 * the copy is used without asking etcd again, which may take a whole call
 * timeout; without a copy that is TORUS_ERR_ETCD_UNAVAILABLE.
 */
export async function resolveClusterSecret(opts: { file: string | null; dataDir: string | null; metadata: MetadataService; logger: Logger; etcdUnreachable?: boolean }): Promise<string> {
  if (opts.file !== null) {
    try {
      const s = (await readFile(opts.file, 'utf8')).trim();
      if (s.length === 0) throw new TorusError('TORUS_ERR_DAEMON_START', `the cluster secret file ${opts.file} is empty`);
      return s;
    } catch (err) {
      if (err instanceof TorusError) throw err;
      throw new TorusError('TORUS_ERR_DAEMON_START', `cannot read the cluster secret file ${opts.file}: ${(err as Error).message}`, { cause: err });
    }
  }
  const copy = opts.dataDir === null ? null : path.join(opts.dataDir, SECRET_FILE);
  if (opts.etcdUnreachable === true && copy !== null) {
    try {
      return await readCopy(copy);
    } catch (err) {
      throw new TorusError('TORUS_ERR_ETCD_UNAVAILABLE', `etcd is unreachable and the copy of the cluster secret cannot be read: ${(err as Error).message}`, { cause: err });
    }
  }
  try {
    const secret = await opts.metadata.ensureClusterSecret();
    if (copy !== null) await keepCopy(copy, secret);
    return secret;
  } catch (err) {
    if (!isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE') || copy === null) throw err;
    try {
      const s = await readCopy(copy);
      opts.logger.warn({ err }, 'etcd unreachable: using the copy of the cluster secret kept in the data dir');
      return s;
    } catch {
      throw err;
    }
  }
}

async function readCopy(file: string): Promise<string> {
  const s = (await readFile(file, 'utf8')).trim();
  if (s.length === 0) throw new TorusError('TORUS_ERR_STORE_CORRUPT', `${file} is empty`);
  return s;
}

async function keepCopy(file: string, secret: string): Promise<void> {
  try {
    if ((await readFile(file, 'utf8')).trim() === secret) return;
  } catch {
    // none yet
  }
  await writeFile(`${file}.tmp`, `${secret}\n`, { mode: 0o600, flush: true });
  await chmod(`${file}.tmp`, 0o600);
  await rename(`${file}.tmp`, file);
}
