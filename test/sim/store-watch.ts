import type { BlockMeta } from '../../src/model/block-meta.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import type { Version } from '../../src/model/version.js';
import type { LocalBlockStore } from '../../src/store/local-store.js';

/** A change about to reach a peer's store: what the copy was, and the version it gets. */
export interface StoreChange {
  readonly kind: 'write' | 'zero' | 'install' | 'confirm';
  readonly ref: BlockRef;
  readonly before: BlockMeta;
  readonly version: Version;
}

/**
 * Watches the changes a peer makes to its own store, at the store's
 * boundary (docs/replication.md, "Versions": a copy's version only grows;
 * an install never overwrites a newer copy unless that copy is suspect).
 * The store below stays the store: this only looks before each change.
 */
export function watchStore(store: LocalBlockStore, onChange: (c: StoreChange) => void): LocalBlockStore {
  const before = (kind: StoreChange['kind'], ref: BlockRef, version: Version): void => onChange({ kind, ref, before: store.meta(ref), version });
  return new Proxy(store, {
    get(t, prop, receiver) {
      switch (prop) {
        case 'write':
          return (ref: BlockRef, offset: number, data: Buffer, version: Version, opts: { fua: boolean }) => {
            before('write', ref, version);
            return t.write(ref, offset, data, version, opts);
          };
        case 'zero':
          return (ref: BlockRef, offset: number, length: number, version: Version, opts: { punch: boolean; fua: boolean }) => {
            before('zero', ref, version);
            return t.zero(ref, offset, length, version, opts);
          };
        case 'install':
          return (ref: BlockRef, data: Buffer | null, version: Version, opts: { fua: boolean }) => {
            before('install', ref, version);
            return t.install(ref, data, version, opts);
          };
        case 'confirm':
          return (ref: BlockRef, version: Version) => {
            before('confirm', ref, version);
            return t.confirm(ref, version);
          };
        default: {
          const v: unknown = Reflect.get(t, prop, receiver);
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        }
      }
    },
  });
}
