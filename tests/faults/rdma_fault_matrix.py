#!/usr/bin/env python3
"""The fault matrix over RDMA: the rows of fault_matrix.py on Soft-RoCE. The source and destination
QEMU run on the host; `rdmig send` and `rdmig receive` run in the rxe guest (tests/rxe) and carry the
pages over rxe0 by RDMA WRITE, staged mode (the layout of tests/rxe/migrate-over-rdma). The guest is
booted once; the host drives it through a command server (rxe-guest-serve.sh). Both QEMUs have
QEMU's return path on (as libvirt sets it), so a source QEMU completes only once the destination has
loaded everything; a failure at any point fails the source migration and the source guest runs on.

Every row hurts one migration mid-pass and then checks:
  - the endpoint that saw the fault fails with an error naming what happened;
  - the source guest keeps running (QMP `running`) and its self-check passes;
  - no destination QEMU resumes the guest;
  - no rdmig process is left in the rxe guest, and rxe0's resources (`rdma resource show`: PDs,
    CQs, QPs, cm ids, MRs) are back to what they were before (the registered memory is released);
  - a retry of the same migration (same source, fresh destination) completes over RDMA with the
    destination's RAM identical to the source's page by page and its self-check passing. The
    retried destination is the next row's source.

Rows: control-cut (`ss -K` on the control connection), lane-cut (one queue pair to the error state
through RDMIG_FAULT, as a cut link leaves it: rxe's loopback bypasses the network stack, so nothing
outside the process can cut one lane), kill-receive, kill-send (the two endpoints SIGKILLed),
kill-dest-qemu, stall (`rdmig receive` SIGSTOPped longer than `rdmig send --progress-timeout 5`),
sigint (`rdmig send` interrupted), qmp-cancel (`migrate_cancel` on the source QEMU),
malformed-stream (the source QEMU's stream cut short on its way into `rdmig send`), early-eof (the
stream cut right after a well-formed QEMU_VM_EOF byte by `rdmig send`'s test-only hook: the
destination QEMU takes it for its end; started with -S as docs/usage.md says for `rdmig receive` on
its own, it never runs, and is quit once `rdmig receive` failed).

    rdma_fault_matrix.py RXE_GUEST_DIR RDMIG GUEST_DIR [ROW ...]"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "lib"))
sys.path.insert(0, here)
import rdmig_testlib as t  # noqa: E402
from fault_rows import FaultRow, Harness, run_matrix, run_row  # noqa: E402

RAM = "131064K"  # a smaller guest than the TCP rows' (TCG in TCG is slow); not a multiple of 256 KiB
WSS, RATE = 16, 8  # MiB the guest dirties, MiB/s
MID_PASS = 8  # MiB of QEMU's stream `rdmig send` has carried when a fault is injected
UNITS = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
GUEST_FAULT_PORT = 7000  # where `rdmig send` takes the source QEMU's stream, in the guest


class RxeGuest:
    """The Soft-RoCE guest with rdmig in it, as a remote shell: sh(script) runs `script` there."""

    def __init__(self, rxe_dir, rdmig, work):
        self.fwd, self.ctl = t.free_port(), t.free_port()
        test_dir = os.path.join(work, "rxe-test")
        os.makedirs(test_dir)
        shutil.copy(os.path.join(here, "rxe-guest-serve.sh"), os.path.join(test_dir, "run.sh"))
        env = dict(os.environ, RXE_TIMEOUT="1500",
                   RXE_NETDEV=f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.fwd}-:{GUEST_FAULT_PORT},"
                              f"hostfwd=tcp:127.0.0.1:{self.ctl}-:7100")
        self.proc = subprocess.Popen(
            [os.path.join(here, "..", "rxe", "run-in-guest"), rxe_dir, test_dir, rdmig],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.serving = threading.Event()
        self.reader = threading.Thread(target=self._read_console, daemon=True)
        self.reader.start()
        if not self.serving.wait(240) or self.proc.poll() is not None:
            raise RuntimeError("the rxe guest's command server never started")

    def _read_console(self):
        for line in self.proc.stdout:
            sys.stdout.write("guest| " + line)
            sys.stdout.flush()
            if "RDMIG-GUEST-SERVING" in line:
                self.serving.set()

    def sh(self, script, timeout=90):
        """Runs `script` in the guest; returns (status of its last command, output)."""
        with socket.create_connection(("127.0.0.1", self.ctl), timeout=timeout) as s:
            s.sendall(f"exec 2>&1\n{script}\necho \"RDMIG-RC=$?\"\n".encode())
            s.shutdown(socket.SHUT_WR)
            out = b""
            deadline = time.monotonic() + timeout
            while True:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    raise TimeoutError(f"the guest's command did not end within {timeout} s: "
                                       f"{script[:80]!r}; so far: {out.decode(errors='replace')}")
                if not data:
                    break
                out += data
        text = out.decode(errors="replace")
        head, _, rc = text.rpartition("RDMIG-RC=")
        if not rc.strip().isdigit():
            raise RuntimeError(f"the guest's command ended without a status: {text[-500:]}")
        return int(rc.strip()), head

    def stop(self, verdict):
        try:
            self.sh(f"echo {verdict} >/tmp/verdict; kill $PPID", timeout=30)
        except Exception as e:  # the server may be gone already; the guest is killed below
            print(f"stopping the rxe guest: {e}")
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            return None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_endpoints(g, dest_port, fault_env="", send_env=""):
    """`rdmig receive` (staged, to the destination QEMU on the host) and `rdmig send` (taking the
    source QEMU's stream on the forwarded port) in the guest, both over RDMA."""
    rc, out = g.sh(f"""
rm -f /tmp/recv.* /tmp/send.*
{fault_env} rdmig receive --listen 10.0.2.15:0 --transport rdma --mode staged \\
  --to-qemu tcp:10.0.2.2:{dest_port} --timeout 20 --json /tmp/recv.json </dev/null >/tmp/recv.log 2>&1 &
echo $! >/tmp/recv.pid
port=
for _ in $(seq 200); do
  port=$(sed -n 's/.*listening on [0-9.]*:\\([0-9]*\\).*/\\1/p' /tmp/recv.log)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || {{ cat /tmp/recv.log; false; }} || exit 1
{send_env} rdmig send --from tcp:0.0.0.0:{GUEST_FAULT_PORT} --to 10.0.2.15:$port --transport rdma \\
  --progress-timeout 5 --json /tmp/send.json </dev/null >/tmp/send.log 2>&1 &
echo $! >/tmp/send.pid
for _ in $(seq 200); do grep -q "waiting for QEMU" /tmp/send.log && break; sleep 0.05; done
echo "control port $port"
grep -q "waiting for QEMU" /tmp/send.log || {{ cat /tmp/send.log; false; }}""")
    if rc != 0:
        raise RuntimeError(f"the rxe guest's endpoints did not start: {out}")
    return int(out.split("control port ")[1].split()[0])


def endpoints_ended(g, timeout=60):
    """Waits for the guest's rdmig processes to end; returns (none left, their logs, rxe0's
    resources)."""
    rc, out = g.sh(f"""
for _ in $(seq {timeout * 10}); do pidof rdmig >/dev/null || break; sleep 0.1; done
left=$(pidof rdmig)
echo "=== send"; cat /tmp/send.log; echo "=== receive"; cat /tmp/recv.log
echo "=== rdma"; rdma resource show
[ -z "$left" ] || {{ echo "rdmig still running: $left"; false; }}""", timeout=timeout + 30)
    logs, _, resources = out.partition("=== rdma")
    return rc == 0, logs, resources.strip()


def migration_events(*guests):
    for g in guests:
        g.qmp.execute("migrate-set-capabilities",
                      capabilities=[{"capability": "events", "state": True},
                                    {"capability": "return-path", "state": True}])


class Matrix(Harness):
    def __init__(self, rxe_dir, rdmig, guest_dir, work):
        self.guest_dir, self.work = guest_dir, work
        self.g = RxeGuest(rxe_dir, rdmig, work)
        rc, self.baseline = self.g.sh("rdma resource show")
        self.baseline = self.baseline.strip()
        print(f"rxe0 resources before any migration: {self.baseline}")
        self.src = t.Guest(guest_dir, "src0", wss_mib=WSS, rate_mib=RATE, workdir=work, ram=RAM)
        self.src.wait_ready()
        self.src.console.expect("HB t=", 10)
        self.n = 0
        self.dst = None
        self.control_port = None
        self.sent = 0

    def new_destination(self):
        self.n += 1
        self.dst = t.Guest(self.guest_dir, f"dst{self.n}", incoming="defer", paused=True,
                           workdir=self.work, ram=RAM)
        migration_events(self.src, self.dst)
        port = t.free_port()
        self.dst.qmp.execute("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        return port

    def carried(self):
        """MiB of QEMU's stream `rdmig send` says it has carried (its progress lines)."""
        _, out = self.g.sh("grep \"of QEMU's stream carried\" /tmp/send.log | tail -n 1")
        words = out.split()
        if len(words) < 4 or words[3] not in UNITS:
            return 0
        return float(words[2]) * UNITS[words[3]]

    def sent_so_far(self):
        """Bytes of RAM the source migration has sent, or None once it has ended."""
        info = self.src.qmp.execute("query-migrate")
        if info.get("status") not in ("setup", "active", "device"):
            return None
        self.sent = max(self.sent, info.get("ram", {}).get("transferred", 0))
        return self.sent

    def start(self, row):
        """The guest's endpoints and a fresh destination; the source QEMU migrates to them (through a
        command that cuts its stream, for the malformed stream: a command has no return path)."""
        self.control_port = start_endpoints(self.g, self.new_destination(),
                                            row.get("fault_env", ""), row.get("send_env", ""))
        self.sent = 0
        if row.get("uri"):
            self.src.qmp.execute("migrate-set-capabilities",
                                 capabilities=[{"capability": "return-path", "state": False}])
            self.src.qmp.execute("migrate", uri=row.get("uri").format(fwd=self.g.fwd))
        else:
            self.src.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{self.g.fwd}")

    def hurt(self, row):
        """Mid-pass, the row's injection (or the fault from within); then the source migration's end
        and the endpoints' logs, which hold the error. Failed as it should: failed or cancelled."""
        status = None
        if row.inject and not row.get("uri"):
            t.wait_until("rdmig send carrying pages", lambda: self.sent_so_far() is None
                         or self.carried() >= MID_PASS, 120, interval=0.2)
            print(f"{row.name}: injected with {self.carried():.1f} MiB of the stream carried")
            status = row.inject(self)  # the row's status if the injection waited for the end
        elif not row.get("uri"):  # the fault comes from within (RDMIG_FAULT): how far it got
            t.wait_until("the migration failing", lambda: self.sent_so_far() is None, 120)
            print(f"{row.name}: the source had sent {self.sent / 2**20:.1f} MiB of RAM")
        if not isinstance(status, str):
            status = t.wait_migration(self.src.qmp, 120)
        print(f"{row.name}: source migration {status}")
        self.none_left, logs, self.resources = endpoints_ended(self.g)
        print(f"{row.name}: endpoints in the rxe guest:\n{logs.strip()}")
        # A row that makes the destination QEMU believe its stream is whole leaves it paused (-S)
        # after its load: it is quit once `rdmig receive` failed, as docs/usage.md tells users of
        # `rdmig receive` on its own to do.
        if row.get("quit_destination") and "error" in logs.split("=== receive", 1)[-1] \
                and self.dst.alive():
            print(f"{row.name}: rdmig receive failed; the destination QEMU is "
                  f"{self.dst.status()}: quit")
            self.dst.qmp.execute("quit")
        return status in ("failed", "cancelled"), logs

    def nothing_left(self, row):
        """No rdmig process left in the rxe guest, and rxe0's resources as before the matrix."""
        ok = True
        if not self.none_left:
            print(f"{row.name}: an rdmig process is left in the rxe guest")
            ok = False
        if self.resources != self.baseline:
            print(f"{row.name}: rxe0's resources not released: {self.resources} "
                  f"(before: {self.baseline})")
            ok = False
        return ok

    def retry(self, row):
        """The same migration again, to a fresh destination, over RDMA; memory compared page by
        page; the destination then runs and is the next row's source."""
        name = row.name
        self.dst.close()
        start_endpoints(self.g, self.new_destination())
        started = time.monotonic()
        self.src.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{self.g.fwd}")
        status = t.wait_migration(self.src.qmp, 300)
        if status != "completed" or t.wait_migration(self.dst.qmp, 60) != "completed":
            print(f"{name}: retry: migration {status}")
            endpoints_ended(self.g)
            return False
        seconds = time.monotonic() - started
        none_left, logs, resources = endpoints_ended(self.g)
        over_rdma = "over rdma" in logs and "migration stream failed" not in logs
        differ = t.compare_ram(self.src.ram_path, self.dst.ram_path)
        self.dst.qmp.execute("cont")
        verdict = self.dst.verify()
        print(f"{name}: retry completed in {seconds:.1f} s over "
              f"{'rdma' if over_rdma else 'NOT rdma'}; {differ} pages differ; destination "
              f"{verdict}; rxe0 resources {'released' if resources == self.baseline else resources}")
        ok = none_left and over_rdma and differ == 0 and verdict.startswith("VERIFY OK") \
            and resources == self.baseline
        if not ok:
            print(logs)
        self.src.close()
        self.src, self.dst = self.dst, None
        return ok

    def clean_up_after_failure(self, name):
        """After a failed row: its endpoints' logs, then nothing of it left, so that the next row
        starts clean. False when the source cannot go on: the remaining rows are not run."""
        try:
            _, out = self.g.sh("echo '=== send'; cat /tmp/send.log; echo '=== receive'; "
                               "cat /tmp/recv.log; killall -KILL rdmig 2>/dev/null; true")
            print(f"{name}: endpoints in the rxe guest (killed):\n{out.strip()}")
        except Exception as e:
            print(f"{name}: cannot reach the rxe guest: {e}")
        if self.dst:
            self.dst.close()
            self.dst = None
        try:
            if self.src.status() != "running":
                raise RuntimeError(f"source {self.src.status()}")
        except Exception as e:
            print(f"{name}: the source cannot go on ({e}): the remaining rows are not run")
            self.src.close()
            self.src = None
            return False
        return True

    def close(self, verdict):
        for guest in (self.dst, self.src):
            if guest:
                guest.close()
        status = self.g.stop(verdict)
        self.g.close()
        return status


def guest_kill(sig, which):
    return lambda m: m.g.sh(f"kill -{sig} $(cat /tmp/{which}.pid)")


def control_cut(m):
    # `rdmig send`'s one TCP connection to `rdmig receive` is the control channel (lanes are QPs):
    # ss -K aborts it, which resets the receiving end too.
    rc, out = m.g.sh(f"ss -K -t state established dport = :{m.control_port}")
    print(f"control-cut: ss -K (status {rc}): {out.strip()}")


def stall(m):
    m.g.sh("kill -STOP $(cat /tmp/recv.pid)")
    status = t.wait_migration(m.src.qmp, 120)  # `rdmig send` gives up after its progress timeout
    m.g.sh("kill -CONT $(cat /tmp/recv.pid)")
    return status


ROWS = [
    FaultRow("control-cut", control_cut, "peer closed"),
    FaultRow("lane-cut", None, "rdma lane 1: receive failed",
             fault_env="RDMIG_FAULT=rdma-lane-error:1:40"),
    FaultRow("kill-receive", guest_kill("KILL", "recv"), "peer closed"),
    FaultRow("kill-send", guest_kill("KILL", "send"), "peer closed"),
    FaultRow("kill-dest-qemu", lambda m: m.dst.proc.kill(), "destination QEMU"),
    FaultRow("stall", stall, "timeout: rdma lane"),
    FaultRow("sigint", guest_kill("INT", "send"), "cancelled on SIGINT"),
    FaultRow("qmp-cancel", lambda m: m.src.qmp.execute("migrate_cancel"), "cancelled or failed"),
    FaultRow("malformed-stream", None, "ended inside a record",
             uri="exec:head -c 20000037 | busybox nc 127.0.0.1 {fwd}"),
    FaultRow("early-eof", None, "RDMIG_FAULT early-eof", send_env="RDMIG_FAULT=early-eof:8000000",
             quit_destination=True),
]


def main(rxe_dir, rdmig, guest_dir, *names):
    work = tempfile.mkdtemp(prefix="rdmig-rdma-faults-")
    m = None
    status = 1
    try:
        m = Matrix(rxe_dir, rdmig, guest_dir, work)
        rows = {row.name: (lambda row=row: run_row(m, row)) for row in ROWS}
        status = run_matrix(rows, names, after_failure=m.clean_up_after_failure)
    finally:
        if m:
            m.close(status)
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
