#!/bin/bash
# The program whose files must survive torusd restarts: writes file after
# file on the mounted filesystem, fsyncs each (dd conv=fsync), and only then
# logs it as acknowledged with its checksum. Any failed write or fsync is
# logged as an error line; the test requires none while torusd restarts
# within its budget. Stops when STOPFILE appears.
#   writer.sh DIR LOG STOPFILE
dir=$1 log=$2 stop=$3
i=0
while [ ! -e "$stop" ]; do
  i=$((i + 1))
  f="$dir/w$i"
  # 48 KiB of fresh random data per file, fsynced before it counts.
  if head -c 49152 /dev/urandom >"/tmp/writer.$$" && dd if="/tmp/writer.$$" of="$f" bs=48k conv=fsync status=none 2>>"$log.err"; then
    echo "ok w$i $(sha256sum <"/tmp/writer.$$" | cut -c1-64) $(date +%s.%N)" >>"$log"
  else
    echo "err w$i $(date +%s.%N)" >>"$log"
    sleep 0.2
  fi
done
rm -f "/tmp/writer.$$"
