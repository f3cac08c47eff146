import { EventEmitter } from 'node:events';
import type { Namespace } from 'etcd3';

/**
 * Keeps alive an etcd lease granted by an earlier run of this process (a
 * torusd restart with kernel attachments: their volume locks live on that
 * lease). etcd3 1.1.2 can only keep alive leases it granted itself, so this
 * is the same loop over the raw LeaseKeepAlive stream, with the events
 * EtcdSession listens to: keepaliveFired, keepaliveSucceeded, keepaliveFailed
 * and lost.
 */
export class ResumedLease extends EventEmitter {
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private lastOk = Date.now();

  constructor(
    private readonly ns: Namespace,
    readonly id: string,
    private readonly ttlSeconds: number,
  ) {
    super();
    // The same cadence as etcd3's own leases: a third of the TTL.
    this.schedule(0);
  }

  grant(): Promise<string> {
    return Promise.resolve(this.id);
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.tick(), ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    if (Date.now() - this.lastOk > 2 * 1000 * this.ttlSeconds) {
      this.close();
      this.emit('lost', new Error('no keepalive answered for twice the lease TTL'));
      return;
    }
    this.emit('keepaliveFired');
    try {
      const res = await this.keepaliveOnce();
      if (this.closed) return;
      if (Number(res.TTL) <= 0) {
        this.close();
        this.emit('lost', new Error(`etcd no longer knows lease ${this.id}`));
        return;
      }
      this.lastOk = Date.now();
      this.emit('keepaliveSucceeded', res);
      this.schedule((1000 * this.ttlSeconds) / 3);
    } catch (err) {
      if (this.closed) return;
      this.emit('keepaliveFailed', err);
      this.schedule(500);
    }
  }

  /** One keepalive round trip (bounded by a third of the TTL). */
  async keepaliveOnce(): Promise<{ ID: string; TTL: string }> {
    const stream = await this.ns.leaseClient.leaseKeepAlive();
    try {
      return await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('lease keepalive timed out')), Math.max(1000, (1000 * this.ttlSeconds) / 3));
        stream.on('data', (res: { ID: string; TTL: string }) => {
          clearTimeout(t);
          resolve(res);
        });
        stream.on('error', (err: Error) => {
          clearTimeout(t);
          reject(err);
        });
        stream.write({ ID: this.id });
      });
    } finally {
      stream.end();
    }
  }

  async revoke(): Promise<void> {
    this.close();
    try {
      await this.ns.leaseClient.leaseRevoke({ ID: this.id });
    } catch (err) {
      if (!/not found/i.test(String((err as Error).message))) throw err;
    }
  }

  release(): void {
    this.close();
  }

  private close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
