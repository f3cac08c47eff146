/**
 * fio against an NBD export (`--ioengine=nbd`, libnbd) with crc32c
 * verification: each run writes its region in random order, every block
 * with a header carrying its offset and the run's seed, then reads it all
 * back and checks it. Bytes from an earlier run (another seed), from
 * another place, or damaged fail the check. A loop of such runs keeps I/O
 * going across a fault.
 */
import { spawn } from 'node:child_process';
import { scratchDir } from './nbd-exec.js';
import { requireTool } from './tools.js';

export interface FioJob {
  readonly uri: string;
  /** Region written and verified, e.g. 32m. */
  readonly size: string;
  readonly offset?: string;
  /** Block size of each I/O, e.g. 64k. */
  readonly bs?: string;
  readonly iodepth?: number;
  /** Selects the run's data (and, in the headers, tells runs apart). */
  readonly seed: number;
  /** Only read and check what the run with this seed wrote. */
  readonly verifyOnly?: boolean;
  /** Caps the write bandwidth, e.g. 2m (fio --rate). */
  readonly rate?: string;
  readonly timeoutMs?: number;
}

export interface FioResult {
  readonly seed: number;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly output: string;
  readonly ms: number;
  /** Lines where fio reports a verify failure or an I/O error. */
  readonly errors: string[];
}

const OUTPUT_CHARS_MAX = 64 * 1024;

export function fioArgs(job: FioJob): string[] {
  return [
    '--name=torus',
    '--ioengine=nbd',
    `--uri=${job.uri}`,
    '--rw=randwrite',
    `--bs=${job.bs ?? '64k'}`,
    `--iodepth=${job.iodepth ?? 8}`,
    `--size=${job.size}`,
    ...(job.offset ? [`--offset=${job.offset}`] : []),
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_fatal=1',
    `--randseed=${job.seed}`,
    ...(job.verifyOnly ? ['--verify_only'] : []),
    ...(job.rate ? [`--rate=${job.rate}`] : []),
    '--group_reporting',
  ];
}

/** Runs one fio job to its end (bounded by timeoutMs, default 120 s). */
export function runFio(job: FioJob): Promise<FioResult> {
  requireTool('fio', 'fio');
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn('fio', fioArgs(job), { cwd: scratchDir(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const add = (d: Buffer) => {
      out += d.toString();
      if (out.length > 2 * OUTPUT_CHARS_MAX) out = out.slice(-OUTPUT_CHARS_MAX);
    };
    child.stdout!.on('data', add);
    child.stderr!.on('data', add);
    const timer = setTimeout(() => {
      out += `\n[fio killed after ${job.timeoutMs ?? 120_000} ms]\n`;
      child.kill('SIGKILL');
    }, job.timeoutMs ?? 120_000);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const errors = out.split('\n').filter((l) => /verify:|io_u error|fio: pid=\d+, err=|err=\s*[1-9]/i.test(l));
      resolve({ seed: job.seed, code, signal, output: out, ms: Date.now() - started, errors });
    });
  });
}

export const fioOk = (r: FioResult): boolean => r.code === 0 && r.errors.length === 0;

export interface FioLoopOptions {
  readonly uri: string;
  /** Each run writes and checks its own region of this many bytes, never used before in the loop. */
  readonly regionBytes: number;
  /** Regions available (the volume holds at least firstRegion + regions of them). */
  readonly regions: number;
  readonly firstRegion?: number;
  readonly seed: number;
  readonly bs?: string;
  readonly iodepth?: number;
  readonly rate?: string;
}

/** One finished run of a loop: enough to check its region again later (runFio with verifyOnly). */
export interface FioRegionRun extends FioResult {
  readonly offset: number;
  readonly bytes: number;
  readonly startedAt: number;
}

/**
 * fio runs back to back until stop(), each on a fresh region (fio's crc32c
 * headers do not tell one run's block from another's at the same offset,
 * so a read that went back to an older run's bytes would pass; a fresh
 * region turns any stale read into zeroes, which fail). Stops by itself at
 * the first run that fails, and when the regions run out (a failure too:
 * the test must size the volume for its fault).
 */
export class FioLoop {
  readonly runs: FioRegionRun[] = [];
  failed: FioRegionRun | null = null;
  private stopping = false;
  private readonly done: Promise<void>;

  constructor(private readonly opts: FioLoopOptions) {
    this.done = this.loop();
  }

  private async loop(): Promise<void> {
    const first = this.opts.firstRegion ?? 0;
    for (let i = 0; !this.stopping; i++) {
      const offset = (first + i) * this.opts.regionBytes;
      const startedAt = Date.now();
      if (i >= this.opts.regions) {
        this.failed = { seed: this.opts.seed + i, code: null, signal: null, output: `the loop used all ${this.opts.regions} fresh regions before it was stopped`, ms: 0, errors: ['out of regions'], offset, bytes: 0, startedAt };
        return;
      }
      const r = await runFio({ uri: this.opts.uri, size: String(this.opts.regionBytes), offset: String(offset), seed: this.opts.seed + i, bs: this.opts.bs, iodepth: this.opts.iodepth, rate: this.opts.rate });
      const run: FioRegionRun = { ...r, offset, bytes: this.opts.regionBytes, startedAt };
      this.runs.push(run);
      if (!fioOk(r)) {
        this.failed = run;
        return;
      }
    }
  }

  /** Runs that finished successfully. */
  get completed(): number {
    return this.runs.filter(fioOk).length;
  }

  /** Successful runs that started after `t` (Date.now() milliseconds). */
  completedSince(t: number): number {
    return this.runs.filter((r) => fioOk(r) && r.startedAt >= t).length;
  }

  /** Lets the run under way finish, then resolves with every run. */
  async stop(): Promise<FioRegionRun[]> {
    this.stopping = true;
    await this.done;
    return this.runs;
  }

  describeFailure(): string {
    return describeFio(this.failed);
  }
}

export function describeFio(f: FioResult | null): string {
  if (f === null) return 'no failure';
  return `fio run with seed ${f.seed} exited ${f.code ?? f.signal} after ${f.ms} ms; errors:\n${f.errors.slice(0, 20).join('\n')}\n--- output tail ---\n${f.output.slice(-3000)}`;
}

/** Reads back and checks the regions of earlier runs through `uri`; resolves with the failures (empty when all is intact). */
export async function verifyRuns(uri: string, runs: readonly FioRegionRun[]): Promise<FioResult[]> {
  const failed: FioResult[] = [];
  for (const r of runs.filter(fioOk)) {
    const v = await runFio({ uri, size: String(r.bytes), offset: String(r.offset), seed: r.seed, verifyOnly: true });
    if (!fioOk(v)) failed.push(v);
  }
  return failed;
}
