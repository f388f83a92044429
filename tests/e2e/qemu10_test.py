#!/usr/bin/env python3
"""QEMU 10.0 (bookworm-backports, unpacked by scripts/fetch-qemu10) through `rdmig migrate`.

Case 10.0-both: QEMU 10.0 on both sides, its default machine type, the built-in guest dirtying
20 MiB/s, `rdmig receive --mode direct` and a destination started as docs/usage.md says (without -S).
rdmig does not parse QEMU 10.0's stream yet (issue 15): whatever rdmig makes of it, exactly one guest
may run afterwards, with its memory intact. If the migration fails, that guest is the source (running,
self-check OK) and the destination QEMU is gone without ever having run (no RESUME); if it
succeeds, the destination runs and verifies, and the source stays stopped.

    qemu10_test.py RDMIG GUEST_DIR QEMU10 [CASE ...]"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import rdmig_testlib as t  # noqa: E402


def exactly_one_guest(rdmig, guest_dir, src_qemu, dst_qemu, machine, name):
    work = tempfile.mkdtemp(prefix="rdmig-q10-")
    recv = None
    try:
        with t.Guest(guest_dir, "src", wss_mib=64, rate_mib=20, workdir=work, qemu=src_qemu,
                     machine=machine) as src, \
             t.Guest(guest_dir, "dst", incoming="defer", workdir=work, qemu=dst_qemu,
                     machine=machine) as dst:
            src.wait_ready()
            src.console.expect("HB t=", 10)
            recv = t.start_receive(rdmig, work, f"unix:{work}/in.sock", "direct", dst.ram_path)
            m = subprocess.run(
                [rdmig, "migrate", "--source-qmp", src.qmp2_path, "--dest-qmp", dst.qmp2_path,
                 "--to", f"127.0.0.1:{recv.port}", "--dest-incoming", f"unix:{work}/in.sock",
                 "--json", f"{work}/migrate.json"],
                capture_output=True, text=True, timeout=300)
            report = json.load(open(f"{work}/migrate.json"))
            print(f"{name}: rdmig migrate exit {m.returncode}, outcome {report['outcome']}, "
                  f"guest_runs {report.get('guest_runs')}")
            if m.returncode != 0:
                print(f"{name}: {m.stderr.strip()[-600:]}")
                gone = dst.gone_never_ran(name)
                runs = src.runs_and_verifies(name)
                return (m.returncode == 1 and report.get("guest_runs") == "source" and gone and runs)
            print(m.stdout.strip())
            verdict = dst.verify()
            source_state = src.status()
            print(f"{name}: destination {dst.status()}, {verdict}; source {source_state}")
            return (report.get("guest_runs") == "destination" and verdict.startswith("VERIFY OK")
                    and source_state == "postmigrate"
                    and b"CORRUPT" not in dst.console.everything)
    finally:
        if recv:
            recv.kill()
        subprocess.run(["rm", "-rf", work])


def main(rdmig, guest_dir, qemu10, *names):
    cases = {
        "10.0-both": lambda: exactly_one_guest(rdmig, guest_dir, qemu10, qemu10, "q35", "10.0-both"),
    }
    return t.run_cases(cases, names)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
