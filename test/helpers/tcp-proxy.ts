import net from 'node:net';

/**
 * A TCP proxy in front of a server (etcd) that a test can cut: `cut()` drops
 * every connection and refuses new ones until `restore()`. The client sees a
 * lost stream and a server that does not answer, as in a partition, while
 * other clients still reach the server directly.
 */
export interface TcpProxy {
  /** host:port to connect to instead of the server. */
  readonly endpoint: string;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

/** `listenHost` (default 127.0.0.1) is where clients connect: a veth address lets a network namespace reach a server on loopback. */
export async function startTcpProxy(target: { host: string; port: number }, listenHost = '127.0.0.1'): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target.port, target.host);
    sockets.add(client);
    sockets.add(upstream);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, listenHost, resolve));
  const addr = server.address() as net.AddressInfo;
  return {
    endpoint: `${listenHost}:${addr.port}`,
    cut() {
      cut = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    restore() {
      cut = false;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
