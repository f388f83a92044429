#!/usr/bin/env python3
"""libvirt domains migrated through rdmig, between two real libvirt daemons standing for two hosts.

Two libvirtd (libvirt_hosts.TwoHosts: own mount namespaces, run/state directories, sockets, host
UUIDs and cgroup trees) run a TCG domain booting the built-in guest with file-backed shared RAM
(512 MiB - 8 KiB, dirtying 60 MiB/s over 64 MiB). Each host runs an `rdmig agent`. Cases, in order:

1. `rdmig check-domain` says direct mode for it, and for a domain without shared memory names the
   XML to add (exit 1).
2. A source with the wrong key: refused by the agent with the reason; the domain keeps running on A,
   nothing is left on B. Then two migrations broken once the vCPU quota throttles the guest: Ctrl-C
   (SIGINT) to `rdmig migrate`, and the destination's agent SIGKILLed: each exits 1 with the reason,
   the domain runs on A with libvirt's own quota back, nothing is left on B.
3. A -> B with `rdmig migrate --domain --paused` (driven from A): direct mode, the agent maps the
   domain's RAM file through libvirt; the source's final RAM (kept by a hard link) equals the paused
   destination's page by page; resumed, the guest's own check passes.
4. B -> A (driven from B) over a link held to 40 MiB/s: the guest dirties faster than that, so the
   controller throttles through libvirt's vCPU quota; the blackout is measured from libvirt's
   events; A's vCPU quota is its own again (unlimited).
5. A -> B four times, hurt by RDMIG_FAULT hooks that can make a destination QEMU believe it is done
   (the stream cut after an early EOF byte, at a record boundary, inside the device-state tail; a
   page lost on a lane): each exits 1, the report names A as where the domain runs, nothing runs on
   B, the heartbeat goes on.
6. A -> B with B's agent failing 2 s after B's QEMU loaded the whole stream and said SHUT
   (RDMIG_FAULT=fail-after-load:2000): rdmig holds that SHUT, so A's QEMU fails its migration and
   libvirt resumes nothing on B: exit 1, the domain runs on A; then the guest's check passes on A.

    libvirt_migrate_test.py RDMIG GUEST_DIR"""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import libvirt_hosts as L  # noqa: E402
import rdmig_testlib as t  # noqa: E402  (libvirt_hosts puts tests/lib on the path)

NAME = "rdmig-lv"
# Case 5: RDMIG_FAULT values for `rdmig migrate --domain`, and what its error must say.
LIBVIRT_FAULTS = [("early-eof:16000000", "early-eof"),
                  ("cut-stream:0:16000000", "before QEMU's end of stream (between sections"),
                  ("cut-stream:1:200", "before QEMU's end of stream (device state tail"),
                  ("tcp-drop-page:1:3000", "lane 1 landed")]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def start_agent(host, rdmig, root, key, fault=None):
    """`rdmig agent` on `host`; `fault`: its RDMIG_FAULT (a test-only hook)."""
    port = t.free_port()
    log = f"{root}/agent-{host.name}{'-fault' if fault else ''}.log"
    proc = host.popen([rdmig, "agent", "--listen", f"127.0.0.1:{port}", "--transport", "tcp",
                       "--key-file", key, "--log-json", f"{root}/agent-{host.name}.jsonl"],
                      stdout=open(log, "w"), stderr=subprocess.STDOUT,
                      env=dict(os.environ, RDMIG_FAULT=fault) if fault else None)
    deadline = time.monotonic() + 20
    while "listening on" not in open(log).read():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"agent on {host.name} did not start: {open(log).read()}")
        time.sleep(0.05)  # polling interval for the agent's first line
    return proc, port, log


def migrate(src, dst, rdmig, port, key, out, extra=(), env=None):
    """rdmig migrate --domain, run inside the source host's namespace."""
    return src.run([rdmig, "migrate", "--domain", NAME, "--connect", src.uri, "--dest-uri", dst.uri,
                    "--to", f"127.0.0.1:{port}", "--key-file", key, "--transport", "tcp",
                    "--json", out, *extra], check=False, timeout=300, env=env)


def interrupted(src, dst, rdmig, port, key, root, fault):
    """A migration A -> B over 20 MiB/s (the guest out-dirties it, so the vCPU quota throttles it),
    broken by `fault()` once the throttle is in force. Returns rdmig's stderr; checks that the
    domain runs on A with libvirt's own quota, and nothing is left on B."""
    quota_file = f"{src.domain_cgroup(NAME)}/vcpu0/cpu.cfs_quota_us"
    home = open(quota_file).read().strip()
    p = src.popen([rdmig, "migrate", "--domain", NAME, "--connect", src.uri, "--dest-uri", dst.uri,
                   "--to", f"127.0.0.1:{port}", "--key-file", key, "--transport", "tcp",
                   "--max-bandwidth", "20M/s", "--json", f"{root}/cut.json"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while open(quota_file).read().strip() == home:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the migration was never throttled: " + p.communicate()[1][-1500:])
            time.sleep(0.05)  # polling interval for the vCPU quota
        fault(p)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check(p.returncode == 1, f"rdmig migrate exits 1: {err.strip().splitlines()[-1][:300]}")
    check(src.domstate(NAME).startswith("running"), f"the domain runs on A ({src.domstate(NAME)})")
    check(NAME not in dst.domains(True), "nothing left on B")
    check(open(quota_file).read().strip() == home, f"A's vCPU quota is libvirt's again ({home})")
    return err


def agent_lines(path, n, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in open(path)] if os.path.exists(path) else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)  # polling interval for the agent's log


def main(rdmig, guest_dir):
    start = time.monotonic()
    agents = []
    ok = False
    hs = L.TwoHosts()
    try:
        with hs:
            a, b = hs.a, hs.b
            root = hs.root
            key = f"{root}/rdmig.key"
            subprocess.run([rdmig, "keygen", key], check=True, capture_output=True)
            emu = hs.emulator(L.RAM_KIB)
            hs.warm_up(emu)
            xml = L.domain_xml(NAME, L.RAM_KIB, guest_dir, wss_mib=64, rate_mib=60, emulator=emu)
            L.define_and_start(a, xml)
            src_log = a.host_path(L.serial_log_path(NAME))
            L.wait_console(src_log, "RDMIG-READY", time.monotonic() + 120,
                           alive=lambda: a.is_active(NAME))
            L.wait_console(src_log, "HB t=", time.monotonic() + 15)
            print(f"hosts and guest up in {time.monotonic() - start:.0f} s", flush=True)

            # 1. check-domain.
            c = subprocess.run([rdmig, "check-domain", NAME, "--connect", a.uri],
                               capture_output=True, text=True)
            check(c.returncode == 0 and "direct mode" in c.stdout, f"check-domain: {c.stdout.strip()}")
            plain = L.domain_xml("rdmig-plain", L.RAM_KIB, guest_dir, shared_memory=False,
                                 emulator=emu)
            with open(f"{root}/plain.xml", "w") as f:
                f.write(plain)
            a.virsh("define", f"{root}/plain.xml")
            c = subprocess.run([rdmig, "check-domain", "rdmig-plain", "--connect", a.uri],
                               capture_output=True, text=True)
            check(c.returncode == 1 and "<access mode='shared'/>" in c.stdout
                  and "<source type='file'/>" in c.stdout,
                  "check-domain names the XML a private-memory domain needs")
            a.virsh("undefine", "rdmig-plain")

            agent_a, port_a, _ = start_agent(a, rdmig, root, key)
            agent_b, port_b, log_b = start_agent(b, rdmig, root, key)
            agents += [agent_a, agent_b]

            # 2. The wrong key: refused, nothing lost, nothing left.
            wrong = f"{root}/wrong.key"
            subprocess.run([rdmig, "keygen", wrong], check=True, capture_output=True)
            m = migrate(a, b, rdmig, port_b, wrong, f"{root}/m0.json")
            check(m.returncode == 1 and "key" in m.stderr,
                  "a source with another key is refused: " + m.stderr.strip().splitlines()[-1][:200])
            check(a.domstate(NAME).startswith("running"), f"source still {a.domstate(NAME)}")
            check(NAME not in b.domains(True), f"nothing left on B: {b.domains(True)}")
            L.wait_console(src_log, "HB t=", time.monotonic() + 15)

            # 2b. Ctrl-C while throttled: the job is aborted, the throttle released.
            err = interrupted(a, b, rdmig, port_b, key, root, lambda p: p.send_signal(signal.SIGINT))
            check("cancelled on SIGINT" in err, "the error says it was cancelled on SIGINT")
            # 2c. The destination's agent killed mid-migration: libvirt's migration fails, the
            # source keeps running; a new agent takes the next migration (case 3).
            err = interrupted(a, b, rdmig, port_b, key, root, lambda p: agent_b.kill())
            check("rdmig" in err, "the error carries rdmig's account")
            agent_b.wait()
            check("refused a source" in open(log_b).read(), "the first agent on B logged the refused key")
            agent_b, port_b, log_b = start_agent(b, rdmig, root, key)
            agents.append(agent_b)
            L.wait_console(src_log, "HB t=", time.monotonic() + 15)

            # 3. A -> B, destination left paused: memory compared page by page.
            keep = f"{root}/source-final.ram"
            os.link(a.host_path(L.ram_file(a, NAME)), keep)  # outlives the source QEMU
            m = migrate(a, b, rdmig, port_b, key, f"{root}/m1.json", ["--paused"])
            print(m.stdout.strip(), flush=True)
            check(m.returncode == 0, "A -> B through rdmig: " + m.stderr[-1500:])
            r1 = json.load(open(f"{root}/m1.json"))
            check(r1["outcome"] == "completed" and r1["mode"] == "direct"
                  and r1["destination"] == "paused", f"report: mode {r1['mode']}, destination paused")
            lines = agent_lines(f"{root}/agent-B.jsonl", 2)
            check([x["outcome"] for x in lines] == ["failed", "completed"]
                  and "pc.ram 536862720 (direct)" in lines[1]["layout"],
                  f"agents on B: the cancelled migration failed, then landed {lines[-1].get('layout')}")
            check(a.domstate(NAME).startswith("shut off") and b.domstate(NAME).startswith("paused"),
                  f"A: {a.domstate(NAME)}, B: {b.domstate(NAME)}")
            differ = t.compare_ram(keep, b.host_path(L.ram_file(b, NAME)))
            check(differ == 0, f"{differ} of {t.RAM_BYTES // 4096} pages differ, source vs destination")
            os.unlink(keep)
            con = L.console(b, NAME)
            b.virsh("resume", NAME)
            con.send("verify\n")
            verdict = con.expect("VERIFY ", 90)
            check(verdict.startswith("VERIFY OK"), f"guest on B: {verdict}")
            con.expect("HB t=", 15)
            con.sock.close()  # a console nobody reads would hold the guest's serial output

            # 4. B -> A over a 40 MiB/s link: throttled through libvirt's vCPU quota.
            m = migrate(b, a, rdmig, port_a, key, f"{root}/m2.json", ["--max-bandwidth", "40M/s"])
            print(m.stdout.strip(), flush=True)
            check(m.returncode == 0, "B -> A through rdmig: " + m.stderr[-1500:])
            r2 = json.load(open(f"{root}/m2.json"))
            check(r2["outcome"] == "completed" and r2["mode"] == "direct"
                  and r2["throttle_actuator"] == "libvirt-quota",
                  f"report: mode {r2['mode']}, actuator {r2['throttle_actuator']}")
            check(r2["blackout_ms"] is not None and r2["blackout_ms"] > 0,
                  f"blackout {r2['blackout_ms']:.0f} ms (libvirt events), libvirt's own "
                  f"{r2.get('libvirt_downtime_ms')} ms, peak throttle {r2['peak_throttle_pct']:.0f}%, "
                  f"{r2['passes']} passes, total {r2['total_ms']:.0f} ms")
            check(r2["peak_throttle_pct"] > 0, "the controller throttled the guest")
            check(a.domstate(NAME).startswith("running"), f"A: {a.domstate(NAME)}")
            sched = a.virsh("schedinfo", NAME, "--live").stdout
            quota = [ln.split(":")[1].strip() for ln in sched.splitlines()
                     if ln.startswith("vcpu_quota")]
            check(quota and int(quota[0]) < 0, f"A's vCPU quota is unlimited again ({quota})")
            a_log = a.host_path(L.serial_log_path(NAME))
            seen = len(open(a_log, "rb").read())
            deadline = time.monotonic() + 30
            while b"HB t=" not in open(a_log, "rb").read()[seen:]:
                if time.monotonic() > deadline:
                    print("B's serial log ends:", open(b.host_path(L.serial_log_path(NAME)), "rb").read()[-400:])
                    print("status on A:", a.qmp(NAME, "query-status"))
                    print(a.hmp(NAME, "info registers")[:400])
                    raise TimeoutError("no heartbeat on A after the migration; serial log ends: "
                                       + repr(open(a_log, "rb").read()[-600:]))
                time.sleep(0.1)  # polling interval for the serial log
            check(True, "the guest's heartbeat goes on on A")

            # 5. A -> B hurt by test-only RDMIG_FAULT hooks that can make a destination QEMU
            # believe it is done: the stream cut right after a well-formed QEMU_VM_EOF byte, at a
            # record boundary, inside the device-state tail, and a page lost on a lane. rdmig's
            # failure reaches libvirt before its Finish phase resumes anything: each time the
            # domain runs on A only, the report names A, and nothing runs on B.
            for fault, says in LIBVIRT_FAULTS:
                out = f"{root}/m-{fault.split(':')[0]}.json"
                m = migrate(a, b, rdmig, port_b, key, out, env=dict(os.environ, RDMIG_FAULT=fault))
                r3 = json.load(open(out))
                check(m.returncode == 1 and says in m.stderr,
                      f"{fault}: rdmig migrate exits {m.returncode}: "
                      f"{m.stderr.strip().splitlines()[-1][:300]}")
                check(r3["guest_runs"] == "source" and r3["domain_runs_on"] == a.uri,
                      f"{fault}: the report says the domain runs on {r3.get('domain_runs_on')} "
                      f"(source {r3.get('source_state')}, destination {r3.get('destination_state')})")
                check(a.domstate(NAME).startswith("running"), f"{fault}: A: {a.domstate(NAME)}")
                # B keeps the inactive definition of case 3's persistent migration, nothing runs.
                check(NAME not in b.domains() and b.domstate(NAME).startswith("shut off"),
                      f"{fault}: nothing runs on B: {b.domstate(NAME)}")
                seen = len(open(a_log, "rb").read())
                t.wait_until(f"a heartbeat on A after {fault}",
                             lambda: b"HB t=" in open(a_log, "rb").read()[seen:], 30)
            # 6. B's agent fails 2 s after B's QEMU loaded the whole stream and said SHUT
            # (RDMIG_FAULT=fail-after-load:2000, a slow check that fails): only rdmig's hold on that
            # SHUT keeps A's QEMU, and so libvirt, from completing the migration and resuming the
            # domain on B meanwhile.
            agent_b.kill()
            agent_b.wait()
            agent_f, port_f, log_f = start_agent(b, rdmig, root, key, fault="fail-after-load:2000")
            agents.append(agent_f)
            m = migrate(a, b, rdmig, port_f, key, f"{root}/m-after-load.json")
            r4 = json.load(open(f"{root}/m-after-load.json"))
            check(m.returncode == 1 and "fail-after-load" in m.stderr,
                  f"fail-after-load: rdmig migrate exits {m.returncode}: "
                  f"{m.stderr.strip().splitlines()[-1][:300]}")
            check("SHUT passed on" in open(log_f).read(), "B's QEMU had loaded and said SHUT")
            check(r4["guest_runs"] == "source" and r4["domain_runs_on"] == a.uri
                  and a.domstate(NAME).startswith("running"),
                  f"fail-after-load: the domain runs on {r4.get('domain_runs_on')} "
                  f"(A: {a.domstate(NAME)}, B: {b.domstate(NAME)})")
            check(NAME not in b.domains(), f"nothing runs on B: {b.domstate(NAME)}")
            seen = len(open(a_log, "rb").read())
            t.wait_until("a heartbeat on A after fail-after-load",
                         lambda: b"HB t=" in open(a_log, "rb").read()[seen:], 30)

            con = L.console(a, NAME)
            con.send("verify\n")
            try:
                verdict = con.expect("VERIFY ", 90)
            except Exception:
                print("A's serial log ends:", open(a_log, "rb").read()[-600:])
                raise
            check(verdict.startswith("VERIFY OK"), f"guest on A: {verdict}")
            log = open(a.host_path(L.serial_log_path(NAME)), "rb").read()
            check(b"CORRUPT" not in log and b"CORRUPT" not in con.everything, "no CORRUPT on A")
            ok = True
    except Exception as e:  # the verdict below; TwoHosts has cleaned up by now
        print(f"{type(e).__name__}: {e}", flush=True)
    finally:
        for p in agents:
            if p.poll() is None:
                p.kill()
                p.wait()
    print(f"{'PASS' if ok else 'FAIL'} libvirt_migrate ({time.monotonic() - start:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])))
