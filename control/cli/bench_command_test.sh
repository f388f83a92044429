#!/usr/bin/env bash
# rdmig bench as two processes over loopback: a verified transfer, and a clear error when no server.
set -euo pipefail
RDMIG=$1
tmp=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

"$RDMIG" bench --server --listen 127.0.0.1:0 --once >"$tmp/server.log" 2>&1 &
server=$!
port=""
for _ in $(seq 100); do  # up to 10 s for the listening line
  port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/server.log")
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$tmp/server.log"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "server never listened"; cat "$tmp/server.log"; exit 1; }

"$RDMIG" bench --client "127.0.0.1:$port" --size 64M --lanes 3 --batch 32 --passes 2 --verify --json "$tmp/r.json" | tee "$tmp/client.log"
grep -q "verified    16384 of 16384 pages identical" "$tmp/client.log"
grep -q '"mismatched_pages": 0' "$tmp/r.json"
wait "$server"; server=""
grep -q "landed 32768 pages" "$tmp/server.log"

# No server: a clear error and a non-zero exit.
if "$RDMIG" bench --client "127.0.0.1:$port" --size 1M 2>"$tmp/err.log"; then
  echo "client succeeded without a server"; exit 1
fi
grep -q "Connection refused" "$tmp/err.log"
# Bad size: a usage error.
if "$RDMIG" bench --client 127.0.0.1:1 --size 12Q 2>"$tmp/err.log"; then exit 1; fi
grep -q "bad size '12Q'" "$tmp/err.log"
echo "rdmig bench two-process test passed"
