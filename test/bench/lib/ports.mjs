// Free TCP ports on 127.0.0.1. All N listeners are held open together
// before any is closed, so the ports are distinct. Another process may still
// take one before the bench binds it; each server's "did it start?" check
// catches that.
import net from 'node:net';

function listenOnZero() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

export async function freePorts(count) {
  const servers = [];
  try {
    for (let i = 0; i < count; i++) servers.push(await listenOnZero());
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

export async function freePort() {
  return (await freePorts(1))[0];
}
