#!/usr/bin/env python3
"""Self-test of libvirt_hosts.py: two libvirt hosts, a plain libvirt live migration A -> B.

Starts the built-in guest (512 MiB - 8 KiB, dirtying 5 MiB/s over 64 MiB) on host A, waits for its
ready marker, checks what libvirt gave QEMU (RAM size after the <emulator> wrapper, RAM file path,
RAM block name), puts a CPU quota on it through the cpu cgroup, then migrates it with
`virsh migrate --live --p2p --persistent --suspend ... --migrateuri unix:///run/rdmig/x.sock`:
/run/rdmig is a different directory in each host, so a proxy in A's namespace carries A's
/run/rdmig/x.sock to B's. Oracle: the source's RAM at the end (kept through a hard link to its RAM
file) equals the paused destination's page by page; resumed, the destination guest's own check
passes and its heartbeat goes on, with no CORRUPT line; nothing is left behind afterwards.

    harness_selftest.py [--no-cgroups] [GUEST_DIR]     (GUEST_DIR defaults to build/guest)"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import libvirt_hosts as L  # noqa: E402
import rdmig_testlib as t  # noqa: E402  (libvirt_hosts puts tests/lib on the path)

NAME = "rdmig-selftest"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def leftovers(root, cgroup_root):
    """Processes, files and cgroups a TwoHosts run must not leave behind."""
    left = []
    if os.path.exists(root):
        left.append(root)
    if cgroup_root and os.path.exists(cgroup_root):
        left.append(cgroup_root)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
            except OSError:
                continue
            if root.encode() in cmd or b"guest=" + NAME.encode() in cmd:
                left.append(f"pid {d}: {cmd[:120]!r}")
    return left


def main(guest_dir, cgroups=True):
    for f in ("vmlinuz", "initrd.gz"):
        if not os.path.exists(os.path.join(guest_dir, f)):
            print(f"missing {guest_dir}/{f}: build the guest first")
            return 1
    start = time.monotonic()
    ok = False
    hs = L.TwoHosts(cgroups=cgroups)
    try:
        with hs:
            a, b = hs.a, hs.b
            print(f"hosts up in {time.monotonic() - start:.1f} s: A pid {a.pid}, B pid {b.pid}, root {hs.root}")
            # The layout: /run/rdmig is another directory in each host; each URI works from the
            # other host's namespace (A's libvirtd reaches B's that way in a --p2p migration).
            a.run(["sh", "-c", "echo A > /run/rdmig/whoami"])
            b.run(["sh", "-c", "echo B > /run/rdmig/whoami"])
            seen = [h.run(["cat", "/run/rdmig/whoami"]).stdout.strip() for h in (a, b)]
            check(seen == ["A", "B"] and not os.path.exists("/run/rdmig/whoami"),
                  f"/run/rdmig is private per host ({seen})")
            check(a.run(["virsh", "-c", b.uri, "version"], check=False).returncode == 0 and
                  b.run(["virsh", "-c", a.uri, "version"], check=False).returncode == 0,
                  "each host's URI works from the other's namespace")
            uuids = [h.virsh("capabilities").stdout.split("<uuid>", 1)[1].split("</uuid>", 1)[0]
                     for h in (a, b)]
            check(uuids == [a.host_uuid, b.host_uuid] and uuids[0] != uuids[1], f"host UUIDs {uuids}")

            emu = hs.emulator(L.RAM_KIB)
            t0 = time.monotonic()
            hs.warm_up(emu)
            print(f"capabilities of the wrapper probed in {time.monotonic() - t0:.1f} s")

            xml = L.domain_xml(NAME, L.RAM_KIB, guest_dir, wss_mib=64, rate_mib=5, emulator=emu)
            t0 = time.monotonic()
            L.define_and_start(a, xml)
            src_log = a.host_path(L.serial_log_path(NAME))
            ready = L.wait_console(src_log, "RDMIG-READY", time.monotonic() + 90,
                                   alive=lambda: a.is_active(NAME))
            L.wait_console(src_log, "HB t=", time.monotonic() + 15)
            print(f"guest on A: {ready} ({time.monotonic() - t0:.1f} s after start)")

            # What libvirt gave QEMU, after the wrapper.
            argv = a.qemu_cmdline(NAME)
            m = argv[argv.index("-m") + 1]
            check(m == f"{L.RAM_KIB}k", f"QEMU runs with -m {m}")
            mem_path = a.qmp(NAME, "qom-get", path="/objects/pc.ram", property="mem-path")
            size = a.qmp(NAME, "qom-get", path="/objects/pc.ram", property="size")
            check(size == t.RAM_BYTES, f"pc.ram backend size {size}")
            ram = L.ram_file(a, NAME)
            check(mem_path == ram, f"mem-path {mem_path} is the RAM file")
            blocks = a.hmp(NAME, "info ramblock")
            check(any(ln.split()[:1] == ["pc.ram"] and f"{t.RAM_BYTES:#018x}" in ln
                      for ln in blocks.splitlines()), "RAM block pc.ram, 524280 KiB")
            check(os.path.getsize(a.host_path(ram)) == t.RAM_BYTES, "RAM file readable from the root namespace")

            if cgroups:  # a quota through libvirt lands in A's own cgroup tree
                a.virsh("schedinfo", NAME, "--live", "--set", "vcpu_quota=50000", "vcpu_period=100000")
                quota_file = f"{a.domain_cgroup(NAME)}/vcpu0/cpu.cfs_quota_us"
                check(quota_file.startswith(a.cgroup + "/machine/"), "A's domain is in A's cgroup tree")
                check(open(quota_file).read().strip() == "50000", f"vcpu_quota in {quota_file}")

            # The migration, through a proxy between the two /run/rdmig directories.
            keep = f"{hs.root}/source-final.ram"
            os.link(a.host_path(ram), keep)  # the source's RAM outlives its QEMU
            proxy = hs.proxy(a, "/run/rdmig/x.sock", b.host_path("/run/rdmig/x.sock"))
            took, info = L.migrate(a, b, NAME, "unix:///run/rdmig/x.sock", extra=["--suspend"])
            print(f"virsh migrate took {took:.2f} s; proxy: {proxy.output().strip().splitlines()[-1]}")
            for k in ("Time elapsed", "Total downtime", "Data processed", "Memory bandwidth",
                      "Iteration"):
                if k in info:
                    print(f"  {k}: {info[k]}")
            check(a.domstate(NAME).startswith("shut off"), f"source on A: {a.domstate(NAME)}")
            check(b.domstate(NAME).startswith("paused"), f"destination on B: {b.domstate(NAME)}")
            t0 = time.monotonic()
            differ = t.compare_ram(keep, b.host_path(L.ram_file(b, NAME)))
            check(differ == 0, f"{differ} of {t.RAM_BYTES // 4096} pages differ between source and destination "
                               f"({time.monotonic() - t0:.1f} s to compare)")
            con = L.console(b, NAME)
            b.virsh("resume", NAME)
            con.send("verify\n")
            verdict = con.expect("VERIFY ", 60)
            check(verdict.startswith("VERIFY OK"), f"destination guest: {verdict}")
            hb = con.expect("HB t=", 15)
            check(True, f"destination heartbeat: {hb}")
            dst_log = open(b.host_path(L.serial_log_path(NAME)), "rb").read()
            check(b"CORRUPT" not in dst_log and b"CORRUPT" not in con.everything, "no CORRUPT on B's console")
            if cgroups:
                b_cg = b.domain_cgroup(NAME)
                quota = open(f"{b_cg}/vcpu0/cpu.cfs_quota_us").read().strip()
                check(b_cg.startswith(b.cgroup + "/machine/") and quota == "50000",
                      f"destination in B's own cgroup {b_cg}; the quota moved with it ({quota})")
            ok = True
    except Exception as e:
        print(f"{type(e).__name__}: {e}")
    left = leftovers(hs.root or "/nonexistent", hs.cgroup_root)
    if left:
        print("left behind:", left)
        ok = False
    print(f"{'PASS' if ok else 'FAIL'} libvirt_harness_selftest ({time.monotonic() - start:.1f} s)")
    print(f"{int(ok)} passed, {int(not ok)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-cgroups"]
    sys.exit(main(args[0] if args else
                  os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "guest"),
                  cgroups="--no-cgroups" not in sys.argv[1:]))
