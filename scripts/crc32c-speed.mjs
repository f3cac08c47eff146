#!/usr/bin/env node
// Prints CRC-32C throughput of the native and JS implementations. Informative
// only (no pass/fail): `npm run build && node scripts/crc32c-speed.mjs [sizeBytes]`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const modUrl = new URL('../dist/src/util/crc32c.js', import.meta.url);
if (!existsSync(fileURLToPath(modUrl))) {
  console.error('dist/ is missing: run "npm run build" first');
  process.exit(1);
}
const { crc32cJs, crc32cNative, crc32cDescription } = await import(modUrl.href);

const size = Number(process.argv[2] ?? 1024 * 1024);
const buf = Buffer.alloc(size);
for (let i = 0; i < size; i++) buf[i] = (i * 2654435761) >>> 24;

function measure(name, fn) {
  for (let i = 0; i < 20; i++) fn(buf, 0); // warm up the JIT
  const budgetNs = 500_000_000n; // run each for about half a second
  const start = process.hrtime.bigint();
  let rounds = 0;
  let sink = 0;
  while (process.hrtime.bigint() - start < budgetNs) {
    sink ^= fn(buf, sink);
    rounds++;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const gbps = (rounds * size) / seconds / 1e9;
  console.log(`${name.padEnd(8)} ${gbps.toFixed(2).padStart(7)} GB/s  (${rounds} x ${size} bytes)`);
}

console.log(`crc32c in use: ${crc32cDescription()}`);
if (crc32cNative) measure('native', crc32cNative);
else console.log('native   not built (run "npm run build")');
measure('js', crc32cJs);
