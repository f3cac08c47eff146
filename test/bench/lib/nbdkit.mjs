// nbdkit targets: `file` (the reference: the same disk as torusd's data),
// and `memory` and `null`, the ceilings of NBD over loopback on this
// machine (a server that only copies to RAM; a server that stores nothing).
// nbdkit runs with its defaults (its own thread model and thread count).
import { rmSync } from 'node:fs';
import path from 'node:path';
import { BenchError, run, runOk, waitFor } from './procs.mjs';
import { freePort } from './ports.mjs';

const READY_TIMEOUT_MS = 30_000;
const START_ATTEMPTS = 3;

export class NbdkitTarget {
  /** plugin: 'file' | 'memory' | 'null'. */
  constructor({ name, plugin, work, sup, sampler, size }) {
    Object.assign(this, { name, plugin, work, sup, sampler, size });
    this.main = null;
    this.fresh = null;
    /** Exact command lines: the long-running server, and each prefill round's fresh one. */
    this.mainCommandLine = null;
    this.freshCommandLines = [];
    /** Every server started, for CPU accounting. */
    this.handles = [];
    this.seq = 0;
  }

  /** The long-running server the timed jobs use; for `file`, its image is created here (sparse). */
  async start() {
    this.main = await this.#serve(this.plugin === 'file' ? path.join(this.work, `${this.name}.img`) : null);
    this.mainCommandLine = this.main.handle.commandLine;
  }

  uri() {
    return this.main.uri;
  }

  /**
   * A never-written device for one prefill round: a new sparse file and its
   * own nbdkit for `file`, a new nbdkit for `memory`; `null` stores nothing,
   * so its one server is always fresh.
   */
  async startFresh(round) {
    if (this.plugin === 'null') return { uri: this.main.uri, release: async () => {} };
    const file = this.plugin === 'file' ? path.join(this.work, `${this.name}-prefill-${round}.img`) : null;
    const server = await this.#serve(file);
    this.freshCommandLines.push(server.handle.commandLine);
    return {
      uri: server.uri,
      release: async () => {
        await this.sup.stop(server.handle);
        if (file) rmSync(file, { force: true });
      },
    };
  }

  async #serve(file) {
    if (file) await runOk('truncate', ['-s', this.size, file]);
    let lastErr = null;
    for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
      const port = await freePort();
      const label = `${this.name}-${++this.seq}`;
      const pluginArgs = this.plugin === 'file' ? ['file', file] : [this.plugin, this.size];
      const args = ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), ...pluginArgs];
      const handle = this.sup.start(label, 'nbdkit', args, { logFile: path.join(this.work, `${label}.log`) });
      this.handles.push(handle);
      this.sampler.track(this.name, label, handle.pid);
      const uri = `nbd://127.0.0.1:${port}/`;
      try {
        await waitFor(`${label} ready`, async () => (await run('nbdinfo', ['--size', uri], { timeoutMs: 5000 })).code === 0, {
          timeoutMs: READY_TIMEOUT_MS,
          alive: [handle],
        });
        return { handle, uri, port, file };
      } catch (err) {
        // Most likely someone took the port between picking and binding: try another.
        lastErr = err;
        await this.sup.stop(handle);
      }
    }
    throw new BenchError(`${this.name}: nbdkit did not start in ${START_ATTEMPTS} attempts: ${lastErr?.message}`);
  }
}
