import { assert } from '../util/assert.js';

/** A block entry as the cache sees it: its CRC table, when in memory, and a use bit. */
export interface TableHolder {
  crc: Uint32Array | null;
  /** Set on every use of the table; a sweep clears it (second chance). */
  tableUsed: boolean;
}

/**
 * Which blocks keep their CRC table in memory: at most `max` of those the
 * store may drop, plus those it may not (changed since their header was
 * last made durable: the table in memory is then the only current one).
 *
 * Without a bound every block read or written once kept its table until
 * the process ended: 1 KiB per 1 MiB block, about 100 MiB for a peer that
 * reads through 100 GiB. A dropped table is read back from the block's
 * header on the next use (one pread of the header).
 *
 * Eviction is the clock algorithm: a use sets a bit on the entry (no map
 * operation per read or write); a sweep, once the cache is over `max`,
 * walks the entries in insertion order, drops those unused since the last
 * sweep and clears the bit of the others, until 7/8 of `max` are left.
 * A sweep that cannot get there (most tables are not droppable yet) is not
 * tried again before the cache grows by another eighth, or the store asks
 * (after a checkpoint made headers durable).
 */
export class TableCache<E extends TableHolder> {
  private readonly held = new Set<E>();
  private sweepAbove: number;

  /**
   * @param canDrop whether the entry's table may leave memory now (its header
   *   on disk holds the same table, and nothing is changing the block)
   * @param dropping called just before the table leaves (to keep what is
   *   derived from it, such as its digest)
   */
  constructor(
    readonly max: number,
    private readonly canDrop: (e: E) => boolean,
    private readonly dropping: (e: E) => void,
  ) {
    assert(Number.isInteger(max) && max >= 1, 'the table cache holds at least one table');
    this.sweepAbove = max;
  }

  /** Tables in memory now. */
  get size(): number {
    return this.held.size;
  }

  /**
   * The entry's table is `table` from now on (a new one, or read back from
   * its header). The sweep this may start never drops this table: the
   * caller uses it next.
   */
  hold(e: E, table: Uint32Array): void {
    e.crc = table;
    e.tableUsed = true;
    this.held.add(e);
    if (this.held.size > this.sweepAbove) this.sweep(e);
  }

  /** The entry has no table any more (a tombstone, or dropped). */
  release(e: E): void {
    e.crc = null;
    this.held.delete(e);
  }

  /** The entry's table if it is in memory, marked used. */
  use(e: E): Uint32Array | null {
    if (e.crc !== null) e.tableUsed = true;
    return e.crc;
  }

  /** Drops unused droppable tables (never `keep`'s) until 7/8 of max are left, or none can go. Returns how many went. */
  sweep(keep: E | null = null): number {
    const target = this.max - (this.max >> 3);
    let dropped = 0;
    for (let pass = 0; pass < 2 && this.held.size > target; pass++) {
      for (const e of this.held) {
        if (this.held.size <= target) break;
        if (e === keep || !this.canDrop(e)) continue;
        if (e.tableUsed) {
          e.tableUsed = false;
          continue;
        }
        this.dropping(e);
        this.release(e);
        dropped++;
      }
    }
    this.sweepAbove = Math.max(this.max, this.held.size + Math.max(1, this.max >> 3));
    return dropped;
  }
}
