import fs from 'node:fs';
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { TorusError } from '../errors/torus-error.js';
import { assert } from '../util/assert.js';
import { crc32c } from '../util/crc32c.js';
import { closeFd, fdatasync, fsyncDir, ftruncate, openFd, pwritevFull } from './fs-async.js';
import { decodeRecordHeader, encodeRecordHeader, RECORD_HEADER_BYTES, RecordType, type JournalRecord } from './journal-record.js';

/**
 * The write-ahead journal: every change to the block store is appended here
 * first, so that one sequential fdatasync makes any number of writes durable
 * (group commit), and a crash at any moment leaves a prefix of whole records.
 *
 * Segments are files `wal/<first seq, 16 hex>.log`. A segment is fdatasync'd
 * before the next one is created, so only the newest segment can have a torn
 * tail. Segments are deleted once the block files hold their records durably
 * (see FileBlockStore.checkpoint).
 */

export interface PendingRecord {
  readonly type: RecordType;
  readonly ref: JournalRecord['ref'];
  readonly offset: number;
  readonly length: number;
  readonly payload: Buffer | null;
  readonly payloadCrc: number;
}

interface QueueItem {
  readonly rec: PendingRecord;
  readonly bytes: number;
  readonly ticket: number;
  resolve(seq: number): void;
  reject(err: unknown): void;
}

interface Segment {
  readonly firstSeq: number;
  lastSeq: number; // firstSeq - 1 while empty
  readonly file: string;
  size: number;
}

export interface JournalOptions {
  readonly dir: string;
  readonly blockSize: number;
  readonly segmentBytesMax: number;
  /** Upper bound on bytes written by one writev batch. */
  readonly batchBytesMax: number;
  readonly logger: Logger;
}

export class Journal {
  private readonly opts: JournalOptions;
  private readonly log: Logger;
  private segments: Segment[] = [];
  private activeFd: number | null = null;
  private nextSeq: number;
  private queue: QueueItem[] = [];
  private ticketsIssued = 0;
  private ticketsWritten = 0;
  private syncWaiters: { ticket: number; resolve(): void; reject(err: unknown): void }[] = [];
  private pumping = false;
  private failed: Error | null = null;
  private closed = false;
  /** Highest seq known durable. */
  syncedSeq: number;
  /** Highest seq handed to the kernel. */
  writtenSeq: number;

  private constructor(opts: JournalOptions, nextSeq: number, segments: Segment[]) {
    this.opts = opts;
    this.log = opts.logger.child({ module: 'journal' });
    this.nextSeq = nextSeq;
    this.segments = segments;
    this.syncedSeq = nextSeq - 1;
    this.writtenSeq = nextSeq - 1;
  }

  /**
   * Opens the journal directory, hands every whole record found to `replay`
   * in sequence order, truncates a torn tail, and returns a journal that
   * appends after the last replayed record. The replayed segments stay until
   * `release` is called with a seq at or above their last record.
   */
  static async open(opts: JournalOptions, replay: (rec: JournalRecord) => Promise<void>): Promise<Journal> {
    await mkdir(opts.dir, { recursive: true });
    const names = (await readdir(opts.dir)).filter((n) => /^[0-9a-f]{16}\.log$/.test(n)).sort();
    const segments: Segment[] = [];
    let expected: number | null = null;
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!;
      const file = path.join(opts.dir, name);
      const firstSeq = parseInt(name.slice(0, 16), 16);
      const data = await readFile(file);
      let at = 0;
      let lastSeq = firstSeq - 1;
      let torn: string | null = null;
      while (at < data.length) {
        const h = decodeRecordHeader(data.subarray(at, at + RECORD_HEADER_BYTES), opts.blockSize);
        if (!h.ok) { torn = h.reason; break; }
        const seqWanted: number = expected ?? firstSeq;
        if (h.seq !== seqWanted) { torn = `sequence ${h.seq} where ${seqWanted} was expected`; break; }
        const end = at + RECORD_HEADER_BYTES + h.payloadBytes;
        if (end > data.length) { torn = 'short payload'; break; }
        const payload = h.type === RecordType.Write ? data.subarray(at + RECORD_HEADER_BYTES, end) : null;
        if (payload !== null && crc32c(payload) !== h.payloadCrc) { torn = 'payload crc mismatch'; break; }
        await replay({ seq: h.seq, type: h.type, ref: h.ref, offset: h.offset, length: h.length, payload });
        lastSeq = h.seq;
        expected = h.seq + 1;
        at = end;
      }
      if (torn !== null) {
        if (i !== names.length - 1) {
          // Older segments were fdatasync'd before the next was created: damage
          // there is not a torn write but lost data. Refuse to guess.
          throw new TorusError('TORUS_ERR_STORE_CORRUPT', `journal segment ${name} is damaged at byte ${at} (${torn}) and is not the newest segment`, { details: { file, at } });
        }
        opts.logger.warn({ module: 'journal', file, at, reason: torn, dropped: data.length - at }, 'journal tail torn; dropping unacknowledged bytes');
        const fd = await openFd(file, fs.constants.O_WRONLY);
        try {
          await ftruncate(fd, at);
          await fdatasync(fd);
        } finally {
          await closeFd(fd);
        }
      }
      if (at === 0) {
        await unlink(file); // created but never written: nothing to keep
        continue;
      }
      segments.push({ firstSeq, lastSeq, file, size: at });
    }
    const next = expected ?? (segments.length > 0 ? segments[segments.length - 1]!.lastSeq + 1 : 1);
    return new Journal(opts, next, segments);
  }

  /** Total bytes in segment files. */
  bytes(): number {
    let s = 0;
    for (const seg of this.segments) s += seg.size;
    for (const q of this.queue) s += q.bytes;
    return s;
  }

  /** Bytes in segments other than the one being appended to: what release() can free. */
  inactiveBytes(): number {
    let s = 0;
    const n = this.activeFd !== null ? this.segments.length - 1 : this.segments.length;
    for (let i = 0; i < n; i++) s += this.segments[i]!.size;
    return s;
  }

  /**
   * Appends a record; resolves with its sequence number once the kernel has it
   * (a process crash no longer loses it; power loss may until sync()).
   */
  append(rec: PendingRecord): Promise<number> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new TorusError('TORUS_ERR_STORE_CLOSED', 'journal is closed'));
    return new Promise((resolve, reject) => {
      const bytes = RECORD_HEADER_BYTES + (rec.payload?.length ?? 0);
      this.queue.push({ rec, bytes, ticket: ++this.ticketsIssued, resolve, reject });
      this.pump();
    });
  }

  /** Resolves once every record appended before the call is durable. */
  sync(): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const ticket = this.ticketsIssued;
    if (ticket === this.ticketsWritten && this.writtenSeq === this.syncedSeq) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.syncWaiters.push({ ticket, resolve, reject });
      this.pump();
    });
  }

  /** Deletes segments whose every record is at or below `seq` (all but the active one). */
  async release(seq: number): Promise<void> {
    const keep: Segment[] = [];
    const drop: Segment[] = [];
    for (let i = 0; i < this.segments.length; i++) {
      const seg = this.segments[i]!;
      const active = i === this.segments.length - 1 && this.activeFd !== null;
      if (!active && seg.lastSeq <= seq) drop.push(seg);
      else keep.push(seg);
    }
    this.segments = keep;
    for (const seg of drop) await unlink(seg.file);
    if (drop.length > 0) await fsyncDir(this.opts.dir);
  }

  /**
   * Starts a new segment on the next append, so that everything up to now can
   * be released. Called by checkpoints that want the whole journal gone.
   */
  async rollNow(): Promise<void> {
    await this.sync();
    await this.idle();
    if (this.activeFd !== null) {
      await closeFd(this.activeFd);
      this.activeFd = null;
    }
  }

  segmentCount(): number {
    return this.segments.length;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.sync().catch(() => undefined);
    await this.idle();
    this.closed = true;
    if (this.activeFd !== null) {
      await closeFd(this.activeFd);
      this.activeFd = null;
    }
  }

  private idlePromise: Promise<void> | null = null;
  private idleResolve: (() => void) | null = null;
  private idle(): Promise<void> {
    if (!this.pumping) return Promise.resolve();
    if (!this.idlePromise) this.idlePromise = new Promise((r) => (this.idleResolve = r));
    return this.idlePromise;
  }

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    this.runPump()
      .catch((err) => this.fail(err))
      .finally(() => {
        this.pumping = false;
        const r = this.idleResolve;
        this.idlePromise = null;
        this.idleResolve = null;
        r?.();
        if (!this.failed && (this.queue.length > 0 || this.syncWaiters.length > 0)) this.pump();
      });
  }

  private async runPump(): Promise<void> {
    while (this.queue.length > 0 || this.syncWaiters.length > 0) {
      if (this.queue.length > 0) {
        await this.writeBatch();
      }
      const due = this.syncWaiters.filter((w) => w.ticket <= this.ticketsWritten);
      if (due.length > 0) {
        this.syncWaiters = this.syncWaiters.filter((w) => w.ticket > this.ticketsWritten);
        const upto = this.writtenSeq;
        try {
          if (this.activeFd !== null) await fdatasync(this.activeFd);
        } catch (err) {
          // After a failed fdatasync the kernel may have dropped the dirty
          // pages: nothing written since the last good sync can be trusted.
          const e = new TorusError('TORUS_ERR_STORE_IO', `journal fdatasync failed: ${(err as Error).message}`, { cause: err });
          for (const w of due) w.reject(e);
          throw e;
        }
        this.syncedSeq = Math.max(this.syncedSeq, upto);
        for (const w of due) w.resolve();
      }
    }
  }

  private async writeBatch(): Promise<void> {
    let bytes = 0;
    let n = 0;
    while (n < this.queue.length && (n === 0 || bytes + this.queue[n]!.bytes <= this.opts.batchBytesMax)) {
      bytes += this.queue[n]!.bytes;
      n++;
    }
    const batch = this.queue.splice(0, n);
    await this.ensureSegment(bytes);
    const seg = this.segments[this.segments.length - 1]!;
    const bufs: Buffer[] = [];
    let seq = this.nextSeq;
    for (const item of batch) {
      const r = item.rec;
      bufs.push(encodeRecordHeader({ seq, type: r.type, ref: r.ref, offset: r.offset, length: r.length, payload: r.payload }, r.payloadCrc));
      if (r.payload) bufs.push(r.payload);
      seq++;
    }
    const startSize = seg.size;
    try {
      await pwritevFull(this.activeFd!, bufs, startSize);
    } catch (err) {
      // Undo the partial append so the next batch does not follow a torn
      // record; the records of this batch were never acknowledged.
      const code = (err as NodeJS.ErrnoException).code === 'ENOSPC' || (err as NodeJS.ErrnoException).code === 'EDQUOT' ? 'TORUS_ERR_STORE_NO_SPACE' : 'TORUS_ERR_STORE_IO';
      const e = new TorusError(code, `journal append failed: ${(err as Error).message}`, { cause: err });
      try {
        await ftruncate(this.activeFd!, startSize);
      } catch (terr) {
        for (const item of batch) item.reject(e);
        throw new TorusError('TORUS_ERR_STORE_IO', `journal could not be truncated after a failed append: ${(terr as Error).message}`, { cause: terr });
      }
      this.ticketsWritten = batch[batch.length - 1]!.ticket;
      for (const item of batch) item.reject(e);
      return;
    }
    seg.size = startSize + bytes;
    seg.lastSeq = seq - 1;
    let s = this.nextSeq;
    this.nextSeq = seq;
    this.writtenSeq = seq - 1;
    this.ticketsWritten = batch[batch.length - 1]!.ticket;
    for (const item of batch) item.resolve(s++);
  }

  private async ensureSegment(incoming: number): Promise<void> {
    const cur = this.segments[this.segments.length - 1];
    if (this.activeFd !== null && cur && (cur.size === 0 || cur.size + incoming <= this.opts.segmentBytesMax)) return;
    if (this.activeFd !== null) {
      // Make the old segment whole before any record lands in a newer one.
      await fdatasync(this.activeFd);
      this.syncedSeq = Math.max(this.syncedSeq, this.writtenSeq);
      await closeFd(this.activeFd);
      this.activeFd = null;
    }
    const name = `${this.nextSeq.toString(16).padStart(16, '0')}.log`;
    const file = path.join(this.opts.dir, name);
    assert(!this.segments.some((s) => s.file === file), 'new journal segment name is unused');
    this.activeFd = await openFd(file, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY);
    await fsyncDir(this.opts.dir);
    this.segments.push({ firstSeq: this.nextSeq, lastSeq: this.nextSeq - 1, file, size: 0 });
    this.log.debug({ file }, 'journal segment started');
  }

  private fail(err: unknown): void {
    const e = err instanceof TorusError ? err : new TorusError('TORUS_ERR_STORE_IO', `journal failed: ${(err as Error).message}`, { cause: err });
    this.failed = e;
    this.log.error({ err: e }, 'journal failed; the store refuses further writes');
    for (const q of this.queue.splice(0)) q.reject(e);
    for (const w of this.syncWaiters.splice(0)) w.reject(e);
  }
}
