#!/usr/bin/env python3
"""QEMU 10.0 (bookworm-backports, unpacked by scripts/fetch-qemu10) beside the system's QEMU 7.2:
the migration matrix of a host upgrade, each case through `rdmig migrate` with real guests.

Cases PAIR/LOAD-MODE, PAIR one of 10.0-10.0 (QEMU 10.0's default machine type) and 7.2-10.0
(machine type pc-q35-7.2 on both sides: the host upgrade), LOAD idle or dirty20 (the built-in guest
rewriting 20 MiB/s of 64 MiB), MODE direct or staged: tests/e2e/migrate_test.py's oracle (the
destination paused once loaded, RAM compared page by page, no pass-through, in direct mode every
page of guest RAM on the lanes, the destination's self-check and heartbeat after `cont`). 7.2-7.2 is
tests/e2e/migrate_test.py itself.
Case 7.2-10.0/upgrade-running: the host upgrade as an operator runs it, destination started without
-S, guest dirtying: completed, blackout within the 500 ms budget, no pass-through, the guest runs
on 10.0 (self-check, heartbeat) and the source stays stopped.
Case 10.0/default-settings-dirty20-direct: a stream QEMU 10.0 wrote at its default settings (no
return path) replayed through `rdmig send`/`receive` in direct mode: no pass-through, RAM equal.
Case 10.0-7.2/dirty20-direct: the downgrade, which QEMU may refuse. Either it completes with the
migrate_test oracle, or rdmig fails with exit 1 naming the destination QEMU's reason, the source
guest runs with its memory intact and the destination QEMU is gone without having run.

    qemu10_test.py RDMIG GUEST_DIR QEMU10 [CASE ...]"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import rdmig_testlib as t  # noqa: E402
import migrate_test  # noqa: E402
import replay_test  # noqa: E402

QEMU72 = "qemu-system-x86_64"
BUDGET_MS = 500


@contextlib.contextmanager
def dirtying_source_and_destination(guest_dir, qemus, work):
    """The built-in guest dirtying 20 MiB/s over 64 MiB on qemus.source, heartbeating, and a
    destination QEMU waiting for it (-incoming defer, no -S) on qemus.destination."""
    with t.Guest(guest_dir, "src", wss_mib=64, rate_mib=20, workdir=work, qemu=qemus.source,
                 machine=qemus.machine) as src, \
         t.Guest(guest_dir, "dst", incoming="defer", workdir=work, qemu=qemus.destination,
                 machine=qemus.machine) as dst:
        src.wait_ready()
        src.console.expect("HB t=", 10)
        yield src, dst


def running_case(rdmig, guest_dir, qemus, name):
    """The guest dirtying memory migrates to a destination started as docs/usage.md says and runs
    there; the blackout is measured from the source's STOP to the destination's RESUME."""
    work = tempfile.mkdtemp(prefix="rdmig-q10-")
    recv = None
    try:
        with dirtying_source_and_destination(guest_dir, qemus, work) as (src, dst):
            recv = t.start_receive(rdmig, work, f"unix:{work}/in.sock", "direct", dst.ram_path)
            m = subprocess.run(
                [rdmig, "migrate", "--source-qmp", src.qmp2_path, "--dest-qmp", dst.qmp2_path,
                 "--to", f"127.0.0.1:{recv.port}", "--dest-incoming", f"unix:{work}/in.sock",
                 "--blackout-budget", f"{BUDGET_MS}ms", "--json", f"{work}/migrate.json"],
                capture_output=True, text=True, timeout=300)
            print(m.stdout.strip())
            report = json.load(open(f"{work}/migrate.json"))
            if m.returncode != 0:
                print(f"{name}: rdmig migrate exit {m.returncode}: {m.stderr.strip()[-600:]}")
                return False
            verdict = dst.verify()
            hb = dst.console.expect("HB t=", 15)
            source_state = src.status()
            print(f"{name}: blackout {report['blackout_ms']:.0f} ms, pass-through "
                  f"{report['passthrough'] or 'none'}; destination {dst.status()}, {verdict}, {hb}; "
                  f"source {source_state}")
            return (report["guest_runs"] == "destination" and report["blackout_ms"] <= BUDGET_MS
                    and not report["passthrough"] and verdict.startswith("VERIFY OK")
                    and source_state == "postmigrate" and b"CORRUPT" not in dst.console.everything)
    finally:
        if recv:
            recv.kill()
        subprocess.run(["rm", "-rf", work])


def downgrade_case(rdmig, guest_dir, qemus, name):
    """10.0 -> 7.2: completes with every page equal, or fails cleanly with QEMU's own reason."""
    work = tempfile.mkdtemp(prefix="rdmig-q10-down-")
    recv = None
    try:
        with dirtying_source_and_destination(guest_dir, qemus, work) as (src, dst):
            recv = t.start_receive(rdmig, work, f"unix:{work}/in.sock", "direct", dst.ram_path)
            m = migrate_test.run_migrate(rdmig, src, dst, recv, work)
            report = json.load(open(f"{work}/migrate.json"))
            print(f"{name}: rdmig migrate exit {m.returncode}, outcome {report['outcome']}")
            if m.returncode == 0:
                differ = t.compare_ram(src.ram_path, dst.ram_path)
                dst.qmp.execute("cont")
                verdict = dst.verify()
                print(f"{name}: QEMU 7.2 took 10.0's stream: {differ} pages differ, {verdict}")
                return differ == 0 and verdict.startswith("VERIFY OK") and not report["passthrough"]
            print(f"{name}: {m.stderr.strip()[-600:]}")
            reason = open(f"{work}/dst.qemu.err").read().strip()
            print(f"{name}: the destination QEMU said: {reason[-300:]}")
            named = bool(reason) and reason.splitlines()[-1].split(": ", 1)[-1] in m.stderr
            return (m.returncode == 1 and report.get("guest_runs") == "source" and named
                    and dst.gone_never_ran(name) and src.runs_and_verifies(name))
    finally:
        if recv:
            recv.kill()
        subprocess.run(["rm", "-rf", work])


def default_settings_case(rdmig, guest_dir, qemu10, rate, mode):
    """A stream QEMU 10.0 writes at its default settings (no return path, `migrate exec:cat`),
    replayed through `rdmig send` -> lanes -> `rdmig receive` into a QEMU 10.0 destination: every
    record parsed, the destination's RAM equal to the source's final RAM page by page."""
    work = tempfile.mkdtemp(prefix="rdmig-q10-capture-")
    try:
        stream = f"{work}/q10.stream"
        env = dict(os.environ, RDMIG_SRC_QEMU=qemu10)
        subprocess.run([os.path.join(HERE, "..", "..", "scripts", "capture-stream"), guest_dir,
                        stream, "--rate", str(rate)], check=True, env=env, timeout=300)
        return replay_test.replay(rdmig, guest_dir, stream, mode, qemus=t.Qemus(qemu10, qemu10))
    finally:
        subprocess.run(["rm", "-rf", work])


def main(rdmig, guest_dir, qemu10, *names):
    pairs = {
        "10.0-10.0": t.Qemus(qemu10, qemu10, "q35"),
        "7.2-10.0": t.Qemus(QEMU72, qemu10, "pc-q35-7.2"),
    }
    cases = {}
    for pair, qemus in pairs.items():
        for rate, load in ((0, "idle"), (20, "dirty20")):
            for mode in ("direct", "staged"):
                cases[f"{pair}/{load}-{mode}"] = (
                    lambda rate=rate, mode=mode, qemus=qemus:
                    migrate_test.migrate_case(rdmig, guest_dir, rate, mode, qemus=qemus))
    upgrade = pairs["7.2-10.0"]
    cases["7.2-10.0/upgrade-running"] = lambda: running_case(rdmig, guest_dir, upgrade,
                                                              "7.2-10.0/upgrade-running")
    cases["10.0/default-settings-dirty20-direct"] = lambda: default_settings_case(
        rdmig, guest_dir, qemu10, 20, "direct")
    downgrade = t.Qemus(qemu10, QEMU72, "pc-q35-7.2")
    cases["10.0-7.2/dirty20-direct"] = lambda: downgrade_case(rdmig, guest_dir, downgrade,
                                                              "10.0-7.2/dirty20-direct")
    return t.run_cases(cases, names)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
