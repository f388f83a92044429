#!/usr/bin/env python3
"""Boots the built-in test guest under QEMU TCG and checks its workload: ready marker, heartbeats,
and a full memory verification on request. Waits on console markers with deadlines; QEMU and its
files are removed whatever happens (tests/lib/rdmig_testlib.py)."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import rdmig_testlib as t  # noqa: E402


def main(guest_dir):
    start = time.monotonic()
    with t.Guest(guest_dir, "boot", wss_mib=64, rate_mib=20) as g:
        print("guest:", g.wait_ready(), f"({time.monotonic() - start:.1f} s after start)")
        hb1 = g.console.expect("HB t=", 10)
        hb2 = g.console.expect("HB t=", 10)
        print("heartbeats:", hb1, "|", hb2)
        verdict = g.verify(60)
        print("guest self-check:", verdict)
        if not verdict.startswith("VERIFY OK") or b"CORRUPT" in g.console.everything:
            print("0 passed, 1 failed")
            return 1
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
