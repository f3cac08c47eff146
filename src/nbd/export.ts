/**
 * What the NBD server needs from the thing it serves. The server knows
 * nothing of volumes, etcd or block stores: tests serve an in-memory export.
 */

export interface Extent {
  readonly length: number;
  /** NBD_STATE_HOLE (1) | NBD_STATE_ZERO (2), as base:allocation defines. */
  readonly flags: number;
}

export interface NbdExport {
  readonly name: string;
  readonly description: string;
  /** Bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /**
   * True when a FLUSH on any connection to this export makes writes completed
   * on every other connection durable (NBD_FLAG_CAN_MULTI_CONN).
   */
  readonly multiConn: boolean;
  /**
   * The buffer returned becomes the caller's: the session hands a pooled one
   * back to its pool (util/buffer-pool.ts) once the reply is written, so an
   * export must not keep or reuse it.
   */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * `data` is the session's until the returned promise settles; then it may
   * be reused for another request. An export that still needs it later (a
   * socket write still queued, a replica that may answer after a timeout)
   * takes its own reference with retainBuffer().
   */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /**
   * With fastZero (NBD_CMD_FLAG_FAST_ZERO) an export that cannot zero faster
   * than it writes must fail at once with TORUS_ERR_NBD_UNSUPPORTED.
   */
  writeZeroes(offset: number, length: number, opts: { noHole: boolean; fua: boolean; fastZero?: boolean }): Promise<void>;
  /** Prefetch hint; may do nothing. */
  cache(offset: number, length: number): Promise<void>;
  /** Allocation status from offset, covering at least one byte, at most length. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** Called once per connection that opened it, when that connection ends. */
  release(): Promise<void>;
}

export interface ExportSummary {
  readonly name: string;
  readonly description: string;
}

export interface ExportProvider {
  list(): Promise<ExportSummary[]>;
  /**
   * Opens an export for one connection. Throws a TorusError:
   * TORUS_ERR_NBD_EXPORT_UNKNOWN, TORUS_ERR_VOLUME_IN_USE, ...
   * The same export may be opened by many connections at once.
   */
  open(name: string, client: { remote: string }): Promise<NbdExport>;
  /** Cheap lookup for NBD_OPT_INFO without taking locks. */
  describe(name: string): Promise<{ size: number; readOnly: boolean; multiConn: boolean; description: string }>;
}
