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
 * both.
 */
export async function resolveClusterSecret(opts: { file: string | null; dataDir: string | null; metadata: MetadataService; logger: Logger }): Promise<string> {
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
  try {
    const secret = await opts.metadata.ensureClusterSecret();
    if (copy !== null) await keepCopy(copy, secret);
    return secret;
  } catch (err) {
    if (!isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE') || copy === null) throw err;
    try {
      const s = (await readFile(copy, 'utf8')).trim();
      opts.logger.warn({ err }, 'etcd unreachable: using the copy of the cluster secret kept in the data dir');
      return s;
    } catch {
      throw err;
    }
  }
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
