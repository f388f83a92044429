"""Two libvirt "hosts" on one machine, for end-to-end tests of rdmig under libvirt (stdlib only).

Layout. TwoHosts makes one temp root (on /dev/shm, so guest RAM files live in memory):

    ROOT/bin/qemu-wrap-<KiB>k      <emulator> wrappers (see below), the same path for both hosts
    ROOT/A/etc/libvirt             -> bind-mounted over /etc/libvirt       in A's mount namespace
    ROOT/A/run/libvirt             -> /run/libvirt   (libvirt-sock, libvirtd.pid, qemu/<dom>.pid)
    ROOT/A/run/rdmig               -> /run/rdmig     (the same path string is another dir in B)
    ROOT/A/var/lib/libvirt         -> /var/lib/libvirt (qemu/ram/<id>-<name>/pc.ram: guest RAM)
    ROOT/A/var/cache/libvirt       -> /var/cache/libvirt (QEMU capabilities cache)
    ROOT/A/var/log/libvirt         -> /var/log/libvirt (libvirtd.log, qemu/<dom>.log, serial logs)
    ROOT/A/libvirtd.stderr         the daemon's stdout/stderr
    ROOT/B/...                     the same for B

Each daemon is `libvirtd` started by `unshare -m --propagation private`, which then bind-mounts its
private directories over the real paths and execs libvirtd (the Popen pid is the daemon's pid; its
mount namespace is where its QEMUs run). Every path a host sees under those directories is
reachable from the root namespace (and from the other host's namespace) as ROOT/<host>/<path>:
Host.host_path() does that translation. So Host.uri (qemu+unix:///system?socket=ROOT/A/run/libvirt/
libvirt-sock) works from anywhere, which a --p2p migration needs (A's libvirtd connects to B).

Guests: domain_xml() builds a TCG domain booting the built-in test guest (build/guest) by direct
kernel boot with the kernel command line rdmig_testlib.Guest uses, RAM in a shared file
(<memoryBacking><source type='file'/><access mode='shared'/>), serial 0 on a unix socket (so a test
can type "verify") logged to a file. libvirt rounds <memory> up to whole MiB, which brings back
QEMU 7.2's TCG migration bug for RAM sizes that are multiples of 256 KiB; TwoHosts.emulator(kib)
writes an <emulator> wrapper that rewrites `-m` and the RAM backend's size back to `kib` KiB before
exec'ing /usr/bin/qemu-system-x86_64 (rdmig_testlib.RAM, 524280 KiB, is the default).

cgroups: with cgroups=True (the default) qemu.conf has cgroup_controllers = [ "cpu" ] (cgroup v1).
libvirt without systemd puts a domain in the absolute partition /machine of the hierarchy it sees:
/sys/fs/cgroup/cpu/machine/qemu-<id>-<name>.libvirt-qemu/{emulator,vcpu0}, whatever the daemon's
own cgroup. Two daemons would share it for the same name and id (as a migration's source and
destination have: both id 1 on fresh daemons), and a quota set on one host would hit the other's
domain. So each daemon starts in its own cgroup /sys/fs/cgroup/cpu/rdmig-libvirt-<token>/<A|B>,
in a new cgroup namespace (unshare -C), with the cpu hierarchy mounted afresh in its mount
namespace: its /machine is then ROOT_CG/<host>/machine (Host.domain_cgroup()). The hybrid cgroup2
mount /sys/fs/cgroup/unified is unmounted in the namespace too: libvirt 9.0 takes it for a usable
v2 hierarchy (it offers hugetlb only) and fails to start domains ("v2 controller '(null)' is not
available"). cgroups=False runs with no cgroup controller at all.

libvirt 9.0 resolves its built-in QEMU user "libvirt-qemu" before reading qemu.conf, and
libvirt-daemon-system (which creates it) is not installed: each namespace gets its own copy of
/etc/passwd and /etc/group with that user added (QEMU still runs as root, per qemu.conf).

Cleanup (TwoHosts.close(), also on a failed start): domains destroyed and undefined, libvirtd
stopped, every process left in either host's mount namespace (QEMUs, proxies) killed, cgroups
removed, ROOT removed. Every wait has a deadline; errors name the host and carry the tail of its
libvirtd log (and of the domain's QEMU log where one applies).

Run as a script, `libvirt_hosts.py proxy LISTEN CONNECT` is the unix-socket proxy (see UnixProxy).

Mount points: the first run creates empty directories /run/libvirt, /run/rdmig, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt in the real tree (to bind-mount over); they stay, empty."""
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from xml.sax.saxutils import escape, quoteattr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import rdmig_testlib as t  # noqa: E402

QEMU = "/usr/bin/qemu-system-x86_64"
RAM_KIB = 524280  # rdmig_testlib.RAM: not a multiple of 256 KiB (QEMU 7.2 TCG migration bug)
PRIVATE_DIRS = ("/etc/libvirt", "/run/libvirt", "/run/rdmig", "/var/lib/libvirt", "/var/cache/libvirt",
                "/var/log/libvirt")
CGROUP_CPU = "/sys/fs/cgroup/cpu"
CGROUP2_HYBRID = "/sys/fs/cgroup/unified"


class HostError(RuntimeError):
    pass


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({path}: {e})\n"


def _pids_in_mount_ns(ns):
    """Pids of the processes whose mount namespace is `ns` (a readlink of /proc/PID/ns/mnt)."""
    pids = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            if os.readlink(f"/proc/{d}/ns/mnt") == ns:
                pids.append(int(d))
        except OSError:
            pass
    return pids


def _kill_and_wait(pids, deadline_s=10):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not _is_zombie(p)]
            if not pids:
                return
            time.sleep(0.05)  # polling interval for processes to exit
    if pids:
        raise HostError(f"processes {pids} survive SIGKILL")


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _remove_cgroup_tree(path):
    """rmdir a cgroup v1 directory bottom-up (the control files go with their directory)."""
    if not os.path.isdir(path):
        return
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for _ in range(50):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while an exiting task is still counted
                time.sleep(0.05)


class Host:
    """One libvirtd in its own mount namespace. Created and started by TwoHosts."""

    def __init__(self, name, root, cgroup=None, log_level=3):
        self.name = name
        self.dir = os.path.join(root, name)
        self.cgroup = cgroup  # a cpu cgroup directory to start the daemon in, or None
        self.log_level = log_level
        self.sock = self.host_path("/run/libvirt/libvirt-sock")
        self.uri = f"qemu+unix:///system?socket={self.sock}"
        self.proc = None
        self.pid = None
        self.mnt_ns = None
        self.host_uuid = str(uuid.uuid4())
        self.daemon_log = self.host_path("/var/log/libvirt/libvirtd.log")
        self.stderr_path = os.path.join(self.dir, "libvirtd.stderr")

    # ----- paths ---------------------------------------------------------------------------
    def host_path(self, path):
        """The root-namespace path of `path` as this host sees it (also valid in the other host's
        namespace): ROOT/<host>/<path> for the private directories, else /proc/<pid>/root/<path>."""
        path = os.path.normpath(path)
        for d in PRIVATE_DIRS:
            if path == d or path.startswith(d + "/"):
                return self.dir + path
        if self.pid is None:
            raise HostError(f"host {self.name}: {path} is not in a private directory")
        return f"/proc/{self.pid}/root{path}"

    # ----- start / stop --------------------------------------------------------------------
    def write_config(self, cgroup_controllers):
        for d in PRIVATE_DIRS:
            os.makedirs(self.dir + d, exist_ok=True)
        for d in ("/var/log/libvirt/qemu", "/var/lib/libvirt/qemu", "/var/cache/libvirt/qemu",
                  "/run/libvirt/qemu"):  # made by libvirt-daemon-system's package normally
            os.makedirs(self.dir + d, exist_ok=True)
        for f in ("libvirt.conf", "libvirt-admin.conf"):
            if os.path.exists(f"/etc/libvirt/{f}"):
                shutil.copy(f"/etc/libvirt/{f}", self.host_path(f"/etc/libvirt/{f}"))
        with open(self.host_path("/etc/libvirt/libvirtd.conf"), "w") as f:
            f.write(f'''# written by libvirt_hosts.py for host {self.name}
listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
host_uuid = "{self.host_uuid}"
log_outputs = "{self.log_level}:file:/var/log/libvirt/libvirtd.log"
''')
        controllers = ", ".join(f'"{c}"' for c in cgroup_controllers)
        with open(self.host_path("/etc/libvirt/qemu.conf"), "w") as f:
            f.write(f'''# written by libvirt_hosts.py for host {self.name}
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
stdio_handler = "file"
cgroup_controllers = [ {controllers} ]
namespaces = [ ]
''')
        # libvirt 9.0 resolves its built-in default QEMU user/group ("libvirt-qemu", made by
        # libvirt-daemon-system, not installed here) before it reads qemu.conf: give the namespace
        # its own /etc/passwd and /etc/group that have them.
        for db, line in (("passwd", "libvirt-qemu:x:{id}:{id}:libvirt qemu:/var/lib/libvirt:/usr/sbin/nologin"),
                         ("group", "libvirt-qemu:x:{id}:")):
            with open(f"/etc/{db}") as f:
                text = f.read()
            if not any(x.startswith("libvirt-qemu:") for x in text.splitlines()):
                ids = {int(x.split(":")[2]) for x in text.splitlines() if x.count(":") >= 2}
                free = next(i for i in range(64055, 65534) if i not in ids)
                text = text.rstrip("\n") + "\n" + line.format(id=free) + "\n"
            with open(os.path.join(self.dir, db), "w") as f:
                f.write(text)
        # No networks at all (in particular no autostarted default network fighting for virbr0).
        shutil.rmtree(self.host_path("/etc/libvirt/qemu/networks"), ignore_errors=True)

    def start(self):
        inner = ["set -e"]
        for d in PRIVATE_DIRS:
            inner.append(f"mkdir -p {d}")  # the mount point (an empty directory in the real tree)
            inner.append(f"mount --bind {shlex.quote(self.dir + d)} {d}")
        for db in ("passwd", "group"):
            inner.append(f"mount --bind {shlex.quote(os.path.join(self.dir, db))} /etc/{db}")
        if self.cgroup:
            # In its own cgroup namespace rooted at self.cgroup, with the cpu hierarchy mounted
            # afresh, the daemon's "/machine" partition is self.cgroup/machine.
            inner.append(f"umount {CGROUP_CPU}")
            inner.append(f"mount -t cgroup -o cpu cgroup {CGROUP_CPU}")
            if os.path.ismount(CGROUP2_HYBRID):  # else libvirt fails: "v2 controller '(null)' ..."
                inner.append(f"umount {CGROUP2_HYBRID}")
        inner.append("exec libvirtd -f /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid")
        unshare = ["unshare", "-m", *(["-C"] if self.cgroup else []), "--propagation", "private",
                   "sh", "-c", "\n".join(inner)]
        argv = unshare
        if self.cgroup:
            argv = ["sh", "-c", f"echo $$ > {shlex.quote(self.cgroup)}/cgroup.procs && exec \"$@\"", "sh",
                    *unshare]
        self.stderr = open(self.stderr_path, "w")
        # Every step execs the next: the Popen pid is libvirtd's.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.stderr,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, deadline):
        """Waits until the daemon answers `virsh version` (polls; raises with its log on timeout)."""
        while True:
            if self.proc.poll() is not None:
                raise HostError(f"host {self.name}: libvirtd exited with {self.proc.returncode}\n"
                                + self.logs())
            if self.mnt_ns is None:
                try:
                    ns = os.readlink(f"/proc/{self.pid}/ns/mnt")
                    if ns != os.readlink("/proc/self/ns/mnt"):
                        self.mnt_ns = ns
                except OSError:
                    pass
            if self.mnt_ns and os.path.exists(self.sock):
                try:
                    r = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True,
                                       text=True, timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    r = None
                if r is not None and r.returncode == 0:
                    if os.readlink(f"/proc/{self.pid}/exe") != "/usr/sbin/libvirtd":
                        raise HostError(f"host {self.name}: pid {self.pid} is not libvirtd")
                    return
            if time.monotonic() > deadline:
                raise HostError(f"host {self.name}: libvirtd not ready in time\n" + self.logs())
            time.sleep(0.05)  # polling interval for the daemon's socket

    def stop(self):
        """Destroys and undefines every domain, stops libvirtd, kills whatever else runs in the
        namespace. Best effort; raises only if a process cannot be killed."""
        problems = []
        if self.proc and self.proc.poll() is None:
            try:
                for dom in self.domains(all=True):
                    self.virsh("destroy", dom, check=False, timeout=30)
                    self.virsh("undefine", dom, "--managed-save", check=False, timeout=30)
            except Exception as e:  # the daemon may be wedged: everything is killed below anyway
                problems.append(f"listing domains: {e}")
        if self.proc:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.stderr.close()
        if self.mnt_ns:
            for _ in range(3):  # a process may still fork while the others die
                pids = _pids_in_mount_ns(self.mnt_ns)
                if not pids:
                    break
                _kill_and_wait(pids)
        return problems

    # ----- running things in the host ------------------------------------------------------
    def _ns(self, argv):
        return ["nsenter", "-t", str(self.pid), "-m", "--", *argv]

    def run(self, argv, timeout=60, check=True, **kw):
        """subprocess.run of argv inside this host's mount namespace (text, output captured unless
        told otherwise)."""
        kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
        kw.setdefault("text", True)
        r = subprocess.run(self._ns(argv), timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise HostError(f"host {self.name}: {shlex.join(argv)} exited {r.returncode}: "
                            f"{(r.stderr or '')[-2000:]}")
        return r

    def popen(self, argv, **kw):
        """subprocess.Popen of argv inside this host's mount namespace."""
        return subprocess.Popen(self._ns(argv), **kw)

    def virsh(self, *args, check=True, timeout=120):
        """virsh -c <this host> ARGS (from the root namespace); returns the CompletedProcess,
        raises HostError with the daemon's log tail when check and it fails."""
        r = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise HostError(f"host {self.name}: virsh {shlex.join(args)} exited {r.returncode}: "
                            f"{r.stderr.strip()}\n" + self.logs())
        return r

    def domains(self, all=False):
        r = self.virsh("list", "--name", *(["--all"] if all else []), timeout=30)
        return [d for d in r.stdout.split() if d]

    # ----- domains -------------------------------------------------------------------------
    def domstate(self, dom):
        """`virsh domstate --reason`, e.g. "running (booted)", "paused (migrating)"; "" if unknown."""
        r = self.virsh("domstate", dom, "--reason", check=False, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else ""

    def is_active(self, dom):
        return self.domstate(dom).split(" ")[0] in ("running", "paused", "blocked", "pmsuspended")

    def qemu_log_path(self, dom):
        return self.host_path(f"/var/log/libvirt/qemu/{dom}.log")

    def qemu_cmdline(self, dom):
        """The argv of the domain's running QEMU, from /proc (after the wrapper's rewrite)."""
        pid = self.domain_pid(dom)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0")[:-1]]

    def domain_pid(self, dom):
        with open(self.host_path(f"/run/libvirt/qemu/{dom}.pid")) as f:
            return int(f.read().strip())

    def domain_cgroup(self, dom):
        """Root-namespace path of the domain's cpu cgroup (…/machine/qemu-<id>-<name>.libvirt-qemu,
        with vcpu0/ and emulator/ below it), or None without cgroups."""
        with open(f"/proc/{self.domain_pid(dom)}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpu" in controllers.split(",") and ".libvirt-qemu" in path:
                    return CGROUP_CPU + path[:path.index(".libvirt-qemu") + len(".libvirt-qemu")]
        return None

    def domain_id(self, dom):
        return int(self.virsh("domid", dom).stdout.strip())

    def qmp(self, dom, command, **arguments):
        """A QMP command through libvirt (virsh qemu-monitor-command); returns its "return"."""
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        r = self.virsh("qemu-monitor-command", dom, json.dumps(msg))
        return json.loads(r.stdout)["return"]

    def hmp(self, dom, command):
        return self.virsh("qemu-monitor-command", dom, "--hmp", command).stdout

    def logs(self, dom=None):
        """The tails of this host's libvirtd log and stderr (and of DOM's QEMU log), for errors."""
        out = (f"--- host {self.name}: {self.daemon_log} (tail)\n{_tail(self.daemon_log)}"
               f"--- host {self.name}: {self.stderr_path} (tail)\n{_tail(self.stderr_path, 10)}")
        if dom:
            out += f"--- host {self.name}: QEMU log of {dom} (tail)\n{_tail(self.qemu_log_path(dom))}"
        return out

    def __repr__(self):
        return f"<Host {self.name} pid={self.pid} uri={self.uri}>"


class TwoHosts:
    """Context manager: two libvirt hosts .a and .b (see the module docstring)."""

    def __init__(self, cgroups=True, base_dir=None, start_timeout=30, log_level=3, keep=False):
        self.cgroups = cgroups
        self.base_dir = base_dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.keep = keep  # keep ROOT (logs) after close, for debugging
        self.root = None
        self.cgroup_root = None
        self.a = self.b = None
        self.hosts = []
        self.proxies = []

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        self.root = tempfile.mkdtemp(prefix="rdmig-libvirt-", dir=self.base_dir)
        os.chmod(self.root, 0o755)
        os.makedirs(f"{self.root}/bin")
        controllers = ()
        if self.cgroups:
            if not os.path.exists(f"{CGROUP_CPU}/cgroup.procs"):
                raise HostError(f"cgroups requested but no cgroup v1 cpu controller at {CGROUP_CPU}")
            controllers = ("cpu",)
            self.cgroup_root = f"{CGROUP_CPU}/{os.path.basename(self.root)}"
        for name in ("A", "B"):
            cg = None
            if self.cgroup_root:
                cg = f"{self.cgroup_root}/{name}"
                os.makedirs(cg)
            h = Host(name, self.root, cgroup=cg, log_level=self.log_level)
            h.write_config(controllers)
            self.hosts.append(h)
        self.a, self.b = self.hosts
        # A probes QEMU's capabilities (seconds per binary under TCG); B starts from a copy of
        # A's capabilities cache (libvirt validates it), which is faster than both probing at once.
        deadline = time.monotonic() + self.start_timeout
        self.a.start()
        self.a.wait_ready(deadline)
        self._share_caps_cache()
        self.b.start()
        self.b.wait_ready(deadline)

    def _share_caps_cache(self):
        src = self.a.host_path("/var/cache/libvirt/qemu/capabilities")
        dst = self.b.host_path("/var/cache/libvirt/qemu/capabilities")
        os.makedirs(dst, exist_ok=True)
        for f in os.listdir(src) if os.path.isdir(src) else ():
            if not os.path.exists(os.path.join(dst, f)):
                shutil.copy2(os.path.join(src, f), os.path.join(dst, f))

    def emulator(self, mem_kib=RAM_KIB):
        """Path of the <emulator> wrapper forcing guest RAM to exactly mem_kib KiB (written once)."""
        path = f"{self.root}/bin/qemu-wrap-{mem_kib}k"
        if not os.path.exists(path):
            with open(path + ".tmp", "w") as f:
                f.write(WRAPPER.replace("@KIB@", str(int(mem_kib))).replace("@QEMU@", QEMU))
            os.chmod(path + ".tmp", 0o755)
            os.rename(path + ".tmp", path)
        return path

    def warm_up(self, emulator, timeout=60):
        """Makes A probe `emulator`'s capabilities now and B reuse them (else the first domain on
        each host pays a probe: seconds under TCG; the first migration to B too)."""
        for h in self.hosts:
            h.virsh("domcapabilities", "--emulatorbin", emulator, "--virttype", "qemu", timeout=timeout)
            if h is self.a:
                self._share_caps_cache()

    def proxy(self, host, listen_path, connect_path, timeout=10):
        """Starts a UnixProxy in `host`'s namespace; stopped by close() at the latest."""
        p = UnixProxy(host, listen_path, connect_path, f"{self.root}/proxy-{len(self.proxies)}.log",
                      os.path.abspath(__file__), timeout)
        self.proxies.append(p)
        return p

    def close(self):
        problems = []
        for p in self.proxies:
            p.stop()
        for h in self.hosts:
            try:
                problems += h.stop()
            except Exception as e:
                problems.append(f"host {h.name}: {e}")
        if self.cgroup_root:
            _remove_cgroup_tree(self.cgroup_root)
            if os.path.exists(self.cgroup_root):
                problems.append(f"cgroup {self.cgroup_root} left behind")
        if self.root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        self.hosts = []
        if problems:
            print("libvirt_hosts cleanup:", "; ".join(problems), file=sys.stderr)


# ----- the domain -------------------------------------------------------------------------------
def kernel_cmdline(wss_mib=64, rate_mib=0, append=""):
    """The kernel command line rdmig_testlib.Guest boots the built-in guest with."""
    return f"console=ttyS0 quiet panic=-1 rdmig.wss={wss_mib} rdmig.rate={rate_mib} {append}".strip()


def serial_log_path(name):
    """Default in-host path of the domain's serial log (private per host, same string in both)."""
    return f"/var/log/libvirt/qemu/{name}-serial0.log"


def console_socket_path(name):
    """Default in-host path of the domain's serial console socket."""
    return f"/var/lib/libvirt/qemu/{name}-serial0.sock"


def domain_xml(name, mem_kib, guest_dir, serial_log=None, wss_mib=64, rate_mib=0, append="",
               cmdline=None, shared_memory=True, emulator=None, console_socket=None, vcpus=1):
    """A TCG (type='qemu') q35 domain booting the built-in guest by direct kernel boot.

    serial_log / console_socket: in-host paths (default serial_log_path(name) and
    console_socket_path(name)): serial 0 is a unix socket (bind mode) whose output is also logged
    to serial_log. cmdline overrides the kernel command line built from wss_mib/rate_mib/append.
    emulator: the <emulator> (use TwoHosts.emulator(mem_kib) to keep the RAM size exact)."""
    guest_dir = os.path.abspath(guest_dir)  # QEMU runs with another working directory
    serial_log = serial_log or serial_log_path(name)
    console_socket = console_socket or console_socket_path(name)
    cmdline = cmdline if cmdline is not None else kernel_cmdline(wss_mib, rate_mib, append)
    backing = ("  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>\n"
               if shared_memory else "")
    emu = f"    <emulator>{escape(emulator)}</emulator>\n" if emulator else ""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='KiB'>{int(mem_kib)}</memory>
  <currentMemory unit='KiB'>{int(mem_kib)}</currentMemory>
{backing}  <vcpu placement='static'>{int(vcpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(guest_dir)}/vmlinuz</kernel>
    <initrd>{escape(guest_dir)}/initrd.gz</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{emu}    <controller type='usb' model='none'/>
    <serial type='unix'>
      <source mode='bind' path={quoteattr(console_socket)}/>
      <log file={quoteattr(serial_log)} append='off'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def define_and_start(host, xml):
    """virsh define + start (a persistent domain, which survives migrating away as inactive)."""
    path = os.path.join(host.dir, "domain.xml")
    with open(path, "w") as f:
        f.write(xml)
    host.virsh("define", path)
    name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
    r = host.virsh("start", name, check=False)
    if r.returncode != 0:
        raise HostError(f"host {host.name}: virsh start {name}: {r.stderr.strip()}\n" + host.logs(name))
    return name


def ram_file(host, dom):
    """In-host path of the domain's RAM file (/var/lib/libvirt/qemu/ram/<id>-<name>/<block>); read
    it from the root namespace at host.host_path(ram_file(host, dom))."""
    ram_dir = f"/var/lib/libvirt/qemu/ram/{host.domain_id(dom)}-{dom[:20]}"
    try:
        files = sorted(os.listdir(host.host_path(ram_dir)))
    except FileNotFoundError:
        raise HostError(f"host {host.name}: no RAM directory {ram_dir} for {dom}\n" + host.logs(dom))
    if not files:
        raise HostError(f"host {host.name}: RAM directory {ram_dir} of {dom} is empty")
    return f"{ram_dir}/{files[0]}"


def wait_console(serial_log, marker, deadline, alive=None):
    """Waits until the serial log file (a root-namespace path) has a whole line containing `marker`;
    returns that line from the marker on. deadline: a time.monotonic() value. alive: optional
    callable; when it returns False the wait fails at once (the guest is gone)."""
    while True:
        try:
            with open(serial_log, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        at = data.find(marker.encode())
        if at >= 0 and data.find(b"\n", at) >= 0:
            return data[at:data.index(b"\n", at)].decode(errors="replace").rstrip("\r")
        if alive is not None and not alive():
            raise HostError(f"guest gone before '{marker}'; serial log:\n"
                            + data[-2000:].decode(errors="replace"))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no '{marker}' in {serial_log} in time; serial log:\n"
                               + data[-2000:].decode(errors="replace"))
        time.sleep(0.05)  # polling interval for the serial log


def console(host, dom, timeout=20, console_socket=None):
    """rdmig_testlib.Console on the domain's serial socket (to type "verify" and read the reply)."""
    path = host.host_path(console_socket or console_socket_path(dom))
    return t.Console(path, time.monotonic() + timeout)


def migrate(src, dst, dom, migrateuri, extra=(), p2p=True, timeout=300):
    """virsh -c SRC migrate --live [--p2p] --persistent DOM DST --migrateuri URI [extra];
    returns (seconds, `domjobinfo --completed` of the source as a dict). The source domain must be
    persistent (define_and_start) for domjobinfo --completed to answer after it left."""
    start = time.monotonic()
    r = src.virsh("migrate", "--live", *(["--p2p"] if p2p else []), "--persistent", dom, dst.uri,
                  "--migrateuri", migrateuri, *extra, check=False, timeout=timeout)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise HostError(f"migration of {dom} {src.name}->{dst.name} failed: {r.stderr.strip()}\n"
                        + src.logs(dom) + dst.logs(dom))
    info = {}
    j = src.virsh("domjobinfo", dom, "--completed", check=False)
    for line in j.stdout.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return took, info


# ----- the unix-socket proxy --------------------------------------------------------------------
class UnixProxy:
    """A proxy process in `host`'s mount namespace: listens on listen_path (an in-host path) and
    forwards each connection to connect_path (a path valid in that namespace, e.g.
    other.host_path("/run/rdmig/x.sock")). Its log lists each connection's byte counts."""

    def __init__(self, host, listen_path, connect_path, log_path, script, timeout=10):
        self.host = host
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = host.popen(["python3", script, "proxy", listen_path, connect_path],
                               stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        deadline = time.monotonic() + timeout
        while "listening" not in open(log_path).read():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise HostError(f"host {host.name}: proxy on {listen_path} did not start: "
                                + open(log_path).read())
            time.sleep(0.02)  # polling interval for the proxy's first line

    def output(self):
        return open(self.log_path).read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _proxy_main(listen_path, connect_path):
    if os.path.exists(listen_path):
        os.unlink(listen_path)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(listen_path)
    srv.listen(16)
    print(f"listening on {listen_path} -> {connect_path}", flush=True)
    n = 0

    def pump(a, b, counter, i):
        try:
            if hasattr(os, "splice"):  # zero-copy through a pipe
                r, w = os.pipe()
                try:
                    fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
                except OSError:
                    pass
                try:
                    while True:
                        n = os.splice(a.fileno(), w, 1 << 20)
                        if n == 0:
                            break
                        counter[i] += n
                        while n:
                            n -= os.splice(r, b.fileno(), n)
                finally:
                    os.close(r)
                    os.close(w)
            else:
                while True:
                    data = a.recv(1 << 20)
                    if not data:
                        break
                    b.sendall(data)
                    counter[i] += len(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve(c, n):
        start = time.monotonic()
        try:
            up = t._retry_connect(connect_path, time.monotonic() + 10, "proxy target")
        except TimeoutError as e:
            print(f"conn {n}: {e}", flush=True)
            c.close()
            return
        counter = [0, 0]
        th = [threading.Thread(target=pump, args=(c, up, counter, 0)),
              threading.Thread(target=pump, args=(up, c, counter, 1))]
        for x in th:
            x.start()
        for x in th:
            x.join()
        c.close()
        up.close()
        print(f"conn {n}: {counter[0]} bytes forward, {counter[1]} bytes back, "
              f"{time.monotonic() - start:.2f} s", flush=True)

    while True:
        c, _ = srv.accept()
        n += 1
        threading.Thread(target=serve, args=(c, n), daemon=True).start()


# ----- the <emulator> wrapper -------------------------------------------------------------------
WRAPPER = r'''#!/usr/bin/python3
# Written by libvirt_hosts.py. libvirt rounds <memory> up to whole MiB; QEMU 7.2 TCG migration
# breaks for RAM sizes that are multiples of 256 KiB. Rewrites -m and the main RAM backend's size
# to exactly @KIB@ KiB, then execs QEMU. Capability probes (no -m) pass through unchanged.
import json, os, sys

KIB = @KIB@
QEMU = "@QEMU@"
args = sys.argv[1:]


def size_bytes(v, unit=1):
    """QEMU size syntax; a bare number counts in `unit` (MiB for -m, bytes for -object)."""
    v = str(v)
    mult = {"k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20, "g": 1 << 30, "G": 1 << 30}
    if v and v[-1] in mult:
        return int(v[:-1]) * mult[v[-1]]
    return int(v) * unit


def ok(old_bytes):  # only a rounded-up size within one MiB above the wanted one
    return KIB * 1024 <= old_bytes < KIB * 1024 + (1 << 20)


backend = None
for i, a in enumerate(args[:-1]):
    if a == "-machine":
        for part in args[i + 1].split(","):
            if part.startswith("memory-backend="):
                backend = part.split("=", 1)[1]
notes = []
out = []
i = 0
while i < len(args):
    a = args[i]
    v = args[i + 1] if i + 1 < len(args) else None
    if a == "-m" and v is not None:
        parts = v.split(",")
        for j, p in enumerate(parts):
            if "=" not in p or p.startswith("size="):
                old = p.split("=", 1)[-1]
                if ok(size_bytes(old, 1 << 20)):
                    parts[j] = ("size=" if "=" in p else "") + f"{KIB}k"
        notes.append(f"-m {v} -> {','.join(parts)}")
        out += [a, ",".join(parts)]
        i += 2
        continue
    if a == "-object" and v is not None and backend:
        if v.startswith("{"):
            o = json.loads(v)
            if o.get("id") == backend and "size" in o and ok(size_bytes(o["size"])):
                notes.append(f"{backend} size {o['size']} -> {KIB * 1024}")
                o["size"] = KIB * 1024
                v = json.dumps(o, separators=(",", ":"))
        else:
            parts = v.split(",")
            if f"id={backend}" in parts:
                for j, p in enumerate(parts):
                    if p.startswith("size=") and ok(size_bytes(p[5:])):
                        notes.append(f"{backend} {p} -> size={KIB}k")
                        parts[j] = f"size={KIB}k"
                v = ",".join(parts)
        out += [a, v]
        i += 2
        continue
    out.append(a)
    i += 1
if notes:
    sys.stderr.write("rdmig emulator wrapper: " + "; ".join(notes) + "\n")
    sys.stderr.flush()
os.execv(QEMU, [QEMU] + out)
'''


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "proxy":
        _proxy_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
