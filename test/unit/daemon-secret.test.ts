/**
 * resolveClusterSecret (src/daemon/secret.ts): the secret comes from etcd,
 * each peer keeps a copy in its data dir (mode 0600), the copy is used when
 * etcd is unreachable, and --cluster-secret-file overrides both. A torusd
 * started while etcd is unreachable uses it with the copies of the cluster
 * config and ring (test/unit/daemon-cluster-copies.test.ts,
 * test/integration/e2e-outage-restart.test.ts);
 * test/integration/e2e-peer-port.test.ts checks the copy a real torusd keeps.
 */
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveClusterSecret } from '../../src/daemon/secret.js';
import { TorusError, isTorusError } from '../../src/errors/torus-error.js';
import type { MetadataService } from '../../src/metadata/metadata-service.js';
import { MemoryMetadata } from '../../src/metadata/memory-metadata.js';
import { recordingLogger } from '../helpers/peer-harness.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'torus-secret-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const copyFile = () => path.join(dir, 'cluster-secret');

/** A metadata service whose ensureClusterSecret answers from `fn`; nothing else is called. */
function stubMetadata(fn: () => Promise<string>): MetadataService {
  return { ensureClusterSecret: fn } as unknown as MetadataService;
}

function resolve(metadata: MetadataService, opts: { file?: string } = {}) {
  const rec = recordingLogger();
  const secret = resolveClusterSecret({ file: opts.file ?? null, dataDir: dir, metadata, logger: rec.logger });
  return { secret, rec };
}

describe('the copy of the cluster secret in the data dir', () => {
  it('is written with mode 0600 and the secret etcd holds, and rewritten only when that changes', async () => {
    const md = new MemoryMetadata();
    const fromEtcd = await md.ensureClusterSecret();
    expect(await resolve(md).secret).toBe(fromEtcd);
    expect((await stat(copyFile())).mode & 0o777).toBe(0o600);
    expect(await readFile(copyFile(), 'utf8')).toBe(`${fromEtcd}\n`);
    // Same secret: the file is left alone (a rewrite is a rename, a new inode).
    const before = (await stat(copyFile())).ino;
    await resolve(md).secret;
    expect((await stat(copyFile())).ino).toBe(before);

    // The secret in etcd changed: the copy follows it, still 0600, no temporary file left.
    expect(await resolve(stubMetadata(async () => 'b'.repeat(64))).secret).toBe('b'.repeat(64));
    expect(await readFile(copyFile(), 'utf8')).toBe(`${'b'.repeat(64)}\n`);
    expect((await stat(copyFile())).mode & 0o777).toBe(0o600);
    expect(await readdir(dir)).toEqual(['cluster-secret']);
  });

  it('is what the peer uses while etcd is unreachable, with a warning', async () => {
    const md = new MemoryMetadata();
    const fromEtcd = await resolve(md).secret;
    md.setFault('unavailable');
    const { secret, rec } = resolve(md);
    expect(await secret).toBe(fromEtcd);
    const warned = rec.lines.filter((l) => l.level === 40);
    expect(warned.map((l) => l.msg)).toEqual(['etcd unreachable: using the copy of the cluster secret kept in the data dir']);
    expect(warned[0]!['err']).toMatchObject({ code: 'TORUS_ERR_ETCD_UNAVAILABLE' });
  });

  it('is used without asking etcd when the caller just found etcd unreachable (a start from the copies)', async () => {
    const md = new MemoryMetadata();
    const fromEtcd = await resolve(md).secret;
    const rec = recordingLogger();
    const asked = stubMetadata(() => Promise.reject(new Error('etcd must not be asked')));
    expect(await resolveClusterSecret({ file: null, dataDir: dir, metadata: asked, logger: rec.logger, etcdUnreachable: true })).toBe(fromEtcd);
    expect(rec.warns()).toBe(0);
    // Without a copy: etcd's unavailability, for the caller to wait for etcd.
    await rm(copyFile());
    const err = await resolveClusterSecret({ file: null, dataDir: dir, metadata: asked, logger: rec.logger, etcdUnreachable: true }).catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE'), String(err)).toBe(true);
  });

  it('without a copy, an unreachable etcd is the error', async () => {
    const md = new MemoryMetadata();
    md.setFault('unavailable');
    const err = await resolve(md).secret.catch((e: unknown) => e);
    expect(isTorusError(err, 'TORUS_ERR_ETCD_UNAVAILABLE')).toBe(true);
  });

  it('is not used when etcd answers with an error other than being unreachable', async () => {
    await writeFile(copyFile(), `${'c'.repeat(64)}\n`, { mode: 0o600 });
    const corrupt = new TorusError('TORUS_ERR_METADATA_CORRUPT', 'the secret in etcd is not 64 hex digits');
    const err = await resolve(stubMetadata(() => Promise.reject(corrupt))).secret.catch((e: unknown) => e);
    expect(err).toBe(corrupt);
  });
});

describe('--cluster-secret-file', () => {
  it('overrides etcd and the copy; etcd is not asked and no copy is made', async () => {
    const file = path.join(dir, 'given-secret');
    await writeFile(file, '  from the file \n');
    const md = stubMetadata(() => Promise.reject(new Error('etcd must not be asked')));
    expect(await resolve(md, { file }).secret).toBe('from the file');
    expect(await readdir(dir)).toEqual(['given-secret']);
  });

  it('refuses an empty or missing file with TORUS_ERR_DAEMON_START', async () => {
    const md = new MemoryMetadata();
    const empty = path.join(dir, 'empty');
    await writeFile(empty, '\n');
    for (const file of [empty, path.join(dir, 'missing')]) {
      const err = await resolve(md, { file }).secret.catch((e: unknown) => e);
      expect(isTorusError(err, 'TORUS_ERR_DAEMON_START'), String(err)).toBe(true);
      expect((err as Error).message).toContain(file);
    }
  });
});
