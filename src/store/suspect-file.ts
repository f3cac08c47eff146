import { TorusError } from '../errors/torus-error.js';
import { blockRef, type BlockRef } from '../model/block-ref.js';
import { nodeStoreIo, writeFileDurably, type StoreIo } from './store-io.js';

/**
 * The disk store's list of suspect blocks, `<store>/suspects.json`:
 * {"schema":1,"blocks":[[volumeId,generation,index],...]}.
 *
 * Why a file: after an unclean stop the dirty log names the blocks that may
 * not match their versions, and start-up deletes the dirty log once their
 * checksums are repaired. Without this list, a second restart before a
 * coordinator confirmed or replaced them would forget that they are
 * suspect, and an unchecked copy would be trusted. It is written before the
 * dirty log goes, and rewritten at checkpoints as blocks are confirmed,
 * installed or dropped (each of those is named in the dirty log first, so
 * a crash in between brings the block back as suspect, never as trusted).
 */
const SCHEMA = 1;

export async function loadSuspects(file: string, io: StoreIo = nodeStoreIo): Promise<BlockRef[]> {
  let text: string;
  try {
    text = (await io.readFile(file)).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new TorusError('TORUS_ERR_STORE_IO', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  const bad = (why: string) => new TorusError('TORUS_ERR_STORE_CORRUPT', `${file}: ${why}`, { details: { file } });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  const rec = parsed as { schema?: unknown; blocks?: unknown };
  if (typeof rec !== 'object' || rec === null || rec.schema !== SCHEMA || !Array.isArray(rec.blocks)) throw bad('not a suspect list of schema 1');
  return rec.blocks.map((b: unknown) => {
    if (!Array.isArray(b) || b.length !== 3 || !b.every((n) => Number.isInteger(n))) throw bad('a block is not [volumeId, generation, index]');
    try {
      return blockRef(b[0] as number, b[1] as number, b[2] as number);
    } catch {
      throw bad(`[${b.join(', ')}] is not a block ref`);
    }
  });
}

export async function saveSuspects(file: string, refs: readonly BlockRef[], io: StoreIo = nodeStoreIo): Promise<void> {
  const blocks = refs.map((r) => [r.volumeId, r.generation, r.index]);
  await writeFileDurably(file, JSON.stringify({ schema: SCHEMA, blocks }) + '\n', io);
}
