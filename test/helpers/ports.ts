import { readFileSync } from 'node:fs';
import net from 'node:net';

/**
 * Ports for the processes a test starts; tests never hard-code ports.
 *
 * A port is chosen below the kernel's ephemeral range
 * (net.ipv4.ip_local_port_range) and checked free on every address. A port
 * the kernel hands out for `listen(0)` is an ephemeral one: once the check
 * closes it, an outgoing connection of any process may take it as its
 * local port before the daemon we start listens on it (EADDRINUSE; seen in
 * the fault suite, whose peers connect a lot, on the address of a network
 * namespace). Outgoing connections never use a port outside that range.
 */
const EPHEMERAL_DEFAULT: readonly [number, number] = [32768, 60999];
/** The lowest port handed out: above the well-known and the usual fixed service ports. */
const TEST_PORT_MIN = 10_000;
const ATTEMPTS_MAX = 200;

/** Ports this process handed out already: never twice. */
const handedOut = new Set<number>();

function ephemeralRange(): readonly [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(lo) && Number.isInteger(hi) && lo! > 0 && hi! >= lo!) return [lo!, hi!];
  } catch {
    // Not Linux, or no procfs: the kernel's default.
  }
  return EPHEMERAL_DEFAULT;
}

/** The ports tests choose from: below the ephemeral range when there is room, else above it. */
function testRange(): readonly [number, number] {
  const [lo, hi] = ephemeralRange();
  if (lo - 1 - TEST_PORT_MIN >= 1000) return [TEST_PORT_MIN, lo - 1];
  if (65535 - hi >= 1000) return [hi + 1, 65535];
  throw new Error(`no room for test ports outside the ephemeral range ${lo}-${hi} (net.ipv4.ip_local_port_range)`);
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    // Every address: the daemon may listen on 127.0.0.1 or a namespace's address.
    srv.listen({ port, host: '0.0.0.0', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/** A port no process listens on now, outside the ephemeral range, not handed out before by this process. */
export async function freePort(): Promise<number> {
  const [lo, hi] = testRange();
  const span = hi - lo + 1;
  // Test files run in separate processes: each starts at its own place.
  let at = Math.floor(Math.random() * span);
  for (let i = 0; i < ATTEMPTS_MAX; i++, at = (at + 1 + Math.floor(Math.random() * 97)) % span) {
    const port = lo + at;
    if (handedOut.has(port)) continue;
    if (await bindable(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port found in ${lo}-${hi} after ${ATTEMPTS_MAX} attempts`);
}
