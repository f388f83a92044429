#!/usr/bin/env python3
"""Prints bench_pages results from Google Benchmark JSON: medians per configuration and the ratio of
the TCP transport's best 4 KiB-page bytes_per_second to the raw-socket baseline's best."""
import json
import statistics
import sys
from collections import defaultdict


def main(path):
    with open(path) as f:
        data = json.load(f)
    runs = defaultdict(list)
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        runs[b["run_name"]].append(b)
    if not runs:
        sys.exit("no benchmark results in " + path)

    def median(name, key):
        vals = [r[key] for r in runs.get(name, []) if key in r]
        return statistics.median(vals) if vals else None

    print(f"{'configuration':<28} {'TcpTransport GB/s':>18} {'RawSocket GB/s':>15} {'ratio':>7} {'pages/s':>10} {'allocs/page':>12}")
    for lanes in (1, 2, 4):
        for batch in (1, 16, 64, 256):
            t = f"BM_TcpTransport/batch:{batch}/lanes:{lanes}/real_time"
            r = f"BM_RawSocket/batch:{batch}/lanes:{lanes}/real_time"
            tb, rb = median(t, "bytes_per_second"), median(r, "bytes_per_second")
            if tb is None or rb is None:
                continue
            print(f"batch {batch:>3} lanes {lanes:<12} {tb/1e9:>18.2f} {rb/1e9:>15.2f} {tb/rb:>7.2f} "
                  f"{median(t, 'pages_per_second'):>10.0f} {median(t, 'allocs_per_page'):>12.4f}")
    memcpy = [b["bytes_per_second"] for n, rs in runs.items() if n.startswith("BM_Memcpy") for b in rs]
    best = {}
    for kind in ("TcpTransport", "RawSocket"):
        vals = [b["bytes_per_second"] for n, rs in runs.items() if kind in n for b in rs]
        best[kind] = max(vals) if vals else 0
    if memcpy:
        print(f"memcpy baseline best: {max(memcpy)/1e9:.2f} GB/s")
    ratio = best["TcpTransport"] / best["RawSocket"] if best["RawSocket"] else 0
    print(f"best TcpTransport {best['TcpTransport']/1e9:.2f} GB/s, best RawSocket "
          f"{best['RawSocket']/1e9:.2f} GB/s: ratio {ratio:.2f} (target >= 0.80)")
    allocs = [b.get("allocs_per_page", 0) for n, rs in runs.items() if "TcpTransport" in n for b in rs]
    print(f"heap allocations per page on the TCP transport: max {max(allocs):.6f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/bench/pages.json")
