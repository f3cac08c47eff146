import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { TorusError } from '../errors/torus-error.js';
import { fsyncDir } from '../store/fs-async.js';

/**
 * A peer's UUID lives in its data dir, so a restarted peer is the same ring
 * member and finds its own blocks.
 */
export async function loadOrCreatePeerId(dataDir: string): Promise<{ uuid: string; created: boolean }> {
  await mkdir(dataDir, { recursive: true });
  const file = path.join(dataDir, 'peer.json');
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as { uuid?: unknown };
    if (typeof doc.uuid !== 'string' || !/^[0-9a-f-]{36}$/.test(doc.uuid)) {
      throw new TorusError('TORUS_ERR_STORE_CORRUPT', `${file} holds no valid peer uuid`);
    }
    return { uuid: doc.uuid, created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      if (err instanceof TorusError) throw err;
      throw new TorusError('TORUS_ERR_DAEMON_START', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  const uuid = randomUUID();
  const tmp = `${file}.tmp`;
  await writeFile(tmp, JSON.stringify({ schema: 1, uuid, createdAt: new Date().toISOString() }) + '\n', { flush: true });
  await rename(tmp, file);
  await fsyncDir(dataDir);
  return { uuid, created: true };
}

/**
 * Binds a data dir to one cluster. After `torusctl wipe` and a new `init`,
 * volume ids start again at 1, so blocks left in an old data dir would be
 * read as the new volumes' data: refuse to start on them instead.
 */
export async function bindDataDirToCluster(dataDir: string, clusterId: string): Promise<void> {
  const file = path.join(dataDir, 'cluster.json');
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as { clusterId?: unknown };
    if (doc.clusterId === clusterId) return;
    throw new TorusError(
      'TORUS_ERR_DATA_DIR_FOREIGN',
      `data dir ${dataDir} belongs to cluster ${String(doc.clusterId)} but etcd holds cluster ${clusterId} (it was wiped and initialised again); its blocks would be mistaken for the new cluster's volumes: move or remove ${dataDir}`,
    );
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      if (err instanceof TorusError) throw err;
      throw new TorusError('TORUS_ERR_DAEMON_START', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  }
  const tmp = `${file}.tmp`;
  await writeFile(tmp, JSON.stringify({ schema: 1, clusterId }) + '\n', { flush: true });
  await rename(tmp, file);
  await fsyncDir(dataDir);
}
