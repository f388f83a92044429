#!/bin/sh
# rdmig's RDMA test set inside the rxe guest: the transport conformance suite on rxe0, transport
# choice and fallback, and a verified transfer over RDMA through the whole session.
set -eu
. /test/lib.sh
ulimit -l unlimited
wait_rxe_active
passed=0
failed=0
check() {  # NAME COMMAND...: runs, counts
  name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "SUITE PASS $name"; else failed=$((failed + 1)); echo "SUITE FAIL $name"; fi
}

rdmig probe | tee /tmp/probe.log
check probe-sees-rxe0 grep -q "transport auto: rdma" /tmp/probe.log

check conformance env RDMIG_RDMA_IP=10.0.2.15 rdma_conformance_test

# RDMA end to end through the session: both sides auto, pages verified by digest.
rdma_session() {
  start_server /tmp/s1.log --listen 10.0.2.15:0 --transport auto || return 1
  rdmig bench --client "10.0.2.15:$SERVER_PORT" --size 32M --lanes 4 --batch 64 --passes 2 --verify >/tmp/c1.log 2>&1 || { cat /tmp/c1.log; return 1; }
  wait "$SERVER_PID"; cat /tmp/c1.log
  grep -q "over rdma, 4 lanes" /tmp/c1.log && grep -q "verified    8192 of 8192 pages identical" /tmp/c1.log
}
check rdma-session-verified rdma_session

# The destination only runs TCP: an auto source migrates over TCP and says why.
tcp_only_destination() {
  start_server /tmp/s2.log --listen 10.0.2.15:0 --transport tcp || return 1
  rdmig bench --client "10.0.2.15:$SERVER_PORT" --size 8M --verify >/tmp/c2.log 2>&1 || { cat /tmp/c2.log; return 1; }
  wait "$SERVER_PID"; cat /tmp/c2.log
  grep -q "over tcp" /tmp/c2.log && grep -q "verified    2048 of 2048" /tmp/c2.log
}
check fallback-tcp-only-destination tcp_only_destination

# The destination's address has no RDMA device: it falls back to TCP at once, the report says why.
no_rdma_address() {
  start_server /tmp/s3.log --listen 127.0.0.1:0 --transport auto || return 1
  start=$(cut -d' ' -f1 /proc/uptime)
  rdmig bench --client "127.0.0.1:$SERVER_PORT" --size 8M --verify >/tmp/c3.log 2>&1 || { cat /tmp/c3.log; return 1; }
  end=$(cut -d' ' -f1 /proc/uptime)
  wait "$SERVER_PID"; cat /tmp/c3.log
  echo "fallback run took $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", (b - a) * 1000 }') ms in all"
  grep -q "over tcp" /tmp/c3.log && grep -q "rdma unavailable at the destination" /tmp/c3.log
}
check fallback-no-rdma-address no_rdma_address

# RDMA demanded where the destination cannot: a clear refusal.
rdma_demanded() {
  start_server /tmp/s4.log --listen 10.0.2.15:0 --transport tcp || return 1
  if rdmig bench --client "10.0.2.15:$SERVER_PORT" --size 1M --transport rdma >/tmp/c4.log 2>&1; then return 1; fi
  wait "$SERVER_PID" || true; cat /tmp/c4.log
  grep -q "no transport in common" /tmp/c4.log
}
check rdma-demanded-is-refused rdma_demanded

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
