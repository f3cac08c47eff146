import { runSeed } from './run-seed.js';
import { realNode } from './real-node.js';
const list = (process.argv[2] ?? '12,15,16,24,31,37').split(',').map(Number);
let cpu = 0, ok = 0, ops = 0;
for (const s of list) {
  const c0 = process.cpuUsage();
  const r = await runSeed({ seed: s, factory: realNode });
  const c = process.cpuUsage(c0);
  cpu += (c.user + c.system) / 1000; ops += r.opsIssued; if (r.ok) ok++;
  const t = r.timing;
  console.log(s, r.ok ? 'ok' : r.failure!.guarantee, r.opsIssued, r.events, `wl ${t.workloadCpuMs.toFixed(0)}ms/${(t.workloadSimMs/1000).toFixed(0)}s settle ${t.settleCpuMs.toFixed(0)}ms/${(t.settleSimMs/1000).toFixed(0)}s`);
}
console.log(`seeds ${list.length} ok ${ok} ops ${ops} cpu ${cpu.toFixed(0)} ms = ${(cpu / list.length).toFixed(0)} ms/seed`);
