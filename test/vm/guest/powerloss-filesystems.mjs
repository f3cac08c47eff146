// The file systems the power-loss suite can put torusd's data dir on
// (TORUS_PL_FS): how the guest makes one (never discarding, so what a
// deleted file held stays on the disk), mounts it and checks it at the end,
// and the package the host installs for those tools (the guest runs the
// host's). Shared by test/vm/powerloss-host.mjs and guest/powerloss.mjs.
export const FILESYSTEMS = {
  ext4: { type: 'ext4', package: 'e2fsprogs', mkfs: (disk) => ['mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', disk]], fsck: (disk) => ['e2fsck', ['-fn', disk]] },
  xfs: { type: 'xfs', package: 'xfsprogs', mkfs: (disk) => ['mkfs.xfs', ['-q', '-f', '-K', disk]], fsck: (disk) => ['xfs_repair', ['-n', disk]] },
  /** ext4 made without a journal: run by hand (stop 45's question), not by default. */
  'ext4-nojournal': {
    type: 'ext4',
    package: 'e2fsprogs',
    mkfs: (disk) => ['mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', '-O', '^has_journal', disk]],
    fsck: (disk) => ['e2fsck', ['-fn', disk]],
  },
};

/** The entry for a TORUS_PL_FS value; throws, naming the choices, for any other. */
export function fileSystem(name) {
  if (!Object.hasOwn(FILESYSTEMS, name)) throw new Error(`TORUS_PL_FS=${name}: expected one of ${Object.keys(FILESYSTEMS).join(', ')}`);
  return FILESYSTEMS[name];
}
