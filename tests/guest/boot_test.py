#!/usr/bin/env python3
"""Boots the built-in test guest under QEMU TCG and checks its workload: ready marker, heartbeats,
and a full memory verification on request. Waits on console markers with deadlines, never sleeps a
fixed time, and kills QEMU and removes its files whatever happens."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def wait_for(predicate, deadline, what):
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
    raise TimeoutError(f"timed out waiting for {what}")


class Console:
    def __init__(self, path, deadline):
        self.sock = wait_for(lambda: self._connect(path), deadline, "the serial socket")
        self.sock.settimeout(0.5)
        self.buf = b""
        self.everything = b""  # the whole console output, for checks over all of it

    @staticmethod
    def _connect(path):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            time.sleep(0.05)  # polling interval for the socket to appear, not a wait for the guest
            return None

    def _has_line(self, marker):
        at = self.buf.find(marker.encode())
        return at >= 0 and self.buf.find(b"\n", at) >= 0

    def expect(self, marker, deadline):
        """Returns the first whole console line that contains `marker`, from the marker on."""
        while not self._has_line(marker):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no '{marker}' on the console; last output:\n" +
                                   self.buf[-2000:].decode(errors="replace"))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise RuntimeError("console closed; output:\n" + self.buf[-2000:].decode(errors="replace"))
            self.buf += data
            self.everything += data
        at = self.buf.index(marker.encode())
        line_end = self.buf.find(b"\n", at)
        line = self.buf[at:line_end].decode(errors="replace").rstrip("\r")
        self.buf = self.buf[line_end + 1:]
        return line

    def send(self, text):
        self.sock.sendall(text.encode())


def qmp(path, command):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    json.loads(f.readline())  # greeting
    for cmd in ({"execute": "qmp_capabilities"}, {"execute": command}):
        f.write(json.dumps(cmd) + "\n")
        f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                break
    s.close()
    return reply


def main(guest_dir):
    work = tempfile.mkdtemp(prefix="rdmig-boot-")
    ram = f"/dev/shm/rdmig-boot-{os.getpid()}.ram"
    qemu = None
    try:
        qemu = subprocess.Popen([
            "qemu-system-x86_64", "-accel", "tcg", "-m", "524280K", "-smp", "1",
            "-object", f"memory-backend-file,id=mem0,size=524280K,mem-path={ram},share=on",
            "-machine", "q35,memory-backend=mem0",
            "-kernel", f"{guest_dir}/vmlinuz", "-initrd", f"{guest_dir}/initrd.gz",
            "-append", "console=ttyS0 quiet panic=-1 rdmig.wss=64 rdmig.rate=20",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-qmp", f"unix:{work}/qmp.sock,server=on,wait=off",
            "-chardev", f"socket,id=ser0,path={work}/serial.sock,server=on,wait=off,logfile={work}/serial.log",
            "-serial", "chardev:ser0"], stdout=subprocess.DEVNULL, stderr=open(f"{work}/qemu.err", "w"))
        start = time.monotonic()
        console = Console(f"{work}/serial.sock", start + 10)
        ready = console.expect("RDMIG-READY", start + 120)
        print("guest:", ready, f"({time.monotonic() - start:.1f} s after start)")
        hb1 = console.expect("HB t=", time.monotonic() + 10)
        hb2 = console.expect("HB t=", time.monotonic() + 10)
        print("heartbeats:", hb1, "|", hb2)
        console.send("verify\n")
        verdict = console.expect("VERIFY ", time.monotonic() + 60)
        print("guest self-check:", verdict)
        if not verdict.startswith("VERIFY OK"):
            return 1
        if b"CORRUPT" in console.everything:
            print("guest reported corrupt pages")
            return 1
        qmp(f"{work}/qmp.sock", "quit")
        qemu.wait(timeout=10)
        print("1 passed, 0 failed")
        return 0
    finally:
        if qemu and qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        if os.path.exists(ram):
            os.unlink(ram)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
