import { TorusError } from '../errors/torus-error.js';
import type { Extent, NbdExport } from '../nbd/export.js';

export interface Faults {
  read: 'eio' | 'none';
}

/**
 * A fault-injection layer around an export (nbdkit's error filter): while
 * `faults().read` is "eio", every READ fails with EIO. Armed only through
 * the attach API of a torusd started with TORUS_FAULT_INJECTION=1; used to
 * prove that a read error while mounting never leads to mkfs.
 */
export class FaultExport implements NbdExport {
  constructor(
    private readonly inner: NbdExport,
    private readonly faults: () => Faults,
  ) {}
  get name() {
    return this.inner.name;
  }
  get description() {
    return this.inner.description;
  }
  get size() {
    return this.inner.size;
  }
  get readOnly() {
    return this.inner.readOnly;
  }
  get multiConn() {
    return this.inner.multiConn;
  }
  read(offset: number, length: number): Promise<Buffer> {
    if (this.faults().read === 'eio') return Promise.reject(new TorusError('TORUS_ERR_ATTACH_FAULT_INJECTED', `injected read fault at offset ${offset}`));
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.inner.write(offset, data, fua);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.inner.trim(offset, length, fua);
  }
  writeZeroes(offset: number, length: number, opts: { noHole: boolean; fua: boolean; fastZero?: boolean }): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length);
  }
  release(): Promise<void> {
    return this.inner.release();
  }
}
