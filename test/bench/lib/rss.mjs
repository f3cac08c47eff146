// Resident memory of every target, sampled from /proc while the bench runs.
//
// A target is a set of processes (one torusd; three cluster peers; nbdkit
// and the fresh nbdkit of each prefill round), each with the processes it
// spawned. At every sample the VmRSS of all of a target's live processes is
// summed, and the peak of that sum is the target's peak RSS. Threads
// (libuv's pool, worker threads) share their process's RSS, so they are
// counted once. The kernel's own per-process peak (VmHWM) is kept as well:
// it catches spikes between samples, and for a one-process target it is
// exact.
import { readdirSync, readFileSync } from 'node:fs';

const DESCENDANTS_EVERY_MS = 2_000;

function statusKib(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null; // gone
  }
  const kib = (key) => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  };
  // VmRSS is the sum of these three: what is mapped from files (node's own
  // binary, mostly), anonymous memory (heaps, stacks), and shared memory.
  return { rss: kib('VmRSS'), hwm: kib('VmHWM'), anon: kib('RssAnon'), file: kib('RssFile') + kib('RssShmem') };
}

/** pid -> ppid for every process on the machine. */
export function parentMap() {
  const out = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(name), Number(rest[1]));
    } catch {
      // exited while listing
    }
  }
  return out;
}

/** Every process below each root pid (children, their children, ...), from one parentMap(). */
export function descendantsOf(roots, parents = parentMap()) {
  const children = new Map();
  for (const [pid, ppid] of parents) {
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(pid);
  }
  const out = new Map();
  for (const root of roots) {
    const below = [];
    const stack = [...(children.get(root) ?? [])];
    while (stack.length > 0) {
      const p = stack.pop();
      below.push(p);
      stack.push(...(children.get(p) ?? []));
    }
    out.set(root, below);
  }
  return out;
}

export class RssSampler {
  /** label -> { target, pid } */
  #procs = new Map();
  #timer = null;
  #descendants = new Map(); // root pid -> pids below it
  #descendantsAt = 0;
  #phase = 'setup';
  /** target -> { peakKib, peakAt, phase peaks } */
  #targets = new Map();
  /** label -> { target, pid, peakRssKib, peakPhase, hwmKib, and at that peak: peakAnonKib, peakFileKib } */
  #perProcess = new Map();

  constructor({ intervalMs = 200 } = {}) {
    this.intervalMs = intervalMs;
  }

  /** Counts pid (and whatever it spawns) under target from now on, as `label` (unique per process). */
  track(target, label, pid) {
    this.#procs.set(label, { target, pid });
    if (!this.#perProcess.has(label)) this.#perProcess.set(label, { target, pid, peakRssKib: 0, peakPhase: null, hwmKib: 0, peakAnonKib: 0, peakFileKib: 0 });
    this.#perProcess.get(label).pid = pid;
    this.#descendantsAt = 0;
  }

  /** Peaks are also kept per phase ('jobs', 'rebuild', ...). */
  setPhase(phase) {
    this.#phase = phase;
  }

  start() {
    this.#timer = setInterval(() => this.sample(), this.intervalMs);
    this.#timer.unref();
  }

  stop() {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.sample();
  }

  sample() {
    const now = Date.now();
    if (now - this.#descendantsAt >= DESCENDANTS_EVERY_MS) {
      this.#refreshDescendants();
      this.#descendantsAt = now;
    }
    const sums = new Map();
    for (const [label, { target, pid }] of this.#procs) {
      let rss = 0;
      let seen = false;
      let hwm = 0;
      let anon = 0;
      let file = 0;
      for (const p of [pid, ...(this.#descendants.get(pid) ?? [])]) {
        const s = statusKib(p);
        if (s === null) continue;
        seen = true;
        rss += s.rss;
        hwm += s.hwm;
        anon += s.anon;
        file += s.file;
      }
      if (!seen) continue;
      const pp = this.#perProcess.get(label);
      if (rss > pp.peakRssKib) {
        pp.peakRssKib = rss;
        pp.peakPhase = this.#phase;
        pp.peakAnonKib = anon;
        pp.peakFileKib = file;
      }
      // VmHWM only grows while the process lives; the last reading is its peak so far.
      pp.hwmKib = Math.max(pp.hwmKib, hwm);
      sums.set(target, (sums.get(target) ?? 0) + rss);
    }
    for (const [target, kib] of sums) {
      let t = this.#targets.get(target);
      if (!t) this.#targets.set(target, (t = { peakKib: 0, peakPhase: null, phases: {} }));
      if (kib > t.peakKib) {
        t.peakKib = kib;
        t.peakPhase = this.#phase;
      }
      t.phases[this.#phase] = Math.max(t.phases[this.#phase] ?? 0, kib);
    }
  }

  #refreshDescendants() {
    this.#descendants = descendantsOf([...this.#procs.values()].map((p) => p.pid));
  }

  /**
   * Per target: peakBytes (peak of the sampled sum), hwmSumBytes (sum of
   * each process's VmHWM: an upper bound, exact for one process), per phase
   * peaks, and the processes (each with its sampled peak split into what
   * was mapped from files and what was anonymous at that moment).
   */
  report() {
    const out = {};
    for (const [target, t] of this.#targets) {
      const procs = [...this.#perProcess.entries()].filter(([, p]) => p.target === target);
      out[target] = {
        peakBytes: t.peakKib * 1024,
        peakPhase: t.peakPhase,
        hwmSumBytes: procs.reduce((n, [, p]) => n + p.hwmKib * 1024, 0),
        phasePeakBytes: Object.fromEntries(Object.entries(t.phases).map(([k, v]) => [k, v * 1024])),
        processes: Object.fromEntries(
          procs.map(([label, p]) => [label, { peakBytes: p.peakRssKib * 1024, peakPhase: p.peakPhase, hwmBytes: p.hwmKib * 1024, peakAnonBytes: p.peakAnonKib * 1024, peakFileBytes: p.peakFileKib * 1024 }]),
        ),
      };
    }
    return { intervalMs: this.intervalMs, targets: out };
  }
}
