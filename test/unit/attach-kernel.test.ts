import { existsSync } from 'node:fs';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { clientHandshake, encodeClientGo } from '../../src/attach/handshake.js';
import { KernelNbd, kernelError, parseDevice } from '../../src/attach/kernel-nbd.js';
import { MemoryExportProvider } from '../../src/nbd/memory-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { nativeAddon, type NativeAddon } from '../../src/util/native.js';
import { streamPair } from '../helpers/nbd-stream-pair.js';

const quiet = pino({ level: 'silent' });

/** A fake addon whose netlink round trip fails with `errno` (as the kernel would). */
function failingAddon(errno: number): NativeAddon {
  return {
    ...(nativeAddon as NativeAddon),
    nbdSocketpair: () => [100, 101],
    netlinkTransact: (_req, cb) => setImmediate(() => cb(errno, null)),
    nbdIoctlServe: () => undefined,
  };
}

describe('kernel attach availability', () => {
  it('says the addon is missing, with how to build it', async () => {
    const av = await new KernelNbd({ addon: null }).availability();
    expect(av.available).toBe(false);
    if (!av.available) {
      expect(av.error.code).toBe('TORUS_ERR_ATTACH_UNAVAILABLE');
      expect(av.error.message).toMatch(/npm run build/);
    }
  });

  it('on this host (a kernel without nbd) says to load the module, and refuses to attach with that error', async () => {
    // The development and CI machines run a kernel built without nbd: this is
    // the path users hit there. Elsewhere the kernel has nbd and this test
    // checks the other branch.
    const k = new KernelNbd();
    const av = await k.availability();
    if (existsSync('/sys/module/nbd') || existsSync('/dev/nbd0')) {
      expect(av.available).toBe(true);
      return;
    }
    expect(nativeAddon, 'the native addon must be built for this test (npm run build)').not.toBeNull();
    expect(av.available).toBe(false);
    if (!av.available) {
      expect(av.error.code).toBe('TORUS_ERR_ATTACH_NO_MODULE');
      expect(av.error.message).toContain('modprobe nbd');
    }
    await expect(k.require()).rejects.toMatchObject({ code: 'TORUS_ERR_ATTACH_NO_MODULE' });
    await expect(k.connect({ index: null, sizeBytes: 4096, serverFlags: 1, timeoutSeconds: 1, deadConnTimeoutSeconds: 1, socketFds: [0], backend: 'x' })).rejects.toMatchObject({ code: 'TORUS_ERR_ATTACH_NO_MODULE' });
  });

  it.each([
    [1, 'TORUS_ERR_ATTACH_PERMISSION', /root/],
    [13, 'TORUS_ERR_ATTACH_PERMISSION', /permission denied/],
    [16, 'TORUS_ERR_ATTACH_DEVICE_BUSY', /busy/],
    [28, 'TORUS_ERR_ATTACH_NO_DEVICE', /no free nbd device/],
    [22, 'TORUS_ERR_ATTACH_KERNEL', /EINVAL/],
  ])('maps errno %i from the kernel to %s', async (errno, code, msg) => {
    const e = kernelError(errno, 'connect nbd device', '/dev/nbd0');
    expect(e.code).toBe(code);
    expect(e.message).toMatch(msg);
    // And through the netlink path: a refused family look-up other than ENOENT.
    const av = await new KernelNbd({ addon: failingAddon(errno) }).availability();
    expect(av.available).toBe(false);
    if (!av.available) expect(av.error.code).toBe(code);
  });

  it('parses device names', () => {
    expect(parseDevice('/dev/nbd3')).toBe(3);
    expect(parseDevice('nbd12')).toBe(12);
    expect(parseDevice('4')).toBe(4);
    expect(parseDevice('/dev/sda')).toBeNull();
    expect(parseDevice('/dev/nbd')).toBeNull();
  });
});

describe('client handshake against our own NBD server', () => {
  it('negotiates size and flags with NBD_OPT_GO and reads nothing past it', async () => {
    const provider = new MemoryExportProvider([{ name: 'disk', size: 8 * 1024 * 1024 }]);
    const server = new NbdServer({ provider, logger: quiet });
    const [client, serverSide] = streamPair();
    server.handle(serverSide, 'test');
    const got = await clientHandshake(client, 'disk', 5000);
    expect(got.sizeBytes).toBe(8 * 1024 * 1024);
    // HAS_FLAGS, SEND_FLUSH, SEND_FUA and SEND_TRIM at least: the kernel needs them for barriers and discard.
    expect(got.flags & 0b101101).toBe(0b101101);
    expect(client.isPaused()).toBe(true);
    client.destroy();
    await server.close();
  });

  it('fails with the server\'s reason for an unknown export', async () => {
    const server = new NbdServer({ provider: new MemoryExportProvider([]), logger: quiet });
    const [client, serverSide] = streamPair();
    server.handle(serverSide, 'test');
    await expect(clientHandshake(client, 'nope', 5000)).rejects.toMatchObject({ code: 'TORUS_ERR_NBD_PROTOCOL' });
    client.destroy();
    await server.close();
  });

  it('encodes GO with the export name and no info requests', () => {
    const b = encodeClientGo('vol');
    expect(b.readUInt32BE(0)).toBe(3); // FIXED_NEWSTYLE | NO_ZEROES
    expect(b.readUInt32BE(12)).toBe(7); // NBD_OPT_GO
    expect(b.readUInt32BE(16)).toBe(4 + 3 + 2);
    expect(b.subarray(24, 27).toString()).toBe('vol');
  });
});
