import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { emptyState, formatState, parseState, readState, writeState, type AttachState } from '../../src/attach/state-file.js';

const sample: AttachState = {
  leaseId: '7587882061513041234',
  attachments: [
    { index: 0, volume: 'pad', mode: 'rw', token: 3, sizeBytes: 1 << 30, timeoutSeconds: 10, deadConnTimeoutSeconds: 30, backend: 'torus:u:pad:attach-1', attachedAt: '2026-01-01T00:00:00.000Z' },
    { index: 2, volume: 'logs', mode: 'ro', token: null, sizeBytes: 1 << 20, timeoutSeconds: 10, deadConnTimeoutSeconds: 30, backend: 'torus:u:logs:attach-2', attachedAt: '2026-01-01T00:00:00.000Z' },
    { index: 3, volume: 'shared', mode: 'ro', token: null, readerLock: true, sizeBytes: 1 << 20, timeoutSeconds: 10, deadConnTimeoutSeconds: 30, backend: 'torus:u:shared:attach-3', attachedAt: '2026-01-01T00:00:00.000Z' },
    { index: 4, volume: 'db', mode: 'rw', token: 9, writeLevel: 'one', sizeBytes: 1 << 20, timeoutSeconds: 10, deadConnTimeoutSeconds: 30, backend: 'torus:u:db:attach-4', attachedAt: '2026-01-01T00:00:00.000Z' },
  ],
};

let dir: string | null = null;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = null;
});

describe('attachments.json', () => {
  it('round-trips', () => {
    expect(parseState(formatState(sample))).toEqual(sample);
  });

  it('is empty when the file does not exist, and written atomically when it does', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'torus-attach-'));
    expect(await readState(dir)).toEqual(emptyState());
    await writeState(dir, sample);
    expect(await readState(dir)).toEqual(sample);
    expect(JSON.parse(await readFile(path.join(dir, 'attachments.json'), 'utf8')).schema).toBe(1);
  });

  it.each([
    ['not JSON', '{', /not JSON/],
    ['another schema', JSON.stringify({ schema: 2, leaseId: null, attachments: [] }), /schema 2/],
    ['a bad lease id', JSON.stringify({ schema: 1, leaseId: 'abc', attachments: [] }), /leaseId/],
    ['rw without a token', formatState({ ...sample, attachments: [{ ...sample.attachments[0]!, token: null }] }), /without a lock token/],
    ['rw without a lease', formatState({ leaseId: null, attachments: [sample.attachments[0]!] }), /without a lease id/],
    ['a reader lock without a lease', formatState({ leaseId: null, attachments: [sample.attachments[2]!] }), /without a lease id/],
    ['a reader lock on a rw attachment', formatState({ ...sample, attachments: [{ ...sample.attachments[0]!, readerLock: true }] }), /readerLock/],
    ['a bad write level', formatState(sample).replace('"one"', '"most"'), /writeLevel/],
    ['a device twice', formatState({ ...sample, attachments: [sample.attachments[0]!, sample.attachments[0]!] }), /listed twice/],
    ['a bad mode', formatState(sample).replace('"ro"', '"rx"'), /mode/],
    ['a zero timeout', formatState(sample).replace('"timeoutSeconds": 10', '"timeoutSeconds": 0'), /timeoutSeconds/],
  ])('refuses %s with TORUS_ERR_ATTACH_STATE_CORRUPT', (_what, text, msg) => {
    try {
      parseState(text);
      expect.unreachable();
    } catch (err) {
      expect((err as { code?: string }).code).toBe('TORUS_ERR_ATTACH_STATE_CORRUPT');
      expect(String((err as Error).message)).toMatch(msg);
    }
  });

  it('refuses a corrupt file on disk rather than forgetting the attachments', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'torus-attach-'));
    await writeFile(path.join(dir, 'attachments.json'), '{"schema":1');
    await expect(readState(dir)).rejects.toMatchObject({ code: 'TORUS_ERR_ATTACH_STATE_CORRUPT' });
  });
});
