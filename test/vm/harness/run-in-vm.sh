#!/usr/bin/env bash
# Runs one command inside a throw-away QEMU VM that boots Debian's own kernel,
# whose nbd driver this host's kernel may lack. The host's / is shared
# read-only over 9p and the command runs chrooted into it, so the host's node,
# etcd, mkfs.ext4 and this checkout's build run unchanged; the checkout is
# shared read-write at the same path. Exit status = the command's (125 when
# the guest died without reporting one).
#
#   test/vm/harness/run-in-vm.sh [--] COMMAND [ARGS...]
#
# Environment: TORUS_VM_CACHE (kernel and initramfs; default
# ~/.cache/torus-vm-harness), TORUS_VM_MEM (MiB, 2048), TORUS_VM_CPUS (2),
# TORUS_VM_IDLE_TIMEOUT (s, 600) and TORUS_VM_TIMEOUT (s, 2400): see "run"
# below, TORUS_VM_VERBOSE=1 (kernel messages on the console), TORUS_VM_DRIVE (raw image files on the host,
# separated by spaces, attached as the guest's /dev/vda, /dev/vdb, ...; see
# below for their cache mode), TORUS_VM_PIDFILE (QEMU
# writes its pid there, for a caller that kills it on purpose: the power-loss
# suite). QEMU runs with TCG (software emulation): it needs no /dev/kvm and
# boots Debian's kernel where a nested KVM would not.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$HERE/../../.." && pwd -P)
CACHE=${TORUS_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torus-vm-harness}
MEM=${TORUS_VM_MEM:-2048}
CPUS=${TORUS_VM_CPUS:-2}
TIMEOUT=${TORUS_VM_TIMEOUT:-2400}
IDLE_TIMEOUT=${TORUS_VM_IDLE_TIMEOUT:-600}
# Copied into the initramfs (with their dependencies) and loaded at boot.
# xfs: the power-loss suite also runs its data dir on XFS (after crc32c_generic:
# its libcrc32c needs the crc32c algorithm when it loads). dm-flakey (with
# dm-mod): the power-loss suite cuts one peer's disk while the others run.
MODULES="virtio_pci virtio_net virtio_rng virtio_blk 9pnet_virtio 9p nbd ext4 crc32c_generic xfs dm-flakey"

say() { printf 'vm: %s\n' "$*" >&2; }
die() { printf 'vm: error: %s\n' "$*" >&2; exit 2; }

[ "${1-}" = "--" ] && shift
[ $# -ge 1 ] || die "usage: $0 [--] COMMAND [ARGS...]"

# ---- host tools -------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v mke2fs >/dev/null 2>&1 || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get: install them by hand"
  [ "$(id -u)" -eq 0 ] || die "missing ${need[*]}: run as root, or apt-get install them"
  say "installing ${need[*]}"
  aptlog=$(mktemp)
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$aptlog" 2>&1; then
    tail -n 30 "$aptlog" >&2; rm -f "$aptlog"; die "apt-get install ${need[*]} failed"
  fi
  rm -f "$aptlog"
fi
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || die "/bin/busybox must be the static build (apt-get install busybox-static)"

# ---- Debian's kernel ----------------------------------------------------------
mkdir -p "$CACHE"
if [ ! -s "$CACHE/vmlinux" ] || [ ! -s "$CACHE/kernel-version" ]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then apt-get update -qq >&2; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
  [ -n "$pkg" ] || die "apt knows no linux-image-amd64: cannot get a kernel with nbd"
  say "downloading $pkg"
  rm -rf "$CACHE/deb" "$CACHE/kernel"; mkdir -p "$CACHE/deb" "$CACHE/kernel"
  (cd "$CACHE/deb" && apt-get download "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
  dpkg-deb -x "$CACHE"/deb/*.deb "$CACHE/kernel"
  kv=$(ls "$CACHE/kernel/lib/modules")
  # QEMU boots an ELF vmlinux directly (PVH), which skips the kernel's own
  # decompressor: several seconds under TCG. The bzImage carries it as an
  # xz stream; find its magic and unpack from there.
  start=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$CACHE/kernel/boot/vmlinuz-$kv" | head -n1 | cut -d: -f1)
  [ -n "$start" ] || die "no xz stream in vmlinuz-$kv"
  tail -c +"$((start + 1))" "$CACHE/kernel/boot/vmlinuz-$kv" | xz -dc >"$CACHE/vmlinux.part" 2>/dev/null || true
  [ "$(head -c 4 "$CACHE/vmlinux.part" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ] || die "could not unpack an ELF vmlinux from vmlinuz-$kv"
  mv "$CACHE/vmlinux.part" "$CACHE/vmlinux"
  echo "$kv" >"$CACHE/kernel-version"
  rm -f "$CACHE/initrd.img"
fi
kv=$(cat "$CACHE/kernel-version")

# ---- initramfs: busybox, the modules, our init ---------------------------------
# The cache is shared by every checkout of this user: a checkout whose list of
# modules differs rebuilds it rather than booting without a module it needs.
if [ ! -s "$CACHE/initrd.img" ] || [ "$HERE/init.sh" -nt "$CACHE/initrd.img" ] || [ "$0" -nt "$CACHE/initrd.img" ] ||
  [ "$(cat "$CACHE/initrd.modules" 2>/dev/null)" != "$MODULES" ]; then
  say "building the initramfs"
  r="$CACHE/initramfs"; rm -rf "$r"
  mkdir -p "$r"/{bin,dev,proc,sys,tmp,run,ctl,host,lib/modules/"$kv"}
  cp /bin/busybox "$r/bin/busybox"
  for applet in $("$r/bin/busybox" --list); do [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"; done
  mods="$CACHE/kernel/lib/modules/$kv"
  [ -s "$mods/modules.dep" ] || /bin/busybox depmod -b "$CACHE/kernel" "$kv"
  for m in $MODULES; do
    # modules.dep names use - or _ as the file has it; match either.
    pat=$(echo "$m" | sed 's/[-_]/[-_]/g')
    line=$(grep -E "(^|/)${pat}\.ko(\.xz)?:" "$mods/modules.dep" | head -n1) || die "module $m is not in $kv"
    for f in ${line/:/}; do
      mkdir -p "$r/lib/modules/$kv/$(dirname "$f")"
      cp "$mods/$f" "$r/lib/modules/$kv/$f"
    done
  done
  cp "$mods"/modules.builtin "$mods"/modules.order "$r/lib/modules/$kv/" 2>/dev/null || true
  /bin/busybox depmod -b "$r" "$kv"
  cp "$HERE/init.sh" "$r/init"; chmod +x "$r/init"
  echo "$MODULES" >"$r/modules"
  (cd "$r" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) >"$CACHE/initrd.part"
  mv "$CACHE/initrd.part" "$CACHE/initrd.img"
  echo "$MODULES" >"$CACHE/initrd.modules"
fi

# ---- run --------------------------------------------------------------------------
# How long a run may take depends on the host: under emulation the guest is
# 5 to 10 times slower on a busy host than on a quiet one, so a fixed bound
# either fails slow runs that are fine or waits far too long for a hung one.
# The guest scripts bound each of their own waits and, while one lasts, print
# a line at least every minute; so the console going silent for
# TORUS_VM_IDLE_TIMEOUT seconds (longer than any single bounded step in the
# guest) means the guest is wedged where none of its own timeouts can fire (a
# process stuck in the kernel on a dead device, a kernel hang). QEMU is then
# killed, and the message quotes the guest's last line, which names the step
# it was in. TORUS_VM_TIMEOUT bounds the whole run, as a last resort.
ctl=$(mktemp -d -t torus-vm-ctl.XXXXXX)
con=$(mktemp -d -t torus-vm-con.XXXXXX)
qpid=""
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill -KILL "$qpid" 2>/dev/null || true; fi
  rm -rf "$ctl" "$con"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
{ printf 'cd %q && exec' "$ROOT"; printf ' %q' "$@"; echo; } >"$ctl/cmd"
printf 'SHARED=%q\n' "$ROOT" >"$ctl/env"
quiet="quiet loglevel=1"; [ "${TORUS_VM_VERBOSE:-0}" = 1 ] && quiet="loglevel=6"
extra=()
for drive in ${TORUS_VM_DRIVE:-}; do
  [ -f "$drive" ] || die "TORUS_VM_DRIVE: $drive is not a file"
  # cache=none: QEMU opens the image with O_DIRECT and shows the guest a
  # volatile write cache, so every FLUSH the guest sends becomes an
  # fdatasync of the image, and a write reaches the file only when the guest
  # kernel submitted it. Killing QEMU then loses exactly what a power loss
  # loses inside the guest: its page cache and every process's memory. (No
  # host cache mode makes a QEMU kill drop writes the virtual disk had
  # completed, as a real disk's volatile cache may: the host's page cache
  # outlives QEMU. cache=none also keeps the image right should the host
  # itself crash, and keeps these writes out of the shared host's page cache.)
  extra+=(-drive "file=$drive,if=virtio,format=raw,cache=none,aio=threads")
done
[ -n "${TORUS_VM_PIDFILE:-}" ] && extra+=(-pidfile "$TORUS_VM_PIDFILE")
say "booting Debian $kv under QEMU TCG ($CPUS vCPU, $MEM MiB; gives up after ${IDLE_TIMEOUT} s without a line from the guest or ${TIMEOUT} s in all)"
mkfifo "$con/out"
qemu-system-x86_64 \
  -M q35 -accel tcg -cpu max -smp "$CPUS" -m "$MEM" -no-reboot -nodefaults -display none \
  -chardev stdio,id=con,signal=on -serial chardev:con \
  -kernel "$CACHE/vmlinux" -initrd "$CACHE/initrd.img" \
  -append "console=ttyS0 panic=-1 rdinit=/init mitigations=off $quiet" \
  -netdev user,id=net0 -device virtio-net-pci,netdev=net0 -device virtio-rng-pci \
  -virtfs "local,path=$ctl,mount_tag=ctl,security_model=none" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$ROOT,mount_tag=shared,security_model=passthrough,multidevs=remap" \
  "${extra[@]}" </dev/null >"$con/out" &
qpid=$!
exec 3<"$con/out"
# Relays the console line by line and watches it. A partial line (a prompt,
# a progress dot) counts as output too: read -t keeps what it got.
started=$SECONDS
last=$SECONDS
lastline="(nothing yet: the kernel boots quietly; TORUS_VM_VERBOSE=1 shows its messages)"
gaveup=""
while :; do
  line=""
  if IFS= read -r -t 5 line <&3; then
    printf '%s\n' "$line"
    last=$SECONDS
    [ -n "$line" ] && lastline=$line
  else
    st=$?
    if [ -n "$line" ]; then
      printf '%s' "$line"
      last=$SECONDS
      lastline=$line
    fi
    [ "$st" -gt 128 ] || break # end of the console: QEMU exited
  fi
  if [ $((SECONDS - last)) -ge "$IDLE_TIMEOUT" ]; then
    gaveup="the guest printed nothing for ${IDLE_TIMEOUT} s (TORUS_VM_IDLE_TIMEOUT): it is hung, not slow; its last line was: $lastline"
  elif [ $((SECONDS - started)) -ge "$TIMEOUT" ]; then
    gaveup="the VM did not finish within ${TIMEOUT} s (TORUS_VM_TIMEOUT), though the guest was still printing; its last line was: $lastline"
  fi
  if [ -n "$gaveup" ]; then
    say "error: $gaveup"
    kill -TERM "$qpid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$qpid" 2>/dev/null || true
    break
  fi
done
exec 3<&-
set +e
# (Its stderr: bash's own "Killed" line when the power-loss suite or the
# watchdog above killed QEMU on purpose.)
wait "$qpid" 2>/dev/null
qrc=$?
set -e
qpid=""
[ -n "$gaveup" ] && exit 124
[ -s "$ctl/rc" ] || { say "the guest did not report an exit status (QEMU exited $qrc)"; exit 125; }
exit "$(cat "$ctl/rc")"
