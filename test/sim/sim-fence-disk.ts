/**
 * Where a simulated peer keeps its fencing tokens (the FencePersistence of
 * src/replication/fence-table.ts): a file in its data dir that survives a
 * crash once save() has resolved. Until the store branch's memory twin of
 * src/store/fence-file.ts lands, this is the simulation's own.
 *
 * A save is durable when it resolves. The table it saves is copied at the
 * call, so later changes by the caller never leak into the "disk".
 */
export interface FencePersistenceLike {
  load(): Promise<Map<number, number>>;
  save(fences: ReadonlyMap<number, number>): Promise<void>;
}

export class SimFenceDisk implements FencePersistenceLike {
  private durable = new Map<number, number>();
  /** Saves so far (the log and tests). */
  saves = 0;

  async load(): Promise<Map<number, number>> {
    return new Map(this.durable);
  }

  async save(fences: ReadonlyMap<number, number>): Promise<void> {
    this.durable = new Map(fences);
    this.saves++;
  }

  /** The newest token durable for a volume (checkers). */
  tokenOf(volumeId: number): number {
    return this.durable.get(volumeId) ?? 0;
  }
}
