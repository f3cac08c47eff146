import type { Clock } from '../util/clock.js';
import type { MoveProgress } from './cluster-view.js';

/**
 * Progress of a command that waits (peer remove draining a member), shown
 * three ways: one line redrawn in place on a terminal, plain lines at an
 * interval otherwise (logs, pipes), or one JSON object per line with -o json.
 */

export type ProgressMode = 'tty' | 'lines' | 'json';

/** Characters of the bar on a terminal. */
export const PROGRESS_BAR_CHARS = 24;
/** Plain and JSON lines: at least one this often, and one at once when the phase changes. */
export const PROGRESS_LINE_INTERVAL_MS = 10_000;

export interface DrainState {
  readonly uuid: string;
  readonly ringVersion: number;
  readonly phase: 'stable' | 'moving' | 'settled';
  readonly progress: MoveProgress | null;
  /** Whether the ring still names the member. */
  readonly member: boolean;
  /** Live processes doing I/O, and how many use the current ring version. */
  readonly acks: { readonly live: number; readonly current: number };
}

export function progressBar(percent: number, chars = PROGRESS_BAR_CHARS): string {
  const full = Math.max(0, Math.min(chars, Math.round((percent / 100) * chars)));
  return `[${'#'.repeat(full)}${'.'.repeat(chars - full)}]`;
}

/** One human line for a drain state (no bar). */
export function describeDrain(s: DrainState): string {
  const head = `draining ${s.uuid}: ring version ${s.ringVersion} ${s.phase}`;
  const p = s.progress;
  if (s.phase === 'moving' && p !== null) {
    const unavailable = p.unavailable > 0 ? `, ${p.unavailable} block(s) with no reachable current copy` : '';
    return `${head}: ${p.percent.toFixed(0)}% of the blocks gone through, ${p.volumesDone}/${p.volumes} volume(s) moved, ${p.scanned} block(s) scanned, ${p.copied} copied${unavailable}`;
  }
  if (s.phase === 'settled') return `${head}: every volume moved; ${s.acks.current}/${s.acks.live} live process(es) use this ring version`;
  if (s.member) return `${head}: the ring still names the member`;
  return `peer ${s.uuid} has left the ring (ring version ${s.ringVersion}, stable)`;
}

export class ProgressReporter {
  private lastKey = '';
  private lastAt = Number.NEGATIVE_INFINITY;
  private drawn = false;

  constructor(
    private readonly write: (text: string) => void,
    private readonly mode: ProgressMode,
    private readonly clock: Clock,
    private readonly intervalMs = PROGRESS_LINE_INTERVAL_MS,
  ) {}

  update(s: DrainState): void {
    const now = this.clock.monotonic();
    const line = describeDrain(s);
    if (this.mode === 'tty') {
      const bar = s.phase === 'moving' && s.progress !== null ? ` ${progressBar(s.progress.percent)}` : '';
      // Carriage return and erase to the end of the line: redraw in place.
      this.write(`\r${line}${bar}\x1b[K`);
      this.drawn = true;
      return;
    }
    // The phase (or version) changing is news at once; otherwise a line per interval.
    const key = `${s.ringVersion} ${s.phase} ${s.member}`;
    if (key === this.lastKey && now - this.lastAt < this.intervalMs) return;
    this.lastKey = key;
    this.lastAt = now;
    if (this.mode === 'json') this.write(`${JSON.stringify({ event: 'progress', ...s })}\n`);
    else this.write(`${line}\n`);
  }

  /** The last word, on a line of its own. */
  finish(s: DrainState): void {
    if (this.mode === 'json') {
      this.write(`${JSON.stringify({ event: 'done', ...s })}\n`);
      return;
    }
    if (this.mode === 'tty' && this.drawn) this.write('\r\x1b[K');
    this.write(`${describeDrain(s)}\n`);
  }
}
