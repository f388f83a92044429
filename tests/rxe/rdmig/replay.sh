#!/bin/sh
# In the rxe guest: a captured QEMU stream through rdmig send -> RDMA -> rdmig receive in direct mode
# into a RAM file; the landed RAM must hash like the source guest's RAM (what QEMU itself loads from
# that stream). /test holds idle.stream and idle.ram.sha256.
set -eu
. /test/lib.sh
ulimit -l unlimited
wait_rxe_active
RAM_BYTES=536862720  # 524280K
dd if=/dev/zero of=/tmp/ram bs=1 count=0 seek=$RAM_BYTES 2>/dev/null
rdmig receive --listen 10.0.2.15:0 --transport rdma --mode direct --ram-file mem0=/tmp/ram \
  --to-qemu - --json /tmp/receive.json >/tmp/qemu.stream 2>/tmp/receive.log &
recv=$!
port=""
for _ in $(seq 200); do
  port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' /tmp/receive.log)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { cat /tmp/receive.log; exit 1; }
rdmig send --to "10.0.2.15:$port" --transport rdma --from - --json /tmp/send.json </test/idle.stream
wait $recv
cat /tmp/receive.log
grep -q '"transport": "rdma"' /tmp/send.json || { echo "replay: not over RDMA"; exit 1; }
want=$(cut -d' ' -f1 /test/idle.ram.sha256)
got=$(sha256sum /tmp/ram | cut -d' ' -f1)
echo "replay: landed RAM sha256 $got, source RAM sha256 $want"
[ "$got" = "$want" ] || { echo "replay: FAIL: RAM differs"; exit 1; }
echo "replay: PASS (stream to QEMU: $(wc -c </tmp/qemu.stream) bytes)"
