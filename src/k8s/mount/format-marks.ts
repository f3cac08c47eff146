import type { FsType } from './filesystem.js';

/**
 * "This volume has been formatted": recorded in the volume's own cluster (in
 * etcd, see etcd-format-marks.ts) once a filesystem was made or found on it.
 * A volume with the mark that shows no filesystem is never formatted again:
 * blkid seeing nothing there means something is wrong (a device that reads
 * zeroes, a wrong volume), not that the volume is new.
 */
export interface FormatMark {
  readonly fsType: string;
  /** ISO time the mark was written. */
  readonly at: string;
}

export interface FormatMarks {
  /** Throws when the mark cannot be read: "could not read" is never "not formatted". */
  get(volume: string, etcd: readonly string[] | null): Promise<FormatMark | null>;
  set(volume: string, etcd: readonly string[] | null, fsType: FsType): Promise<void>;
  close(): Promise<void>;
}

/** For tests, and for reasoning: the same contract without etcd. */
export class MemoryFormatMarks implements FormatMarks {
  readonly marks = new Map<string, FormatMark>();
  failGet: Error | null = null;

  private key(volume: string, etcd: readonly string[] | null): string {
    return `${etcd?.join(',') ?? ''}/${volume}`;
  }

  async get(volume: string, etcd: readonly string[] | null): Promise<FormatMark | null> {
    if (this.failGet) throw this.failGet;
    return this.marks.get(this.key(volume, etcd)) ?? null;
  }

  async set(volume: string, etcd: readonly string[] | null, fsType: FsType): Promise<void> {
    this.marks.set(this.key(volume, etcd), { fsType, at: new Date(0).toISOString() });
  }

  async close(): Promise<void> {}
}
