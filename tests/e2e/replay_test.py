#!/usr/bin/env python3
"""Replays captured QEMU 7.2 streams through rdmig send -> TCP lanes -> rdmig receive into a real
destination QEMU, in direct and staged mode, and checks the destination's RAM page by page against
the source guest's final RAM (captured with the stream) and that `rdmig send` parsed every record
(no pass-through). replay() takes the destination's QEMU (tests/e2e/qemu10_test.py replays 10.0's).

    replay_test.py RDMIG GUEST_DIR FIXTURES_DIR"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import rdmig_testlib as t  # noqa: E402


def replay(rdmig, guest_dir, fixture, mode, qemu_uri=None, qemus=None):
    qemus = qemus or t.Qemus()
    work = tempfile.mkdtemp(prefix="rdmig-replay-")
    procs = []
    try:
        with t.Guest(guest_dir, "dst", incoming="defer", paused=True, workdir=work,
                     qemu=qemus.destination, machine=qemus.machine) as dst:
            t.enable_migration_events(dst.qmp)
            uri = qemu_uri or f"unix:{work}/in.sock"
            dst.qmp.execute("migrate-incoming", uri=uri)
            recv = t.start_receive(rdmig, work, uri, mode, dst.ram_path)
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
            passthrough = json.load(open(f"{work}/send.json"))["passthrough"]
            print(f"{os.path.basename(fixture)} {mode}: {differ} pages differ from the source's RAM; "
                  f"pass-through: {passthrough or 'none'}")
            return differ == 0 and not passthrough
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["rm", "-rf", work])


def load_stream_file(guest_dir, stream_path, work, name):
    """Boots a destination QEMU with -incoming "exec:cat FILE" -S; returns its RAM file's copy."""
    with t.Guest(guest_dir, name, incoming=f"exec:cat {stream_path}", paused=True, workdir=work) as g:
        deadline = time.monotonic() + 120
        while g.status() == "inmigrate":  # QMP status until the load ends
            if time.monotonic() > deadline:
                raise TimeoutError("incoming migration from file did not finish")
            time.sleep(0.05)
        if g.status() != "paused":
            raise RuntimeError(f"QEMU did not accept {stream_path}: status {g.status()}")
        copy = f"{work}/{name}.ram"
        subprocess.run(["cp", g.ram_path, copy], check=True)
        return copy


def exec_round_trip(rdmig, guest_dir, fixture):
    """exec: both ends: `rdmig send --from -` < stream, `rdmig receive --to-qemu -` > file (staged);
    QEMU loads the original and the rewritten file; both RAMs must equal the source's."""
    work = tempfile.mkdtemp(prefix="rdmig-exec-")
    recv = None
    try:
        out = f"{work}/rewritten.stream"
        with open(out, "wb") as sink:
            recv = subprocess.Popen([rdmig, "receive", "--listen", "127.0.0.1:0", "--to-qemu", "-",
                                     "--mode", "staged"], stdout=sink, stderr=subprocess.PIPE, text=True)
            line = recv.stderr.readline()
            port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
            with open(fixture, "rb") as stream:
                send = subprocess.run([rdmig, "send", "--to", f"127.0.0.1:{port}", "--from", "-"],
                                      stdin=stream, capture_output=True, text=True, timeout=120)
            if send.returncode != 0 or recv.wait(timeout=60) != 0:
                print("exec round trip failed:", send.stderr, recv.stderr.read())
                return False
        original = load_stream_file(guest_dir, fixture, work, "orig")
        rewritten = load_stream_file(guest_dir, out, work, "rewritten")
        a = t.compare_ram(original, rewritten)
        b = t.compare_ram(fixture + ".ram", rewritten)
        print(f"exec round trip of {os.path.basename(fixture)}: {a} pages differ from QEMU's own load of "
              f"the original stream, {b} from the source's RAM")
        return a == 0 and b == 0
    finally:
        if recv and recv.poll() is None:
            recv.kill()
        subprocess.run(["rm", "-rf", work])


def main(rdmig, guest_dir, fixtures):
    failed = 0
    cases = [(f, m) for f in ("idle.stream", "dirty20.stream") for m in ("direct", "staged")]
    for name, mode in cases:
        start = time.monotonic()
        # One case feeds the destination QEMU over TCP instead of a unix socket.
        uri = f"tcp:127.0.0.1:{t.free_port()}" if (name, mode) == ("idle.stream", "staged") else None
        ok = replay(rdmig, guest_dir, os.path.join(fixtures, name), mode, uri)
        print(f"{'PASS' if ok else 'FAIL'} replay {name} {mode} {uri or 'unix'} "
              f"({time.monotonic() - start:.1f} s)")
        failed += not ok
    for name in ("idle.stream", "dirty20.stream"):
        start = time.monotonic()
        ok = exec_round_trip(rdmig, guest_dir, os.path.join(fixtures, name))
        print(f"{'PASS' if ok else 'FAIL'} exec round trip {name} ({time.monotonic() - start:.1f} s)")
        failed += not ok
    print(f"{len(cases) + 2 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
