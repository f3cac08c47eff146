import { TorusError } from '../errors/torus-error.js';
import { TOKEN_MAX } from '../model/version.js';
import { assert } from '../util/assert.js';

import type { FencePersistence } from '../store/fence-file.js';

/** Where a peer keeps its tokens (src/store/fence-file.ts): save() resolves once the whole table is durable. */
export type { FencePersistence };

/**
 * The newest fencing token this peer has seen for each volume
 * (docs/replication.md, "Fencing"). The one place tokens are checked: the
 * replica layer asks admit() before every change. A newer token is made
 * durable before the change it came with is applied, so a restart can
 * never forget it and let an older writer back in.
 *
 * Saves are grouped: tokens learnt while a save runs share the next one.
 */
export class FenceTable {
  private readonly tokens = new Map<number, number>();
  private saving: Promise<void> | null = null;
  private again: Promise<void> | null = null;
  private failed: TorusError | null = null;

  private constructor(private readonly persistence: FencePersistence) {}

  static async open(persistence: FencePersistence): Promise<FenceTable> {
    const table = new FenceTable(persistence);
    for (const [volumeId, token] of await persistence.load()) {
      assert(Number.isInteger(volumeId) && volumeId > 0 && Number.isInteger(token) && token >= 0, 'persisted fences are positive ids and tokens');
      table.tokens.set(volumeId, token);
    }
    return table;
  }

  /** The newest token known for a volume (0: none). */
  current(volumeId: number): number {
    return this.tokens.get(volumeId) ?? 0;
  }

  /** Every volume's newest token, for status and tests. */
  snapshot(): Map<number, number> {
    return new Map(this.tokens);
  }

  /**
   * Resolves when `token` may change the volume's blocks: it is the newest
   * known (a newer one is learnt durably first). Throws
   * TORUS_ERR_VOLUME_FENCED for an older token.
   */
  admit(volumeId: number, token: number): Promise<void> {
    const known = this.current(volumeId);
    if (token < known) {
      return Promise.reject(
        new TorusError('TORUS_ERR_VOLUME_FENCED', `volume ${volumeId}: a change with fencing token ${token} was refused; token ${known} is newer (a newer writer or maintainer holds the volume)`, {
          details: { volumeId, token, newest: known },
        }),
      );
    }
    if (token === known) return this.failed ? Promise.reject(this.failed) : this.durable();
    return this.learn(volumeId, token);
  }

  /** Durably records a token; older or equal ones change nothing. */
  learn(volumeId: number, token: number): Promise<void> {
    assert(Number.isInteger(volumeId) && volumeId > 0, 'volume id is positive');
    assert(Number.isInteger(token) && token >= 0 && token <= TOKEN_MAX, 'token is within 0..TOKEN_MAX');
    if (this.failed) return Promise.reject(this.failed);
    if (token <= this.current(volumeId)) return this.durable();
    this.tokens.set(volumeId, token);
    return this.scheduleSave();
  }


  /** Resolves once every token known now is durable (a save may be running or queued). */
  private durable(): Promise<void> {
    return this.again ?? this.saving ?? Promise.resolve();
  }

  private scheduleSave(): Promise<void> {
    if (this.saving === null) {
      const run = this.persistence.save(new Map(this.tokens)).then(
        () => {
          if (this.saving === run) this.saving = null;
        },
        (err: unknown) => {
          this.failed = new TorusError('TORUS_ERR_STORE_IO', `fencing tokens could not be made durable; changes are refused until restart: ${(err as Error)?.message ?? String(err)}`, { cause: err });
          if (this.saving === run) this.saving = null;
          throw this.failed;
        },
      );
      this.saving = run;
      return run;
    }
    if (this.again === null) {
      const current = this.saving;
      this.again = current
        .catch(() => undefined)
        .then(() => {
          this.again = null;
          if (this.failed) throw this.failed;
          return this.scheduleSave();
        });
    }
    return this.again;
  }
}
