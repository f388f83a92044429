#!/usr/bin/env python3
"""Live migration of the built-in guest through rdmig, end to end with two real QEMUs (TCG).

Cases: an idle guest and a guest dirtying 20 MiB/s over 64 MiB, each in direct and staged mode.
Oracle: once the migration completed, the source (paused) and destination RAM files are identical
page by page, the destination guest's own check passes and its heartbeat continues; the report
names no pass-through, and in direct mode at least every page of guest RAM went on the lanes.
`rdmig_testlib.Qemus` picks the QEMU binary per side and the machine type (for
tests/e2e/qemu10_test.py's matrix).
With XBZRLE on, the stream carries records rdmig does not parse: the rest of it goes verbatim
(pass-through), memory still matches, and the report says so.
Negative: `rdmig receive` killed mid-migration leaves the source guest running (and its memory
intact) and the destination QEMU gone; and with 512 MiB of RAM (a multiple of 256 KiB, where QEMU
7.2's TCG loses guest writes across passes) `--verify` finds the lost pages and refuses the
switchover.

    migrate_test.py RDMIG GUEST_DIR [CASE ...]      CASE: idle-direct, dirty20-staged, kill-receive ..."""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import rdmig_testlib as t  # noqa: E402


def run_migrate(rdmig, src, dst, recv, work, extra=()):
    return subprocess.run([rdmig, "migrate", "--source-qmp", src.qmp2_path, "--dest-qmp", dst.qmp2_path,
                           "--to", f"127.0.0.1:{recv.port}", "--dest-incoming", f"unix:{work}/in.sock",
                           "--json", f"{work}/migrate.json", "--paused", *extra],
                          capture_output=True, text=True, timeout=300)


def migrate_case(rdmig, guest_dir, rate, mode, xbzrle=False, qemus=t.Qemus()):
    work = tempfile.mkdtemp(prefix="rdmig-e2e-")
    recv = None
    try:
        # XBZRLE sends records only for small changes to pages it sent in an earlier pass: the
        # sparse workload rewrites a small working set often, and a tight budget adds passes.
        # The destination is started as docs/usage.md says, without -S: rdmig migrate turns its
        # autostart off, and --paused leaves it paused once verified, for the memory comparison.
        with t.Guest(guest_dir, "src", wss_mib=8 if xbzrle else 64, rate_mib=rate, workdir=work,
                     append="rdmig.sparse=1" if xbzrle else "", qemu=qemus.source,
                     machine=qemus.machine) as src, \
             t.Guest(guest_dir, "dst", incoming="defer", workdir=work, qemu=qemus.destination,
                     machine=qemus.machine) as dst:
            src.wait_ready()
            src.console.expect("HB t=", 10)
            if xbzrle:  # later passes then carry XBZRLE records, which rdmig does not parse
                for g in (src, dst):
                    g.qmp.execute("migrate-set-capabilities",
                                  capabilities=[{"capability": "xbzrle", "state": True}])
            recv = t.start_receive(rdmig, work, f"unix:{work}/in.sock", mode, dst.ram_path)
            m = run_migrate(rdmig, src, dst, recv, work,
                            ["--blackout-budget", "20ms", "--fixed-cost", "0ms", "--throttle", "off"]
                            if xbzrle else [])
            print(m.stdout.strip())
            if m.returncode != 0:
                print("rdmig migrate failed:", m.stderr)
                print("the destination QEMU said:", open(f"{work}/dst.qemu.err").read()[-600:])
                return False
            report = json.load(open(f"{work}/migrate.json"))
            recv.finish(30)
            assert report["outcome"] == "completed" and report["mode"] == mode, report
            print("pass-through:", report["passthrough"] or "none")
            if xbzrle:
                assert "XBZRLE" in report["passthrough"], report
                assert "pass-through: " in m.stdout, m.stdout
            print(f"lanes carried {report['lane_pages']} pages; {report['control_bytes']} bytes "
                  f"went on the control channel")
            # Every record understood: nothing verbatim, and in direct mode every page on the lanes.
            parsed = xbzrle or not report["passthrough"]
            if mode == "direct" and report["lane_pages"] < t.RAM_BYTES // 4096:
                print("direct mode: not every page of guest RAM went on the lanes")
                parsed = False
            assert src.status() == "postmigrate", src.status()
            assert dst.status() == "paused", dst.status()
            assert report["switchover_checks"]["destination_read_all"], report
            differ = t.compare_ram(src.ram_path, dst.ram_path)
            print(f"RAM: {differ} of {t.RAM_BYTES // 4096} pages differ between source and destination")
            if differ:
                return False
            dst.qmp.execute("cont")
            verdict = dst.verify()
            print("destination guest:", verdict)
            hb = dst.console.expect("HB t=", 15)
            print("destination heartbeat:", hb)
            return (parsed and verdict.startswith("VERIFY OK")
                    and b"CORRUPT" not in dst.console.everything)
    finally:
        if recv:
            recv.kill()
        subprocess.run(["rm", "-rf", work])


def kill_receive_case(rdmig, guest_dir):
    work = tempfile.mkdtemp(prefix="rdmig-e2e-kill-")
    recv = None
    try:
        with t.Guest(guest_dir, "src", wss_mib=64, rate_mib=20, workdir=work) as src, \
             t.Guest(guest_dir, "dst", incoming="defer", paused=True, workdir=work) as dst:
            src.wait_ready()
            recv = t.start_receive(rdmig, work, f"unix:{work}/in.sock", "direct", dst.ram_path)
            # A slow link keeps the migration going long enough to be cut in the middle.
            migrate = subprocess.Popen(
                [rdmig, "migrate", "--source-qmp", src.qmp2_path, "--dest-qmp", dst.qmp2_path,
                 "--to", f"127.0.0.1:{recv.port}", "--dest-incoming", f"unix:{work}/in.sock",
                 "--max-bandwidth", "16M", "--json", f"{work}/migrate.json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while True:  # until a few MB crossed: the migration is under way
                info = src.qmp.execute("query-migrate")
                if info.get("ram", {}).get("transferred", 0) > 8 << 20:
                    break
                if time.monotonic() > deadline or migrate.poll() is not None:
                    print("migration never got under way:", info)
                    return False
                time.sleep(0.05)  # polling interval of query-migrate
            recv.kill()
            out, err = migrate.communicate(timeout=120)
            print("rdmig migrate exit", migrate.returncode, err.strip()[-300:])
            if migrate.returncode == 0:
                return False
            report = json.load(open(f"{work}/migrate.json"))
            assert report["outcome"] == "failed", report
            dst.proc.wait(timeout=30)  # the destination QEMU got a cut stream and exits
            print("destination QEMU exited with", dst.proc.returncode)
            status = src.status()
            print("source status:", status)
            verdict = src.verify()
            print("source guest:", verdict)
            return status == "running" and verdict.startswith("VERIFY OK")
    finally:
        if recv:
            recv.kill()
        subprocess.run(["rm", "-rf", work])


def verify_lost_pages_case(rdmig, guest_dir):
    """QEMU 7.2 under TCG loses guest writes when the RAM size is a multiple of 256 KiB and the
    migration needs more than one pass (../shared/notes/qemu-7.2-migration.md): `rdmig migrate
    --verify` must find the differing pages and refuse the switchover, the source running on. Should
    a run lose nothing, --verify's verdict must hold page by page."""
    work = tempfile.mkdtemp(prefix="rdmig-e2e-lost-")
    recv = None
    try:
        with t.Guest(guest_dir, "src", wss_mib=64, rate_mib=20, workdir=work, ram="512M") as src, \
             t.Guest(guest_dir, "dst", incoming="defer", workdir=work, ram="512M") as dst:
            src.wait_ready()
            src.console.expect("HB t=", 10)
            recv = t.start_receive(rdmig, work, f"unix:{work}/in.sock", "direct", dst.ram_path)
            m = run_migrate(rdmig, src, dst, recv, work, ["--verify"])
            report = json.load(open(f"{work}/migrate.json"))
            if m.returncode == 0:  # nothing lost this time: the verdict must be true
                differ = t.compare_ram(src.ram_path, dst.ram_path)
                print(f"no page lost this run; --verify said {report['verified_pages']} equal, "
                      f"{differ} differ")
                return differ == 0
            print("rdmig migrate:", m.stderr.strip().splitlines()[-1][-400:])
            ok = m.returncode == 1 and "pages differ" in m.stderr and "mem0+0x" in m.stderr
            ok &= report.get("guest_runs") == "source"
            ok &= dst.gone_never_ran("lost-pages")
            ok &= src.runs_and_verifies("lost-pages")
            return ok
    finally:
        if recv:
            recv.kill()
        subprocess.run(["rm", "-rf", work])


def main(rdmig, guest_dir, *names):
    cases = {
        "idle-direct": lambda: migrate_case(rdmig, guest_dir, 0, "direct"),
        "idle-staged": lambda: migrate_case(rdmig, guest_dir, 0, "staged"),
        "dirty20-direct": lambda: migrate_case(rdmig, guest_dir, 20, "direct"),
        "dirty20-staged": lambda: migrate_case(rdmig, guest_dir, 20, "staged"),
        "dirty20-xbzrle-direct": lambda: migrate_case(rdmig, guest_dir, 20, "direct", xbzrle=True),
        "kill-receive": lambda: kill_receive_case(rdmig, guest_dir),
        "verify-tcg-lost-pages": lambda: verify_lost_pages_case(rdmig, guest_dir),
    }
    return t.run_cases(cases, names)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
