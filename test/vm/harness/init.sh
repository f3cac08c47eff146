#!/bin/busybox sh
# PID 1 of the test VM (see run-in-vm.sh): load the modules, mount the host's
# / read-only and the checkout read-write, run the command chrooted, report
# its exit status through the ctl share, power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do modprobe "$m" 2>/dev/null || echo "init: modprobe $m failed"; done
ip link set lo up
ip link set eth0 up 2>/dev/null && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
O=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o $O,cache=none ctl /ctl || { echo "init: no ctl share"; poweroff -f; }
. /ctl/env
mount -t 9p -o $O,cache=loose,ro hostroot /host || { echo "init: no hostroot share"; echo 125 >/ctl/rc; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t tmpfs -o size=1200m tmp /host/tmp
mount -t tmpfs run /host/run
# After the tmpfs mounts, so a checkout under /tmp is not hidden by them.
mkdir -p "/host$SHARED" 2>/dev/null
mount -t 9p -o $O,cache=loose shared "/host$SHARED" || { echo "init: no checkout share"; echo 125 >/ctl/rc; poweroff -f; }
mkdir -p /host/run/torus-vm && mount --bind /ctl /host/run/torus-vm
stty -onlcr 2>/dev/null
SH=/bin/sh; [ -x /host/bin/bash ] && SH=/bin/bash
chroot /host /usr/bin/env -i HOME=/tmp TERM=dumb CI="${CI:-}" TORUS_IN_VM=1 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  $SH /run/torus-vm/cmd </dev/null >/dev/console 2>&1
echo $? >/ctl/rc
sync
echo 0 >/proc/sys/kernel/printk
poweroff -f
