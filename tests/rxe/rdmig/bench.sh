#!/bin/sh
# make bench-rdma, inside the rxe guest: ib_write_bw and rdmig's RDMA page throughput on the same
# device in the same boot. Prints "BENCH <key> <bytes per second>" lines for the host to collect.
set -eu
. /test/lib.sh
ulimit -l unlimited
wait_rxe_active
SIZE=${RDMIG_BENCH_SIZE:-128M}

# ib_write_bw SIZE: average bandwidth in bytes/s (perftest prints MB/s = 2^20 B/s by default).
ib_bw() {
  ib_write_bw -d rxe0 -F -s "$1" -n "$2" >/tmp/ibs.log 2>&1 &
  srv=$!
  for _ in $(seq 100); do
    if cat /proc/net/tcp | awk '$2 ~ ":4853$" && $4 == "0A" {f=1} END {exit !f}'; then break; fi
    sleep 0.05
  done
  ib_write_bw -d rxe0 -F -s "$1" -n "$2" 10.0.2.15 >/tmp/ibc.log 2>&1
  wait $srv
  cat /tmp/ibc.log >&2
  # columns: #bytes #iterations BW peak[MB/sec] BW average[MB/sec] MsgRate[Mpps]
  awk -v s="$1" '$1 == s && NF >= 5 { printf "%.0f\n", $4 * 1048576 }' /tmp/ibc.log | tail -1
}

# rdmig bench over RDMA: bytes/s of one pass.
rdmig_bw() {  # extra client args...
  start_server /tmp/rs.log --listen 10.0.2.15:0 --transport rdma
  rdmig bench --client "10.0.2.15:$SERVER_PORT" --transport rdma --size "$SIZE" --lanes 1 --batch 64 --json /tmp/r.json "$@" >&2
  wait "$SERVER_PID"
  sed -n 's/.*"bytes_per_second": \([0-9.e+]*\).*/\1/p' /tmp/r.json
}

echo "BENCH ib_write_bw_4k_bytes_per_second $(ib_bw 4096 20000)"
echo "BENCH rdmig_4k_bytes_per_second $(rdmig_bw --scatter)"
echo "BENCH ib_write_bw_64k_bytes_per_second $(ib_bw 65536 2000)"
echo "BENCH rdmig_64k_bytes_per_second $(rdmig_bw)"
