"""Shared harness for tests and scripts that drive real QEMU guests: start a guest, talk QMP, read
its serial console. Every wait has a deadline; nothing sleeps a fixed time to wait for the guest.
Use Guest as a context manager: QEMU is killed and its files removed however the block ends."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

RAM = "524280K"  # not a multiple of 256 KiB: avoids QEMU 7.2's TCG migration bug (see the notes)
RAM_BYTES = 524280 * 1024


def _retry_connect(path, deadline, what):
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: cannot connect to {path}")
            time.sleep(0.02)  # polling interval for a socket to appear


class Qmp:
    def __init__(self, path, deadline):
        self.sock = _retry_connect(path, deadline, "QMP")
        self.file = self.sock.makefile("rw")
        self.events = []
        json.loads(self.file.readline())  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise RuntimeError("QMP: QEMU closed the connection")
        return json.loads(line)

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")
            return reply["return"]

    def wait_event(self, name, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e["event"] == name:
                    self.events.remove(e)
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"QMP: no {name} event within {timeout} s")
            self.sock.settimeout(left)
            try:
                self.events.append(self._read())
            except socket.timeout:
                pass
            finally:
                self.sock.settimeout(None)

    def drain(self, timeout=2):
        """Every event QEMU sent that was not taken yet, reading until QEMU closed the monitor (it
        exited) or `timeout` passed without a line."""
        self.sock.settimeout(timeout)
        try:
            while True:
                line = self.file.readline()
                if not line:
                    break
                self.events.append(json.loads(line))
        except (socket.timeout, OSError, ValueError):
            pass
        finally:
            try:
                self.sock.settimeout(None)
            except OSError:
                pass
        return [e for e in self.events if "event" in e]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def event_time(event):
    return event["timestamp"]["seconds"] + event["timestamp"]["microseconds"] / 1e6


class Console:
    """The guest's serial console over a unix socket."""

    def __init__(self, path, deadline):
        self.sock = _retry_connect(path, deadline, "serial console")
        self.sock.settimeout(0.2)
        self.buf = b""
        self.everything = b""

    def _has_line(self, marker):
        at = self.buf.find(marker.encode())
        return at >= 0 and self.buf.find(b"\n", at) >= 0

    def poll(self):
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        if not data:
            raise RuntimeError("console closed; output:\n" + self.tail())
        self.buf += data
        self.everything += data

    def expect(self, marker, timeout):
        """Returns the first whole line containing `marker`, from the marker on."""
        deadline = time.monotonic() + timeout
        while not self._has_line(marker):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no '{marker}' on the console within {timeout} s; output:\n" + self.tail())
            self.poll()
        at = self.buf.index(marker.encode())
        end = self.buf.find(b"\n", at)
        line = self.buf[at:end].decode(errors="replace").rstrip("\r")
        self.buf = self.buf[end + 1:]
        return line

    def send(self, text):
        self.sock.sendall(text.encode())

    def tail(self):
        return self.everything[-2000:].decode(errors="replace")


class Qemus:
    """The QEMU binary on each side and the machine type both use. from_env() reads
    RDMIG_SRC_QEMU, RDMIG_DST_QEMU and RDMIG_MACHINE (the Makefile's QEMU=10.0, SRC_QEMU, DST_QEMU
    and MACHINE), defaulting to the system's QEMU and q35."""

    def __init__(self, source="qemu-system-x86_64", destination="qemu-system-x86_64", machine="q35"):
        self.source, self.destination, self.machine = source, destination, machine

    @staticmethod
    def from_env():
        default = Qemus()
        return Qemus(os.environ.get("RDMIG_SRC_QEMU") or default.source,
                     os.environ.get("RDMIG_DST_QEMU") or default.destination,
                     os.environ.get("RDMIG_MACHINE") or default.machine)

    def describe(self):
        """What a benchmark records: each side's QEMU version line and the machine type."""
        def version(binary):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
            return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else binary
        return {"source": version(self.source), "destination": version(self.destination),
                "machine": self.machine}


class Guest:
    """One QEMU process running the built-in guest (or waiting for an incoming migration)."""

    def __init__(self, guest_dir, name, wss_mib=64, rate_mib=0, incoming=None, paused=False,
                 workdir=None, extra=(), append="", ram=RAM, qemu="qemu-system-x86_64", machine="q35"):
        self.name = name
        self.own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"rdmig-{name}-")
        self.ram_path = f"/dev/shm/rdmig-{name}-{os.getpid()}-{id(self)}.ram"
        self.qmp_path = f"{self.workdir}/{name}.qmp"
        self.qmp2_path = f"{self.workdir}/{name}.qmp2"  # a second monitor, for rdmig migrate
        self.serial_path = f"{self.workdir}/{name}.serial"
        args = [
            qemu, "-accel", "tcg", "-m", ram, "-smp", "1",
            "-object", f"memory-backend-file,id=mem0,size={ram},mem-path={self.ram_path},share=on",
            "-machine", f"{machine},memory-backend=mem0",
            "-kernel", f"{guest_dir}/vmlinuz", "-initrd", f"{guest_dir}/initrd.gz",
            "-append", f"console=ttyS0 quiet panic=-1 rdmig.wss={wss_mib} rdmig.rate={rate_mib} {append}",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-qmp", f"unix:{self.qmp2_path},server=on,wait=off",
            "-chardev", f"socket,id=ser0,path={self.serial_path},server=on,wait=off,"
                        f"logfile={self.workdir}/{name}.serial.log",
            "-serial", "chardev:ser0", *extra]
        if incoming:
            args += ["-incoming", incoming]
        if paused:
            args += ["-S"]
        self.stderr = open(f"{self.workdir}/{name}.qemu.err", "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.monotonic() + 20
        self.qmp = Qmp(self.qmp_path, deadline)
        self.console = Console(self.serial_path, deadline)

    def wait_ready(self, timeout=120):
        return self.console.expect("RDMIG-READY", timeout)

    def verify(self, timeout=120):
        self.console.send("verify\n")
        return self.console.expect("VERIFY ", timeout)

    def status(self):
        return self.qmp.execute("query-status")["status"]

    def alive(self):
        return self.proc.poll() is None

    def runs_and_verifies(self, name):
        """For a source after a failed migration: True if it is running and its self-check
        passes; says what it saw."""
        status = self.status()
        verdict = self.verify()
        print(f"{name}: source {status}, {verdict}")
        return status == "running" and verdict.startswith("VERIFY OK")

    def gone_never_ran(self, name, timeout=30):
        """For a destination after a failed migration: True only if its QEMU is gone (it exited,
        or rdmig quit it) within `timeout` s and never ran the guest: no RESUME event in anything
        its monitor said. Says what it saw, including how far its incoming migration got."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        gone = self.proc.poll() is not None
        events = self.qmp.drain()
        resumed = any(e["event"] == "RESUME" for e in events)
        incoming = [e["data"]["status"] for e in events if e["event"] == "MIGRATION"]
        if gone:
            state = f"exited ({self.proc.returncode})"
        else:  # the first monitor's reader timed out in drain(); ask on the second one
            try:
                other = Qmp(self.qmp2_path, time.monotonic() + 5)
                state = f"still there ({other.execute('query-status')['status']})"
                other.close()
            except Exception as e:
                state = f"still there (status unknown: {e})"
        print(f"{name}: destination QEMU {state}; its incoming migration went "
              f"{' > '.join(incoming) or '(no events)'}; resumed: {resumed}")
        return gone and not resumed

    def close(self):
        if self.proc.poll() is None:
            try:
                self.qmp.execute("quit")
                self.proc.wait(timeout=10)
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.qmp.close()
        self.stderr.close()
        if os.path.exists(self.ram_path):
            os.unlink(self.ram_path)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_until(what, pred, timeout, interval=0.05):
    """Polls `pred` until it holds; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(interval)  # polling interval of the condition


def enable_migration_events(qmp):
    qmp.execute("migrate-set-capabilities",
                capabilities=[{"capability": "events", "state": True}])


def wait_migration(qmp, timeout):
    """Waits for the MIGRATION event that ends a migration (needs enable_migration_events);
    returns its status: completed, failed or cancelled."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"migration did not end within {timeout} s")
        status = qmp.wait_event("MIGRATION", left)["data"]["status"]
        if status in ("completed", "failed", "cancelled"):
            return status


def compare_ram(path_a, path_b, page=4096):
    """Number of differing pages between two RAM files of equal size."""
    differ = 0
    with open(path_a, "rb") as a, open(path_b, "rb") as b:
        while True:
            x = a.read(page * 256)
            y = b.read(page * 256)
            if not x and not y:
                return differ
            if x != y:
                for i in range(0, max(len(x), len(y)), page):
                    if x[i:i + page] != y[i:i + page]:
                        differ += 1


class Endpoint:
    """An rdmig endpoint process started by a test; killed by kill() whatever happened."""

    def __init__(self, args, log_path, env=None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = None

    def wait_line(self, marker, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                for line in f:
                    if marker in line:
                        return line
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[1]} exited: " + open(self.log_path).read())
            time.sleep(0.02)  # polling interval for the log line
        raise TimeoutError(f"no '{marker}' from {self.proc.args[1]} within {timeout} s")

    def finish(self, timeout):
        """Waits for the endpoint to exit; returns its output; raises if it failed."""
        rc = self.proc.wait(timeout=timeout)
        out = open(self.log_path).read()
        if rc != 0:
            raise RuntimeError(f"{self.proc.args[1]} exited {rc}: {out}")
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start_receive(rdmig, work, to_qemu, mode, ram_path=None, extra=(), fault=None):
    """`rdmig receive` on a free port; `fault`: its RDMIG_FAULT (a test-only hook)."""
    args = [rdmig, "receive", "--listen", "127.0.0.1:0", "--to-qemu", to_qemu, "--mode", mode,
            "--json", f"{work}/receive.json", *extra]
    if mode == "direct":
        args += ["--ram-file", f"mem0={ram_path}"]
    e = Endpoint(args, f"{work}/receive.log",
                 env=dict(os.environ, RDMIG_FAULT=fault) if fault else None)
    line = e.wait_line("listening on", 20)
    e.port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
    return e


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def migrate_guest(rdmig, guest_dir, kind, wss_mib, rate_mib, extra=(), compare=False,
                  timeout=600, qemus=None):
    """One live migration of the built-in guest, driven and measured by `rdmig migrate`.

    kind: "rdmig" (rdmig receive in direct mode, TCP lanes) or "native" (QEMU's own tcp:).
    extra: more `rdmig migrate` arguments (--max-bandwidth, --throttle, --auto-converge, ...).
    compare: start the destination paused, compare its RAM with the source's page by page, then
    let it run and check its own verification. Without it the destination runs at once, so the
    report's blackout is RESUME - STOP.
    qemus: the QEMU per side and machine type (Qemus.from_env() when None).
    Returns (report dict, timeline dict or None, pages differing or None, verdict or None);
    raises if the migration fails."""
    qemus = qemus or Qemus.from_env()
    work = tempfile.mkdtemp(prefix="rdmig-mig-")
    recv = None
    try:
        with Guest(guest_dir, "src", wss_mib=wss_mib, rate_mib=rate_mib, workdir=work,
                   qemu=qemus.source, machine=qemus.machine) as src, \
             Guest(guest_dir, "dst", incoming="defer", paused=compare and kind == "native",
                   workdir=work, qemu=qemus.destination, machine=qemus.machine) as dst:
            src.wait_ready()
            src.console.expect("HB t=", 10)
            args = [rdmig, "migrate", "--source-qmp", src.qmp2_path, "--dest-qmp", dst.qmp2_path,
                    "--json", f"{work}/r.json", "--timeline", f"{work}/timeline.json",
                    "--timeout", str(timeout), *extra]
            if kind == "native":
                uri = f"tcp:127.0.0.1:{free_port()}"
                args += ["--native", uri, "--dest-incoming", uri]
            else:
                recv = start_receive(rdmig, work, f"unix:{work}/in.sock", "direct", dst.ram_path)
                args += ["--to", f"127.0.0.1:{recv.port}", "--dest-incoming", f"unix:{work}/in.sock"]
                if compare:  # rdmig migrate turns the autostart off; it leaves it paused
                    args += ["--paused"]
            m = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 60)
            if m.returncode != 0:
                raise RuntimeError(f"{kind} migration failed: {m.stderr[-2000:]}")
            report = json.load(open(f"{work}/r.json"))
            timeline = json.load(open(f"{work}/timeline.json"))
            differ = verdict = None
            if compare:
                differ = compare_ram(src.ram_path, dst.ram_path)
                dst.qmp.execute("cont")
                verdict = dst.verify()
            dst.console.expect("HB t=", 30)  # the destination guest runs
            if b"CORRUPT" in dst.console.everything:
                verdict = "CORRUPT seen on the destination console"
            return report, timeline, differ, verdict
    finally:
        if recv:
            recv.kill()
        shutil.rmtree(work, ignore_errors=True)


def run_cases(cases, names):
    """Runs the named cases (all when none are named): each a callable returning True on success.
    A harness error fails its case; the others still run. Returns the exit status."""
    failed = 0
    chosen = list(names) or list(cases)
    for name in chosen:
        start = time.monotonic()
        try:
            ok = cases[name]()
        except Exception as e:  # a harness error fails the case, the others still run
            print(f"{name}: {type(e).__name__}: {e}")
            ok = False
        print(f"{'PASS' if ok else 'FAIL'} {name} ({time.monotonic() - start:.1f} s)\n", flush=True)
        failed += not ok
    print(f"{len(chosen) - failed} passed, {failed} failed")
    return 1 if failed else 0
