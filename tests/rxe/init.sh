#!/bin/sh
# PID 1 of the Soft-RoCE test guest (built by scripts/build-rxe-guest): load the rxe modules, make a dummy
# eth0 with 10.0.2.15/24 and an rxe0 device on it, run /test/run.sh if present, report its status as
# "RXE-EXIT <status>" on the console and power off. A failed setup step reports RXE-EXIT 100.
export PATH=/test/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
/bin/busybox --install -s   # applet links; never replaces a file (iproute2's ip and rdma stay)
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ulimit -l unlimited 2>/dev/null || true

finish() {
  sync
  echo "RXE-EXIT $1"
  poweroff -f
  sleep 5   # poweroff -f does not return; if it ever does, make the kernel panic (panic=-1 reboots,
  exit 1    # -no-reboot then stops QEMU) rather than leave the caller waiting.
}

setup_failed() {
  echo "rxe-guest: setup failed: $*"
  finish 100
}

# /etc/rxe-modules: one module path per line, in load order (crc32_generic first; see build-rxe-guest).
while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "$mod" || setup_failed "insmod $mod"
done </etc/rxe-modules

# With a QEMU network card (user networking, for tests that reach host processes) eth0 is that card and
# the host is 10.0.2.2; without one, eth0 is a dummy.
if [ -e /sys/class/net/eth0 ]; then
  nic=virtio
else
  nic=dummy
  ip link add eth0 type dummy || setup_failed "ip link add eth0 type dummy"
fi
ip link set eth0 up || setup_failed "ip link set eth0 up"
ip addr add 10.0.2.15/24 dev eth0 || setup_failed "ip addr add"
ip link set lo up || setup_failed "ip link set lo up"
if [ "$nic" = virtio ]; then
  ip route add default via 10.0.2.2 || setup_failed "ip route add default"
fi
rdma link add rxe0 type rxe netdev eth0 || setup_failed "rdma link add rxe0"
echo "rxe-guest: rxe0 on eth0 ($nic, 10.0.2.15) ready, uptime $(cut -d' ' -f1 /proc/uptime) s"

status=0
if [ -f /test/run.sh ]; then
  cd /test
  sh /test/run.sh
  status=$?
  cd /
fi
finish "$status"
