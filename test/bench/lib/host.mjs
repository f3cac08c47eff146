// Facts about the host that move the write figures as much as the code does,
// printed on the bench's machine line so runs on different hosts can be told
// apart (docs/perf/profile.md, "The host under the write jobs"):
//
// - The file system under the run folder. On ext4 without a journal, a new
//   file skips every inode freed in the last 60 s (300 s while the inode
//   table block is still dirty), reading the inode table for each one:
//   torusd makes a file per 1 MiB block, and after a volume's blocks were
//   deleted, a first write into new blocks ran at half the speed it had
//   five quiet minutes later.
// - Free page reporting (virtio-balloon): a guest page left free for a few
//   seconds is handed back to the host, and the next write into it waits
//   for the host to map it again. Writing 1 GiB into such pages ran at
//   about 430 MiB/s, into pages just freed at about 3 GiB/s.
import { readFileSync, readdirSync, realpathSync } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import path from 'node:path';

/**
 * The mount holding `file` from /proc/self/mountinfo text: the longest mount
 * point that is `file` or a parent of it. Fields (proc(5)): ... 4 mount
 * point ... then " - " fstype source. Octal escapes (\040) in paths are
 * decoded. Null when nothing matches.
 */
export function mountOf(mountinfo, file) {
  const unescape = (s) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
  let best = null;
  for (const line of mountinfo.split('\n')) {
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const left = line.slice(0, dash).split(' ');
    const right = line.slice(dash + 3).split(' ');
    const mountPoint = unescape(left[4] ?? '');
    if (mountPoint === '') continue;
    const inside = file === mountPoint || mountPoint === '/' || file.startsWith(`${mountPoint}/`);
    if (!inside) continue;
    if (best === null || mountPoint.length >= best.mountPoint.length) {
      best = { mountPoint, fsType: right[0] ?? '', source: unescape(right[1] ?? '') };
    }
  }
  return best;
}

/**
 * Whether an ext4 file system has a journal, from its
 * /sys/fs/ext4/<device>/journal_task text: the journal thread's pid, or
 * "<none>" without a journal. Null for anything else.
 */
export function ext4HasJournal(journalTask) {
  const t = journalTask.trim();
  if (t === '<none>') return false;
  if (/^\d+$/.test(t)) return true;
  return null;
}

/** Whether a virtio device's features bit string (bit 0 first) offers free page reporting (bit 5). */
export function offersFreePageReporting(features) {
  return features.trim().charAt(5) === '1';
}

/** The run folder's file system: { type, device, journal (ext4 only: true, false or null) }. */
export function describeDataFs(dir) {
  let mount;
  try {
    mount = mountOf(readFileSync('/proc/self/mountinfo', 'utf8'), realpathSync(dir));
  } catch {
    return null;
  }
  if (mount === null) return null;
  const out = { type: mount.fsType, device: mount.source, journal: null };
  if (mount.fsType === 'ext4') {
    try {
      out.journal = ext4HasJournal(readFileSync(`/sys/fs/ext4/${path.basename(mount.source)}/journal_task`, 'utf8'));
    } catch {
      // older kernels have no journal_task: unknown
    }
  }
  return out;
}

/** Whether a virtio balloon reports free pages to the host (null where /sys does not say). */
export function freePageReporting() {
  const drv = '/sys/bus/virtio/drivers/virtio_balloon';
  let devices;
  try {
    devices = readdirSync(drv).filter((n) => n.startsWith('virtio'));
  } catch {
    return false; // no balloon driver: nothing reports pages
  }
  try {
    return devices.some((d) => offersFreePageReporting(readFileSync(path.join(drv, d, 'features'), 'utf8')));
  } catch {
    return null;
  }
}

/**
 * Writes `bytes` into a new file in `dir` and deletes it, so that as many
 * page-cache pages are free and not yet reported to the host when the next
 * job starts. Where free page reporting is on, a write into pages the host
 * took back waits for it to map them again: a prefill (a write into pages
 * the page cache does not hold yet) ran at 465 MiB/s or 2000-2400 on the
 * same server, depending on what the job before it had freed
 * (docs/perf/profile.md, "The host under the write jobs"). Run right before
 * each prefill, on every target alike, it gives each the pages just freed.
 * The file is never synced: its dirty pages are dropped with it. `wrote`
 * is told the file's size before it goes.
 */
export async function warmFreePages(dir, bytes, wrote = () => {}) {
  const file = path.join(dir, 'warm-free-pages');
  const chunk = Buffer.alloc(1024 * 1024, 0x5a);
  const fh = await open(file, 'w');
  try {
    let done = 0;
    while (done < bytes) {
      const { bytesWritten } = await fh.write(chunk, 0, Math.min(chunk.length, bytes - done));
      done += bytesWritten;
    }
    const { size } = await fh.stat();
    wrote(size);
  } finally {
    await fh.close();
    await unlink(file);
  }
}

const JOURNAL_PHRASE = new Map([
  [true, ' with a journal'],
  [false, ' without a journal'],
  [null, ''],
]);
const REPORTING_PHRASE = new Map([
  [true, 'free page reporting on'],
  [false, 'no free page reporting'],
  [null, 'free page reporting unknown'],
]);

/** One phrase for the machine line. */
export function hostPhrase(dataFs, reporting) {
  const fs = dataFs === null ? 'run folder on an unknown file system' : `run folder on ${dataFs.type}${JOURNAL_PHRASE.get(dataFs.journal)} (${dataFs.device})`;
  return `${fs}, ${REPORTING_PHRASE.get(reporting)}`;
}
