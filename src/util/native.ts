import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The optional native addon (native/, built by `npm run build`). Everything
 * it offers has a JavaScript fallback, so a missing or broken build makes
 * torus slower, never wrong. Loading it never logs.
 */
export interface NativeAddon {
  crc32c(data: Uint8Array, initial?: number): number;
  crc32cPortable(data: Uint8Array, initial?: number): number;
  /** The crc32-instruction code without carry-less folding (the table code on CPUs without SSE4.2). */
  crc32cNoFold?(data: Uint8Array, initial?: number): number;
  crc32cVariant: string;
  /** CRC32C of each `pageBytes` page of data into out[i]. */
  crc32cPages?(data: Uint8Array, pageBytes: number, out: Uint32Array): void;
  /** Flushes the file system holding fd; calls back with 0 or an errno. */
  syncfs?(fd: number, callback: (errno: number) => void): void;
  /** Bytes read, or -errno; -EAGAIN when the data is not in the page cache. */
  preadNowait?(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  /**
   * Reads many ranges from the page cache with one system call (io_uring):
   * `spec` holds fd, offset in the buffer, length and file position per
   * buffer; results[i] gets bytes read or -errno. Returns 0, or -errno when
   * the batch could not be made at all.
   */
  readBatchNowait?(buffers: Uint8Array[], spec: Float64Array, results: Float64Array): number;
  /** The address of data's first byte modulo `modulus` (a power of two up to 64 KiB). */
  addressModulo?(data: Uint8Array, modulus: number): number;
  /** Voluntary context switches of the calling thread so far (it slept), or -errno. */
  threadWaits?(): number;
  /** Kernel nbd plumbing (src/attach/kernel-nbd.ts): an AF_UNIX stream pair; throws an Error with .errno. */
  nbdSocketpair?(): [number, number];
  /** One generic netlink request and its replies up to the ack, on a worker thread. */
  netlinkTransact?(request: Uint8Array, callback: (errno: number, reply: Buffer | null) => void): void;
  /** Configures /dev/nbdN by ioctl, then runs NBD_DO_IT on a worker thread until disconnect. */
  nbdIoctlServe?(
    path: string,
    sockFd: number,
    sizeBytes: number,
    blockSize: number,
    flags: number,
    timeoutS: number,
    onReady: (errno: number, stage: string) => void,
    onDone: (errno: number) => void,
  ): void;
  nbdIoctlDisconnect?(path: string, callback: (errno: number) => void): void;
}

/** Directory holding package.json, found from this file in src/util or dist/src/util. */
function projectRoot(): string | null {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) return null;
    dir = parent;
  }
}

/** Loads an addon file and checks it is torus_native; throws otherwise. */
function requireAddon(file: string): NativeAddon {
  const addon = createRequire(import.meta.url)(file) as Partial<NativeAddon>;
  if (typeof addon.crc32c !== 'function' || typeof addon.crc32cPortable !== 'function' || typeof addon.crc32cVariant !== 'string') {
    throw new Error(`${file} is not a torus_native addon`);
  }
  return addon as NativeAddon;
}

function load(): NativeAddon | null {
  // TORUS_NATIVE_ADDON names another build to load instead (the sanitizer
  // build of `npm run test:asan`). Asked for by name, it must load: a
  // failure throws instead of falling back to JavaScript, so a sanitizer run
  // can never pass without the addon it was meant to check.
  const named = process.env.TORUS_NATIVE_ADDON;
  if (named !== undefined && named !== '') return requireAddon(named);
  const root = projectRoot();
  if (root === null) return null;
  const file = join(root, 'native', 'build', 'Release', 'torus_native.node');
  if (!existsSync(file)) return null;
  try {
    return requireAddon(file);
  } catch {
    // Built for another Node ABI or a broken build: the JS code is correct, only slower.
    return null;
  }
}

export const nativeAddon: NativeAddon | null = load();
