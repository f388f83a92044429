#!/usr/bin/env python3
"""Replays captured QEMU 7.2 streams through rdmig send -> TCP lanes -> rdmig receive into a real
destination QEMU, in direct and staged mode, and checks the destination's RAM page by page against
the source guest's final RAM (captured with the stream).

    replay_test.py RDMIG GUEST_DIR FIXTURES_DIR"""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import rdmig_testlib as t  # noqa: E402


def replay(rdmig, guest_dir, fixture, mode):
    work = tempfile.mkdtemp(prefix="rdmig-replay-")
    procs = []
    try:
        with t.Guest(guest_dir, "dst", incoming="defer", paused=True, workdir=work) as dst:
            t.enable_migration_events(dst.qmp)
            dst.qmp.execute("migrate-incoming", uri=f"unix:{work}/in.sock")
            recv = t.start_receive(rdmig, work, f"unix:{work}/in.sock", mode, dst.ram_path)
            procs.append(recv)
            with open(fixture, "rb") as stream:
                send = subprocess.run([rdmig, "send", "--to", f"127.0.0.1:{recv.port}", "--from", "-",
                                       "--json", f"{work}/send.json"], stdin=stream,
                                      capture_output=True, text=True, timeout=120)
            print(send.stdout.strip())
            if send.returncode != 0:
                print(send.stderr)
                return False
            status = t.wait_migration(dst.qmp, 120)
            recv_out = recv.finish(30)
            print(recv_out.strip())
            if status != "completed":
                print(f"destination migration {status}")
                return False
            differ = t.compare_ram(fixture + ".ram", dst.ram_path)
            print(f"{os.path.basename(fixture)} {mode}: {differ} pages differ from the source's RAM")
            return differ == 0
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["rm", "-rf", work])


def main(rdmig, guest_dir, fixtures):
    failed = 0
    cases = [(f, m) for f in ("idle.stream", "dirty20.stream") for m in ("direct", "staged")]
    for name, mode in cases:
        start = time.monotonic()
        ok = replay(rdmig, guest_dir, os.path.join(fixtures, name), mode)
        print(f"{'PASS' if ok else 'FAIL'} replay {name} {mode} ({time.monotonic() - start:.1f} s)")
        failed += not ok
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
