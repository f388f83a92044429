#!/usr/bin/env python3
"""The fault matrix over TCP lanes: a live migration of the built-in guest through rdmig is hurt in
one way per row, mid-pass, and for every row:
  - `rdmig migrate` (or the endpoint that was driven) fails with an error naming what happened;
  - the source guest keeps running (QMP `running`) and its self-check passes;
  - the destination QEMU, started without -S as docs/usage.md says, never runs the guest (no
    RESUME, ever) and is gone (it exited, or rdmig quit it): one running guest, the source;
  - no rdmig process of the row is left (so the destination's registered memory is released);
  - a throttled guest gets its vCPU back (no rdmig cgroup left);
  - a retry of the same migration (same source, fresh destination) succeeds with the destination's
    RAM identical to the source's page by page and its self-check passing.

Rows: control-cut, lane-cut (iptables reject with TCP reset on the control port, or on one lane's
connection), kill-receive (destination endpoint SIGKILL), kill-migrate (the source endpoint, in
`rdmig migrate`, SIGKILLed while it throttles the guest), kill-dest-qemu, stall (`rdmig receive`
SIGSTOPped longer than --progress-timeout), sigint (`rdmig migrate` interrupted), qmp-cancel
(`migrate_cancel` on the source QEMU), malformed-stream (the source QEMU's stream cut short on its
way into `rdmig send`); and second-source: while a migration runs, a second connection to
`rdmig receive` is refused and the first completes with memory verified.
Rows that make the destination QEMU believe it is done (test-only RDMIG_FAULT hooks):
early-eof (the stream cut right after a well-formed QEMU_VM_EOF byte between two sections: QEMU
7.2 ends its load there and reports completed), cut-boundary and cut-tail (QEMU's stream ends at a
record boundary between sections, or 200 bytes into the device-state tail: never a complete
migration), lane-drop (a page lost on lane 1: the lanes'
counts disagree when the source completed, before QEMU's end of stream goes out), and
fail-before-cont (both QEMUs completed, then the switchover fails before `cont`: the source,
left in postmigrate, is resumed by rdmig); and verify-corrupt (`rdmig migrate --verify` with one
landed page changed after the lanes' check: the page is named, the switchover fails; its retry
runs with --verify and every page compares equal).

    fault_matrix.py RDMIG GUEST_DIR [ROW ...]"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rdmig_testlib as t  # noqa: E402
from fault_rows import FaultRow, Harness, run_matrix, run_row, verdict_after_fault  # noqa: E402

LINK = "24M/s"  # slow enough that every fault lands mid-pass


def throttle_groups():
    found = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup/cpu"):
        found += [os.path.join(dirpath, d) for d in dirnames if d.startswith("rdmig-throttle-")]
    return found


def transferred(src):
    return src.qmp.execute("query-migrate").get("ram", {}).get("transferred", 0)


class Reject:
    """An iptables rule answering matching packets with a TCP reset; removed on exit."""

    def __init__(self, *match):
        self.rule = ["OUTPUT", "-o", "lo", "-p", "tcp", *match, "-j", "REJECT",
                     "--reject-with", "tcp-reset"]
        subprocess.run(["iptables", "-I", *self.rule], check=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        subprocess.run(["iptables", "-D", *self.rule], check=False)


class Row(Harness):
    """One row's harness (fault_rows.py): a source guest, a destination QEMU and `rdmig receive`,
    and `rdmig migrate`."""

    def __init__(self, rdmig, guest_dir, work, wss=64, rate=20):
        self.rdmig, self.guest_dir, self.work = rdmig, guest_dir, work
        self.src = t.Guest(guest_dir, "src", wss_mib=wss, rate_mib=rate, workdir=work)
        self.dst = None
        self.recv = None
        self.migrate = None
        self.src.wait_ready()
        self.src.console.expect("HB t=", 10)

    def start_destination(self, name="dst", fault=None):
        # As docs/usage.md tells users: no -S; rdmig migrate turns the autostart off.
        self.dst = t.Guest(self.guest_dir, name, incoming="defer", workdir=self.work)
        t.enable_migration_events(self.dst.qmp)
        self.recv = t.start_receive(self.rdmig, self.work, f"unix:{self.work}/{name}-in.sock",
                                    "direct", self.dst.ram_path, fault=fault)

    def start_migrate(self, *extra, fault=None, receive_fault=None):
        """`rdmig migrate` (--paused: a migration that completes is compared before it runs).
        With `fault` (an RDMIG_FAULT value for `rdmig migrate`; `receive_fault` for
        `rdmig receive`) the fault comes from within: no waiting here."""
        self.start_destination(fault=receive_fault)
        env = dict(os.environ, RDMIG_FAULT=fault) if fault else None
        self.migrate = subprocess.Popen(
            [self.rdmig, "migrate", "--source-qmp", self.src.qmp2_path, "--dest-qmp",
             self.dst.qmp2_path, "--to", f"127.0.0.1:{self.recv.port}", "--dest-incoming",
             f"unix:{self.work}/dst-in.sock", "--max-bandwidth", LINK, "--json",
             f"{self.work}/m.json", "--paused", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if not fault and not receive_fault:
            t.wait_until("migration under way", lambda: transferred(self.src) > (8 << 20), 60)

    def migrate_result(self, timeout=90):
        out, err = self.migrate.communicate(timeout=timeout)
        return self.migrate.returncode, err

    def start(self, row):
        self.start_migrate(*row.get("migrate_args", ()), fault=row.get("fault"),
                           receive_fault=row.get("receive_fault"))

    def hurt(self, row):
        """The row's injection, then `rdmig migrate`'s end: it failed as it should when it exited
        with the row's status (1, or killed)."""
        row.inject(self)
        rc, err = self.migrate_result()
        want = row.get("want_rc", 1)
        if rc != want:
            print(f"{row.name}: rdmig migrate exited {rc}, want {want}")
        return rc == want, err

    def nothing_left(self, row):
        """Every rdmig process of the row ended (the destination's memory goes with it), the report
        names the source as where the guest runs, and no throttle cgroup is left."""
        ok = True
        for what, proc in (("rdmig receive", self.recv.proc if self.recv else None),
                           ("rdmig migrate", self.migrate)):
            if proc is None:
                continue
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print(f"{row.name}: {what} is still running")
                ok = False
        report = json.load(open(f"{self.work}/m.json")) if os.path.exists(f"{self.work}/m.json") \
            else {}
        if report.get("outcome") == "failed" and report.get("guest_runs") != "source":
            print(f"{row.name}: the report says the guest runs on {report.get('guest_runs')}")
            ok = False
        left = throttle_groups()
        if left:
            print(f"{row.name}: throttle cgroups left behind: {left}")
            ok = False
        return ok

    def retry(self, row):
        """The same migration again, to a fresh destination; memory compared page by page (and by
        --verify when the row used it)."""
        name = row.name
        extra = [a for a in row.get("migrate_args", ()) if a == "--verify"]
        if self.recv:
            self.recv.kill()
        self.dst.close()
        self.start_destination("dst2")
        m = subprocess.run(
            [self.rdmig, "migrate", "--source-qmp", self.src.qmp2_path, "--dest-qmp",
             self.dst.qmp2_path, "--to", f"127.0.0.1:{self.recv.port}", "--dest-incoming",
             f"unix:{self.work}/dst2-in.sock", "--json", f"{self.work}/retry.json", "--paused",
             *extra],
            capture_output=True, text=True, timeout=300)
        if m.returncode != 0:
            print(f"{name}: retry failed: {m.stderr[-500:]}")
            return False
        if "--verify" in extra:
            report = json.load(open(f"{self.work}/retry.json"))
            print(f"{name}: retry --verify: {report.get('verified_pages')} pages equal "
                  f"({report.get('verify_ms', 0):.0f} ms)")
            if report.get("verified_pages") != t.RAM_BYTES // 4096:
                return False
        return self.landed_intact(name, "retry")

    def landed_intact(self, name, which):
        """After a completed migration: the destination's RAM equals the source's page by page,
        and, let run, the destination guest's own check passes."""
        self.recv.finish(30)
        differ = t.compare_ram(self.src.ram_path, self.dst.ram_path)
        self.dst.qmp.execute("cont")
        verdict = self.dst.verify()
        print(f"{name}: {which} completed; {differ} pages differ; destination {verdict}")
        return differ == 0 and verdict.startswith("VERIFY OK")

    def close(self):
        if self.migrate and self.migrate.poll() is None:
            self.migrate.kill()
            self.migrate.wait()
        if self.recv:
            if self.recv.proc.poll() is None:
                os.kill(self.recv.proc.pid, signal.SIGCONT)
            self.recv.kill()
        for g in (self.dst, self.src):
            if g:
                g.close()


def fault_row(rdmig, guest_dir, name, inject, expect, migrate_args=(), wss=64, rate=20,
              want_rc=1, fault=None, receive_fault=None):
    work = tempfile.mkdtemp(prefix=f"rdmig-fault-{name}-")
    harness = None
    try:
        harness = Row(rdmig, guest_dir, work, wss, rate)
        return run_row(harness, FaultRow(name, inject, expect, migrate_args=migrate_args,
                                         want_rc=want_rc, fault=fault,
                                         receive_fault=receive_fault))
    finally:
        if harness:
            harness.close()
        shutil.rmtree(work, ignore_errors=True)


def cut_control(row):
    with Reject("--dport", str(row.recv.port)):
        row.migrate.wait(timeout=90)


def cut_lane(row):
    # rdmig migrate's TCP connections other than the control one are its lanes.
    out = subprocess.run(["ss", "-Htnp", "state", "established"], capture_output=True,
                         text=True).stdout
    lanes = []
    for line in out.splitlines():
        cols = line.split()
        if f"pid={row.migrate.pid}," not in line or len(cols) < 4:
            continue
        local, peer = cols[2], cols[3]
        if not peer.endswith(f":{row.recv.port}"):
            lanes.append(int(local.rsplit(":", 1)[1]))
    if not lanes:
        raise RuntimeError("no lane connections of rdmig migrate found")
    with Reject("--sport", str(lanes[0])):
        row.migrate.wait(timeout=90)


def no_injection(row):
    """The row's fault comes from within rdmig migrate (RDMIG_FAULT)."""


def kill_receive(row):
    row.recv.proc.kill()


def kill_dest_qemu(row):
    row.dst.proc.kill()


def stall(row):
    os.kill(row.recv.proc.pid, signal.SIGSTOP)
    row.migrate.wait(timeout=90)  # fails after --progress-timeout
    os.kill(row.recv.proc.pid, signal.SIGCONT)


def sigint(row):
    row.migrate.send_signal(signal.SIGINT)


def qmp_cancel(row):
    row.src.qmp.execute("migrate_cancel")


def kill_migrate(row):
    # Killed while it throttles the guest: the guard must give the vCPU back.
    vcpu = row.src.qmp.execute("query-cpus-fast")[0]["thread-id"]
    t.wait_until("the guest throttled", lambda: ":cpu:/rdmig-throttle-" in
                 open(f"/proc/{vcpu}/cgroup").read(), 60)
    row.migrate.kill()
    t.wait_until("the vCPU thread back home", lambda: ":cpu:/rdmig-throttle-" not in
                 open(f"/proc/{vcpu}/cgroup").read(), 10)


def malformed_stream_row(rdmig, guest_dir):
    """The source QEMU migrates through `exec:` into `head -c` and `rdmig send`: the stream ends
    in the middle of a record. rdmig send must fail saying so, rdmig receive must not let the
    destination QEMU load a partial stream, and the source keeps running."""
    name = "malformed-stream"
    work = tempfile.mkdtemp(prefix=f"rdmig-fault-{name}-")
    row = None
    try:
        row = Row(rdmig, guest_dir, work)
        row.start_destination()
        row.dst.qmp.execute("migrate-incoming", uri=f"unix:{work}/dst-in.sock")
        t.enable_migration_events(row.src.qmp)
        send_log = f"{work}/send.log"
        # 40 MB, then the stream stops mid-record; rdmig send reads it from stdin.
        row.src.qmp.execute("migrate", uri=f"exec:head -c 40000037 | {rdmig} send --from - "
                                           f"--to 127.0.0.1:{row.recv.port} >{send_log} 2>&1")
        status = t.wait_migration(row.src.qmp, 120)
        print(f"{name}: source migration {status}")
        t.wait_until("rdmig send done", lambda: "migration stream failed" in open(send_log).read()
                     or "rdmig send:" in open(send_log).read(), 30)
        err = open(send_log).read()
        this = FaultRow(name, None, "ended inside a record")
        ok = verdict_after_fault(name, status == "failed", err, this.expect,
                                 lambda: row.nothing_left(this), row.src, row.dst)
        return row.retry(this) and ok
    finally:
        if row:
            row.close()
        shutil.rmtree(work, ignore_errors=True)


def second_source_row(rdmig, guest_dir):
    """One migration per destination session: while one runs, a second source's connection to
    `rdmig receive` is refused, and the first migration completes unharmed, memory verified."""
    name = "second-source"
    work = tempfile.mkdtemp(prefix=f"rdmig-fault-{name}-")
    row = None
    try:
        row = Row(rdmig, guest_dir, work)
        row.start_migrate()
        try:
            socket.create_connection(("127.0.0.1", row.recv.port), timeout=5).close()
            refused = False
        except ConnectionRefusedError:
            refused = True
        print(f"{name}: a second connection to rdmig receive was "
              f"{'refused' if refused else 'ACCEPTED'}")
        rc, err = row.migrate_result()
        if rc != 0:
            print(f"{name}: the first migration failed: {err[-400:]}")
            return False
        return row.landed_intact(name, "first migration") and refused
    finally:
        if row:
            row.close()
        shutil.rmtree(work, ignore_errors=True)


ROWS = {
    "control-cut": lambda r, g: fault_row(r, g, "control-cut", cut_control, "peer closed"),
    "lane-cut": lambda r, g: fault_row(r, g, "lane-cut", cut_lane, "lane"),
    "kill-receive": lambda r, g: fault_row(r, g, "kill-receive", kill_receive, "peer closed"),
    "kill-migrate": lambda r, g: fault_row(r, g, "kill-migrate", kill_migrate, "",
                                           ["--throttle", "cgroup"], wss=128, rate=150,
                                           want_rc=-signal.SIGKILL),
    "kill-dest-qemu": lambda r, g: fault_row(r, g, "kill-dest-qemu", kill_dest_qemu,
                                             "destination QEMU"),
    "stall": lambda r, g: fault_row(r, g, "stall", stall, "timeout", ["--progress-timeout", "5"]),
    "sigint": lambda r, g: fault_row(r, g, "sigint", sigint, "cancelled on SIGINT"),
    "qmp-cancel": lambda r, g: fault_row(r, g, "qmp-cancel", qmp_cancel, "cancelled"),
    "malformed-stream": malformed_stream_row,
    "early-eof": lambda r, g: fault_row(r, g, "early-eof", no_injection, "early-eof",
                                        fault="early-eof:16000000"),
    "lane-drop": lambda r, g: fault_row(r, g, "lane-drop", no_injection, "lane 1 landed",
                                        fault="tcp-drop-page:1:3000"),
    "cut-boundary": lambda r, g: fault_row(r, g, "cut-boundary", no_injection,
                                           "before QEMU's end of stream (between sections",
                                           fault="cut-stream:0:16000000"),
    "cut-tail": lambda r, g: fault_row(r, g, "cut-tail", no_injection,
                                       "before QEMU's end of stream (device state tail",
                                       fault="cut-stream:1:200"),
    "fail-before-cont": lambda r, g: fault_row(r, g, "fail-before-cont", no_injection,
                                               "fail-before-cont", fault="fail-before-cont"),
    "verify-corrupt": lambda r, g: fault_row(r, g, "verify-corrupt", no_injection,
                                             "1 of 131070 pages differ", ["--verify"],
                                             receive_fault="corrupt-landed:0:1000"),
    "second-source": second_source_row,
}


def main(rdmig, guest_dir, *names):
    return run_matrix({name: (lambda row=row: row(rdmig, guest_dir)) for name, row in ROWS.items()},
                      names)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
