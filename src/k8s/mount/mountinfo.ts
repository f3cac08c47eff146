/**
 * /proc/self/mountinfo and `blkid -p -o export`, parsed. Pure: the caller
 * reads the file or runs the tool. The kernel's mount table, not a file of
 * our own, is what says whether a directory is mounted: it is right after a
 * torusd restart, a kubelet retry or a crash half way through.
 */

export interface MountEntry {
  /** major:minor of the filesystem's device; bind mounts of one filesystem share it. */
  readonly dev: string;
  /** The path inside the filesystem that is mounted here ("/" for the whole filesystem). */
  readonly root: string;
  readonly mountPoint: string;
  /** Per-mount options (rw, relatime, ...). */
  readonly options: readonly string[];
  readonly fsType: string;
  readonly source: string;
  /** The filesystem's own options (ext4: errors=..., data=writeback, nobarrier, ...). */
  readonly superOptions: readonly string[];
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (left.length < 6 || right.length < 2) continue;
    out.push({
      dev: left[2]!,
      root: unescape(left[3]!),
      mountPoint: unescape(left[4]!),
      options: left[5]!.split(','),
      fsType: right[0]!,
      source: unescape(right[1]!),
      superOptions: right[2] === undefined || right[2] === '' ? [] : right[2].split(','),
    });
  }
  return out;
}

/** The mount that is visible at `dir`: with stacked mounts, the last one listed. */
export function mountAt(entries: readonly MountEntry[], dir: string): MountEntry | null {
  for (let i = entries.length - 1; i >= 0; i--) if (entries[i]!.mountPoint === dir) return entries[i]!;
  return null;
}

/**
 * The mount that holds `file` (an absolute path with symbolic links
 * resolved): the one with the longest mount point above it, and of stacked
 * mounts there, the last one listed.
 */
export function mountHolding(entries: readonly MountEntry[], file: string): MountEntry | null {
  let best: MountEntry | null = null;
  for (const e of entries) {
    const mp = e.mountPoint;
    const under = mp === '/' || file === mp || file.startsWith(mp.endsWith('/') ? mp : `${mp}/`);
    if (under && (best === null || mp.length >= best.mountPoint.length)) best = e;
  }
  return best;
}

export type Probe = { readonly kind: 'empty' } | { readonly kind: 'filesystem'; readonly type: string } | { readonly kind: 'ambiguous'; readonly detail: string };

/**
 * `blkid -p -o export DEV` exit codes: 0 found a signature, 2 found nothing,
 * 8 found several that contradict each other (ambivalent); anything else is
 * an error. Only exit 2 means "empty", and only after the device's first and
 * last MiB were read without error (the caller's job).
 */
export function interpretBlkid(exitCode: number | null, stdout: string, stderr: string): Probe {
  if (exitCode === 2) return { kind: 'empty' };
  if (exitCode === 8) return { kind: 'ambiguous', detail: (stderr.trim() || stdout.trim() || 'several signatures').slice(0, 500) };
  if (exitCode !== 0) throw new Error(`blkid -p exited ${String(exitCode)}: ${(stderr.trim() || stdout.trim()).slice(0, 500)}`);
  const tags = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) tags.set(line.slice(0, eq), line.slice(eq + 1));
  }
  const type = tags.get('TYPE');
  if (type !== undefined && type !== '') return { kind: 'filesystem', type };
  // A partition table or other signature without a filesystem TYPE is data
  // all the same: never "empty".
  const what = tags.get('PTTYPE') ?? tags.get('USAGE') ?? [...tags.keys()].join(',');
  return { kind: 'ambiguous', detail: `a signature without a filesystem type (${what || 'unknown'})` };
}
