#!/bin/sh
# In the rxe guest, for tests/rxe/migrate-over-rdma: the two rdmig endpoints of a live migration whose
# QEMUs run on the host. The source QEMU's stream comes in through a forwarded port (guest :7000);
# the destination QEMU is reached at the host, 10.0.2.2:$DEST_PORT (from /test/env). Staged mode.
set -eu
. /test/lib.sh
. /test/env
ulimit -l unlimited
wait_rxe_active
rdmig receive --listen 10.0.2.15:7471 --transport rdma --mode staged \
  --to-qemu "tcp:10.0.2.2:$DEST_PORT" --json /tmp/receive.json >/tmp/receive.log 2>&1 &
recv=$!
rdmig send --from tcp:0.0.0.0:7000 --to 10.0.2.15:7471 --transport rdma --json /tmp/send.json \
  >/tmp/send.log 2>&1 &
send=$!
for _ in $(seq 200); do
  grep -q "waiting for QEMU" /tmp/send.log 2>/dev/null && grep -q "listening on" /tmp/receive.log && break
  sleep 0.05
done
echo "RDMIG-GUEST-LISTENING"
status=0
wait $send || status=1
wait $recv || status=1
cat /tmp/send.log /tmp/receive.log
cat /tmp/send.json
grep -q '"transport": "rdma"' /tmp/send.json || status=1
exit $status
