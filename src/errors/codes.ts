/**
 * Every error torus reports carries one of these stable codes. Codes are never
 * reused or renamed: scripts and alerts match on them. `docs` is what README's
 * error table shows; test/unit/errors.test.ts keeps README and this list in step.
 */
export const ERROR_CODES = {
  // Argument and input validation (CLI, flags, names, sizes).
  TORUS_ERR_ARG_INVALID: 'a command-line argument or option is malformed',
  TORUS_ERR_SIZE_INVALID: 'a size is not of the form 512, 4KiB, 1GiB, 2G or N%',
  TORUS_ERR_NAME_INVALID: 'a volume name is empty, too long or has characters outside [A-Za-z0-9._-]',
  TORUS_ERR_CONFIRMATION_REQUIRED: 'a destructive command needs --yes-i-am-sure or YES typed on a terminal',

  // Cluster metadata (etcd).
  TORUS_ERR_ETCD_UNAVAILABLE: 'etcd could not be reached or did not answer in time',
  TORUS_ERR_ETCD_FAILED: 'etcd answered with an error',
  TORUS_ERR_CLUSTER_NOT_INITIALISED: 'the cluster has not been formatted (run torusctl init)',
  TORUS_ERR_CLUSTER_ALREADY_INITIALISED: 'the cluster is already formatted',
  TORUS_ERR_CLUSTER_CONFLICT: 'a concurrent change to cluster metadata won; retry',
  TORUS_ERR_METADATA_CORRUPT: 'a record in etcd is not in the expected format',
  TORUS_ERR_RING_UNSAFE: 'the ring change would leave fewer peers than the replication factor (use --force)',
  TORUS_ERR_SESSION_LOST: 'the etcd lease of this session expired or was revoked',

  // Volumes.
  TORUS_ERR_VOLUME_NOT_FOUND: 'no volume has that name',
  TORUS_ERR_VOLUME_EXISTS: 'a volume with that name already exists',
  TORUS_ERR_VOLUME_IN_USE: 'the volume is open for writing elsewhere (the holder is named)',
  TORUS_ERR_VOLUME_READ_ONLY: 'the volume is open read-only',
  TORUS_ERR_VOLUME_LOCK_LOST: 'the write lock on the volume was lost; writes are refused',
  TORUS_ERR_VOLUME_FENCED: 'a newer writer holds the volume; this writer is fenced off',
  TORUS_ERR_VOLUME_LOCK_EXPIRED: 'the last lock on the volume ended with its lease, not released; a maintainer leaves its holder time to take it again',
  TORUS_ERR_RING_EMPTY: 'no peer is in the ring, so blocks have nowhere to live (torusd --auto-join or torusctl peer add)',
  TORUS_ERR_RING_PEER_UNKNOWN: 'the ring names a peer whose address is not known (it is not reporting)',
  TORUS_ERR_RING_OUTDATED: 'a peer refused a request placed with an older ring version than its own; the sender re-reads the ring',
  TORUS_ERR_RING_TRANSITION: 'the ring change is not possible in the current transition (see torusctl cluster status)',

  // Replication.
  TORUS_ERR_REPLICA_STALE: 'a replica refused a change that does not build on its copy, or its copy is suspect; it is recorded stale and caught up',
  TORUS_ERR_REPLICA_QUORUM: 'fewer owners than minReplicas took a write or flush, so it was not acknowledged',
  TORUS_ERR_DATA_LOST: 'acknowledged, unflushed changes were lost with every copy holding them; every later FLUSH of this open fails: detach and attach again',
  TORUS_ERR_BLOCK_UNAVAILABLE: 'no current copy of a block is reachable (its newest copies are on peers that are down); the read fails rather than return older data',
  TORUS_ERR_PEER_NOT_LIVE: 'the peer has no etcd session; it refuses changes until it has re-registered and re-read the ring and fences',
  TORUS_ERR_VERSION_EXHAUSTED: 'one coordinator changed one block 2^32 - 1 times; it must take a new fencing token',

  // I/O ranges and the local block store.
  TORUS_ERR_IO_OUT_OF_RANGE: 'offset or length lies outside the volume',
  TORUS_ERR_STORE_NO_SPACE: 'the data dir has reached its size cap',
  TORUS_ERR_STORE_CRC_MISMATCH: 'a block failed its checksum on read',
  TORUS_ERR_STORE_IO: 'the local disk reported an I/O error',
  TORUS_ERR_STORE_CORRUPT: 'on-disk state is not in the expected format',
  TORUS_ERR_STORE_CLOSED: 'the block store is closed',
  TORUS_ERR_STORE_BUSY: 'too many requests are waiting on the block store',

  // NBD protocol.
  TORUS_ERR_NBD_PROTOCOL: 'a client broke the NBD protocol; its connection is closed',
  TORUS_ERR_NBD_EXPORT_UNKNOWN: 'no export (volume) has the requested name',
  TORUS_ERR_NBD_LIMIT: 'a client exceeded a per-connection limit',
  TORUS_ERR_NBD_UNSUPPORTED: 'the export cannot do that operation (NBD ENOTSUP, e.g. a fast zero)',

  // Peers and daemon.
  TORUS_ERR_PEER_ADDRESS_INVALID: 'a peer address is not host:port, http://host:port or tdp://host:port',
  TORUS_ERR_PEER_UNAVAILABLE: 'a peer could not be reached or its connection dropped',
  TORUS_ERR_PEER_AUTH: 'a peer failed authentication (cluster secret or cluster id differ)',
  TORUS_ERR_PEER_CHECKSUM: 'a peer protocol frame failed its checksum; the connection was closed',
  TORUS_ERR_PEER_PROTOCOL: 'a peer broke the peer protocol or speaks an incompatible version',
  TORUS_ERR_PEER_NOT_FOUND: 'no peer (or ring member) has that address or UUID',
  TORUS_ERR_DATA_DIR_IN_USE: 'another running torusd uses this data dir',
  TORUS_ERR_DATA_DIR_FOREIGN: 'the data dir holds blocks of another cluster (etcd was wiped and re-initialised)',
  TORUS_ERR_DATA_DIR_NEWER: 'the data dir was written by a newer torus release; run that release or a newer one',
  TORUS_ERR_DAEMON_START: 'torusd could not start (port in use, data dir unusable, ...)',
  TORUS_ERR_HTTP_NOT_FOUND: 'torusd has no HTTP endpoint at that method and path',
  TORUS_ERR_HTTP_REQUEST_INVALID: 'an HTTP request to torusd was malformed or too large',

  // FlexVolume driver (src/k8s/flex, native/flex).
  TORUS_ERR_FLEX_REQUEST_INVALID: 'a FlexVolume call is malformed: bad JSON, a missing volume option, a bad target path',
  TORUS_ERR_FLEX_UNREACHABLE: 'the FlexVolume driver could not reach torusd on this node (or torusd answered nonsense)',
  TORUS_ERR_FLEX_FS_TYPE_UNSUPPORTED: 'the pod asks for a filesystem type torus does not make (ext4, ext3, xfs)',
  TORUS_ERR_FLEX_FS_MISMATCH: 'the volume holds another filesystem type than the pod asks for; nothing was changed',
  TORUS_ERR_FLEX_FS_MISSING: 'the volume was formatted before but shows no filesystem now; torus refuses to format it again',
  TORUS_ERR_FLEX_NOT_FORMATTED_RO: 'a read-only mount of a volume that has no filesystem yet (mount it read-write once first)',
  TORUS_ERR_FLEX_PROBE_AMBIGUOUS: 'blkid found data on the volume that is not one known filesystem; neither mkfs nor mount',
  TORUS_ERR_FLEX_DEVICE_READ: 'the attached device could not be read or probed, so it is not proven empty; no mkfs',
  TORUS_ERR_FLEX_MODE_CONFLICT: 'the volume is attached read-only on this node and a read-write mount was asked for',
  TORUS_ERR_FLEX_MOUNT_FAILED: 'mkfs, mount or unmount failed on the node, or the target is already a mount point',
  TORUS_ERR_FLEX_NOT_TORUS_MOUNT: 'unmount of a directory that holds a mount torus did not make',
  TORUS_ERR_FLEX_FOREIGN_CLUSTER: "the pod's etcd option names another torus cluster than the node's torusd belongs to",
  TORUS_ERR_FLEX_STATE: "the node's record of its FlexVolume attachments is unreadable",
  // Kernel attach (torusblk nbd, torusd's attach API, native/).
  TORUS_ERR_ATTACH_UNAVAILABLE: 'kernel attach cannot work here (no native addon, not Linux); the message says why',
  TORUS_ERR_ATTACH_NO_MODULE: 'the kernel has no nbd driver loaded: load it with `modprobe nbd`',
  TORUS_ERR_ATTACH_NO_DEVICE: 'no free /dev/nbdN device could be found or created',
  TORUS_ERR_ATTACH_DEVICE_BUSY: 'the named /dev/nbdN is already connected to a server',
  TORUS_ERR_ATTACH_PERMISSION: 'kernel attach needs root (CAP_SYS_ADMIN); permission was denied',
  TORUS_ERR_ATTACH_KERNEL: 'the kernel refused an nbd request; the errno is named',
  TORUS_ERR_ATTACH_NOT_FOUND: 'no attachment of this torusd uses that device',
  TORUS_ERR_ATTACH_LOCK_LOST: 'an attachment could not keep its volume lock across a torusd restart; its device fails with EIO for good',
  TORUS_ERR_ATTACH_STATE_CORRUPT: 'attachments.json in the data dir is not in the expected format',
  TORUS_ERR_ATTACH_DAEMON_UNREACHABLE: "torusd's attach socket could not be reached (is torusd running with that data dir?)",
  TORUS_ERR_ATTACH_FAULT_INJECTED: 'a test fault armed through the attach API (TORUS_FAULT_INJECTION=1) failed this request',
  // Volume administration shared by torusctl and the drivers (src/admin/).
  TORUS_ERR_CAPACITY_EXHAUSTED: "a new volume would reserve more than the ring's usable capacity times the overcommit ratio",
  // The CSI driver (torusblk csi, src/k8s/csi/).
  TORUS_ERR_CSI_REQUEST_INVALID: 'a CSI request lacks a required field or has a malformed one (gRPC INVALID_ARGUMENT)',
  TORUS_ERR_CSI_ACCESS_MODE_UNSUPPORTED: 'a CSI volume capability asks for an access mode or type torus does not serve',
  TORUS_ERR_CSI_PARAMETER_INVALID: 'a StorageClass parameter is unknown or has a value torus does not take',
  TORUS_ERR_CSI_CAPACITY_OUT_OF_RANGE: 'the capacity range cannot be met: rounded to whole blocks it passes limit_bytes, or it is too large',
  TORUS_ERR_CSI_VOLUME_INCOMPATIBLE: 'a volume of that name exists with a size outside the requested range, or a path holds another mount',
  TORUS_ERR_CSI_BUSY: 'another CSI call on the same volume is in progress on this node; the CO retries',
  TORUS_ERR_CSI_PAGE_TOKEN: 'a ListVolumes starting_token that this driver did not hand out',
  TORUS_ERR_CSI_NOT_STAGED: 'NodePublishVolume before NodeStageVolume: the staging path holds no mount of the volume',
  TORUS_ERR_CSI_NOT_TORUS_MOUNT: 'a target path holds a mount that is not of this volume; not unmounting it',
  TORUS_ERR_CSI_DEVICE_READ: 'the attached device could not be read or probed, so it is not proven empty; no mkfs',
  TORUS_ERR_CSI_PROBE_AMBIGUOUS: 'blkid found data on the volume that is not one known filesystem; neither mkfs nor mount',
  TORUS_ERR_CSI_FS_MISMATCH: 'the volume holds another filesystem type than the volume capability asks for; nothing was changed',
  TORUS_ERR_CSI_FS_MISSING: 'the volume was formatted before but shows no filesystem now; torus refuses to format it again',
  TORUS_ERR_CSI_NOT_FORMATTED_RO: 'a read-only stage of a volume that has no filesystem yet (stage it read-write once first)',
  TORUS_ERR_CSI_MOUNT_FAILED: 'mkfs, mount or unmount failed on the node',

  // Internal.
  TORUS_ERR_ASSERTION: 'an internal invariant was broken (a bug)',
  TORUS_ERR_TIMEOUT: 'an operation did not finish within its time limit',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;
