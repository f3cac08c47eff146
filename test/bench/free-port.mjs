#!/usr/bin/env node
// Prints N free TCP ports on 127.0.0.1, one per line (default 1). All N
// listeners are held open together before any is closed, so the ports are
// distinct. Another process may still take one before the caller binds it;
// the caller's "did it start?" check catches that.
import net from 'node:net';

const count = Number(process.argv[2] ?? '1');
if (!Number.isInteger(count) || count < 1 || count > 64) {
  console.error('usage: free-port.mjs [COUNT]   (1..64)');
  process.exit(2);
}

function listenOnZero() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

const servers = [];
for (let i = 0; i < count; i++) servers.push(await listenOnZero());
const ports = servers.map((s) => s.address().port);
await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
process.stdout.write(ports.join('\n') + '\n');
