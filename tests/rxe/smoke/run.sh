#!/bin/sh
# Soft-RoCE smoke test, run inside the rxe guest by tests/rxe/run-in-guest: rxe0 has an ACTIVE port, and
# ib_write_bw moves data over it (one device, loopback to its own address 10.0.2.15) at 4 KiB and 64 KiB.
set -eu
SERVER_IP=10.0.2.15
PORT=18515   # perftest's default TCP port for exchanging QP information

fail() { echo "smoke: FAIL: $*"; exit 1; }

# Waits (polling, bounded) until the port is ACTIVE: rxe follows the netdev's state.
active=0
for _ in $(seq 100); do
  if ibv_devinfo -d rxe0 2>/dev/null | grep -q 'state:.*PORT_ACTIVE'; then active=1; break; fi
  sleep 0.1
done
ibv_devinfo -d rxe0 || fail "ibv_devinfo -d rxe0 failed"
[ "$active" -eq 1 ] || fail "rxe0 has no ACTIVE port"
echo "smoke: rxe0 port ACTIVE"

# listening PORT: is a TCP socket on PORT in LISTEN state (0A) in /proc/net/tcp{,6}?
listening() {
  hex=$(printf '%04X' "$1")
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { f = 1 } END { exit !f }'
}

# write_bw SIZE ITERATIONS: one server in the background, one client, both must succeed.
write_bw() {
  size=$1 iters=$2
  ib_write_bw -d rxe0 -F --report_gbits -s "$size" -n "$iters" >/tmp/server.log 2>&1 &
  server=$!
  up=0
  for _ in $(seq 200); do   # the server needs its socket before the client connects (bounded poll)
    if listening "$PORT"; then up=1; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.05
  done
  [ "$up" -eq 1 ] || { cat /tmp/server.log; fail "ib_write_bw server (-s $size) did not listen on $PORT"; }
  if ! ib_write_bw -d rxe0 -F --report_gbits -s "$size" -n "$iters" "$SERVER_IP" >/tmp/client.log 2>&1; then
    cat /tmp/client.log; echo "--- server:"; cat /tmp/server.log
    kill "$server" 2>/dev/null || true
    fail "ib_write_bw client -s $size failed"
  fi
  if ! wait "$server"; then
    cat /tmp/client.log; echo "--- server:"; cat /tmp/server.log
    fail "ib_write_bw server -s $size failed"
  fi
  cat /tmp/client.log
  # The result line: "#bytes #iterations BW peak[Gb/sec] BW average[Gb/sec] MsgRate[Mpps]".
  line=$(awk -v s="$size" '$1 == s && NF >= 5 { print; exit }' /tmp/client.log)
  [ -n "$line" ] || fail "no bandwidth line for -s $size in the client's output"
  echo "$line" | awk '{ printf "smoke: ib_write_bw %s B x %s: average %s Gb/s, %.0f msg/s\n", $1, $2, $4, $5 * 1e6 }'
}

write_bw 4096 2000
write_bw 65536 2000
echo "smoke: PASS"
