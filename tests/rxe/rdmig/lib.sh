# Shared by the rdmig suites that run inside the rxe guest.
wait_rxe_active() {
  for _ in $(seq 100); do
    if ibv_devinfo -d rxe0 2>/dev/null | grep -q 'state:.*PORT_ACTIVE'; then return 0; fi
    sleep 0.1
  done
  echo "rxe0 has no ACTIVE port"; return 1
}
# start_server LOG ARGS...: an `rdmig bench --server --once` in the background; sets SERVER_PORT.
start_server() {
  log=$1; shift
  rdmig bench --server --once "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  SERVER_PORT=""
  for _ in $(seq 200); do
    SERVER_PORT=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$log")
    [ -n "$SERVER_PORT" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log"; return 1; }
    sleep 0.05
  done
  cat "$log"; return 1
}
