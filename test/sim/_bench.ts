import { runSeed } from './run-seed.js';
import { realNode } from './real-node.js';
const from = Number(process.argv[2] ?? 10), n = Number(process.argv[3] ?? 5);
let cpu = 0, ok = 0, ops = 0;
for (let s = from; s < from + n; s++) {
  const c0 = process.cpuUsage();
  const r = await runSeed({ seed: s, factory: realNode });
  const c = process.cpuUsage(c0);
  cpu += (c.user + c.system) / 1000; ops += r.opsIssued; if (r.ok) ok++;
  const t = r.timing;
  console.log(s, r.ok ? 'ok' : r.failure!.guarantee, r.opsIssued, `wl ${t.workloadCpuMs.toFixed(0)}ms/${(t.workloadSimMs/1000).toFixed(0)}s settle ${t.settleCpuMs.toFixed(0)}ms/${(t.settleSimMs/1000).toFixed(0)}s`);
}
console.log(`seeds ${n} ok ${ok} ops ${ops} cpu ${cpu.toFixed(0)} ms = ${(cpu / n).toFixed(0)} ms/seed, ${(cpu / ops * 1000).toFixed(0)} us/op`);
