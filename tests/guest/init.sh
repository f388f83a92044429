#!/bin/sh
# PID 1 of the built-in test guest: mount the basics, run the workload on the console.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
exec /workload </dev/ttyS0 >/dev/ttyS0 2>&1
