#!/usr/bin/env bash
# rdmig plan and rdmig plot as commands: predictions that agree with the model's arithmetic, clear
# errors for bad input, and a PNG from a timeline.
set -euo pipefail
RDMIG=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# The issue's example: a large guest on a fast link converges (exit 0) and says how.
"$RDMIG" plan --ram 512G --wws 64G --dirty-rate 2G/s --bandwidth 100Gbit --budget 500ms \
  --json "$tmp/plan.json" | tee "$tmp/plan.txt"
grep -q "converges after" "$tmp/plan.txt" || fail "no convergence line"
python3 - "$tmp/plan.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["with_throttle"]
first = p["pass_records"][0]
# Pass 1 sends all 512 GiB at 12.5 GB/s: 44 s (to 1%).
assert abs(first["duration_s"] - 512 * 2**30 / 12.5e9) < 0.44, first
assert p["converged"] and p["blackout_ms"] <= 500, p
PY

# A guest that out-dirties the link converges only with a throttle; without one it never would.
"$RDMIG" plan --ram 512M --used 282M --wws 256M --dirty-rate 200M/s --bandwidth 100M/s \
  --json "$tmp/heavy.json" >/dev/null
python3 - "$tmp/heavy.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
assert p["with_throttle"]["converged"] and p["with_throttle"]["peak_throttle_pct"] > 50, p
assert not p["without_throttle"]["converged"], p["without_throttle"]
PY

# Bad input: a clear error and exit 2.
if "$RDMIG" plan --ram 1G --wws 2G --dirty-rate 1G/s --bandwidth 1Gbit 2>"$tmp/err"; then
  fail "a working set larger than RAM was accepted"
fi
grep -q "cannot exceed" "$tmp/err" || fail "unclear error: $(cat "$tmp/err")"
set +e
"$RDMIG" plan --ram 1G --wws 512M --dirty-rate fast --bandwidth 1Gbit 2>"$tmp/err"
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "bad rate 'fast'" "$tmp/err" || fail "bad rate: rc $rc $(cat "$tmp/err")"

# rdmig plot: a PNG from a timeline; a file that is no timeline is refused.
python3 - "$tmp/timeline.json" <<'PY'
import json, sys
samples = [{"t_s": i * 0.1, "pass": 1 + i // 20, "remaining_bytes": (100 - i) * 2**20,
            "bandwidth_Bps": 100 * 2**20, "dirty_rate_Bps": 50 * 2**20,
            "throttle_pct": 0 if i < 20 else 90, "predicted_blackout_ms": 1000 - 10 * i}
           for i in range(60)]
json.dump({"budget_ms": 500, "samples": samples}, open(sys.argv[1], "w"))
PY
"$RDMIG" plot "$tmp/timeline.json" -o "$tmp/t.png"
[ "$(head -c 4 "$tmp/t.png" | od -An -c | tr -d ' ')" = "211PNG" ] || fail "not a PNG"
echo '{"samples": []}' >"$tmp/empty.json"
if "$RDMIG" plot "$tmp/empty.json" -o "$tmp/e.png" 2>"$tmp/err"; then fail "empty timeline plotted"; fi
grep -q "no samples" "$tmp/err" || fail "unclear error: $(cat "$tmp/err")"
echo "plan and plot: OK"
