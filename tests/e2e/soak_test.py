#!/usr/bin/env python3
"""Soak: back-to-back live migrations of the built-in guest into one long-lived `rdmig agent`.

The guest migrates on and on: each migration's destination becomes the next one's source (a fresh
destination QEMU each time), alternating direct and staged mode, the guest dirtying memory all
along. Every migration's memory is verified page by page (source paused vs destination before it
runs), and the guest's own check runs on the last one. The agent writes its own footprint after
each migration (open descriptors, resident memory, mappings); after a warm-up none of them may
grow: descriptors and mappings not at all, RSS by less than 8 MiB over the whole run.

    soak_test.py RDMIG GUEST_DIR [RUNS] [--json FILE]"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import rdmig_testlib as t  # noqa: E402

WARMUP = 3
RSS_SLACK_KIB = 8 * 1024


def main():
    rdmig, guest_dir = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    out_json = None
    if "--json" in rest:
        i = rest.index("--json")
        out_json = rest[i + 1]
        del rest[i:i + 2]
    runs = int(rest[0]) if rest else 50
    work = tempfile.mkdtemp(prefix="rdmig-soak-")
    agent = None
    guests = []
    started = time.monotonic()
    try:
        subprocess.run([rdmig, "keygen", f"{work}/key"], check=True, capture_output=True)
        port = t.free_port()
        agent = t.Endpoint([rdmig, "agent", "--listen", f"127.0.0.1:{port}", "--transport", "tcp",
                            "--key-file", f"{work}/key", "--allow", work, "--allow", "/dev/shm",
                            "--log-json", f"{work}/agent.jsonl"], f"{work}/agent.log")
        agent.wait_line("listening on", 20)
        src = t.Guest(guest_dir, "g0", wss_mib=64, rate_mib=10, workdir=work)
        guests.append(src)
        src.wait_ready()
        src.console.expect("HB t=", 10)
        totals = []
        for n in range(1, runs + 1):
            mode = "direct" if n % 2 else "staged"
            dst = t.Guest(guest_dir, f"g{n}", wss_mib=64, rate_mib=10, incoming="defer",
                          workdir=work)
            guests.append(dst)
            sock = f"{work}/in{n}.sock"
            args = [rdmig, "migrate", "--source-qmp", src.qmp2_path, "--dest-qmp", dst.qmp2_path,
                    "--to", f"127.0.0.1:{port}", "--key-file", f"{work}/key",
                    "--dest-incoming", f"unix:{sock}", "--dest-socket", sock, "--transport", "tcp",
                    "--json", f"{work}/m{n}.json", "--paused"]
            if mode == "direct":
                args += ["--dest-ram-file", f"mem0={dst.ram_path}"]
            m = subprocess.run(args, capture_output=True, text=True, timeout=300)
            if m.returncode != 0:
                raise RuntimeError(f"migration {n} failed: {m.stderr[-2000:]}\nagent: "
                                   + open(f"{work}/agent.log").read()[-2000:])
            report = json.load(open(f"{work}/m{n}.json"))
            assert report["mode"] == mode, report
            differ = t.compare_ram(src.ram_path, dst.ram_path)
            if differ:
                raise RuntimeError(f"migration {n} ({mode}): {differ} pages differ")
            src.close()
            guests.remove(src)
            dst.qmp.execute("cont")
            dst.console.expect("HB t=", 30)
            totals.append(report["total_ms"])
            print(f"migration {n:2d} {mode:6s} total {report['total_ms']:6.0f} ms, memory identical",
                  flush=True)
            src = dst
        verdict = src.verify()
        print("last destination's self-check:", verdict.strip())
        assert "OK" in verdict and b"CORRUPT" not in src.console.everything, verdict
        # The agent has logged each migration by now (it logs before it takes the next source).
        deadline = time.monotonic() + 10
        while True:
            lines = [json.loads(x) for x in open(f"{work}/agent.jsonl")]
            if len(lines) >= runs or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # polling interval for the agent's log
        assert len(lines) == runs, f"agent logged {len(lines)} of {runs} migrations"
        assert all(x["outcome"] == "completed" for x in lines), [x for x in lines
                                                                 if x["outcome"] != "completed"]
        base = lines[min(WARMUP, runs) - 1]
        last = lines[-1]
        fds = [x["fds"] for x in lines]
        maps = [x["mappings"] for x in lines]
        rss = [x["rss_kib"] for x in lines]
        print(f"agent after migration {base['session']}: {base['fds']} fds, {base['mappings']} "
              f"mappings, RSS {base['rss_kib']} KiB; after migration {last['session']}: "
              f"{last['fds']} fds, {last['mappings']} mappings, RSS {last['rss_kib']} KiB "
              f"(max after warm-up: {max(fds[WARMUP - 1:])} fds, {max(maps[WARMUP - 1:])} "
              f"mappings, {max(rss[WARMUP - 1:])} KiB)")
        totals.sort()
        summary = {"runs": runs, "fds": fds, "mappings": maps, "rss_kib": rss,
                   "median_total_ms": totals[len(totals) // 2],
                   "seconds": time.monotonic() - started}
        if out_json:
            with open(out_json, "w") as f:
                json.dump(summary, f, indent=1)
        assert max(fds[WARMUP - 1:]) <= base["fds"], f"descriptors grew: {fds}"
        assert max(maps[WARMUP - 1:]) <= base["mappings"], f"mappings grew: {maps}"
        assert max(rss[WARMUP - 1:]) - base["rss_kib"] < RSS_SLACK_KIB, f"RSS grew: {rss}"
        print(f"soak: {runs} migrations, all memory identical, no growth "
              f"({time.monotonic() - started:.0f} s)")
        return 0
    finally:
        for g in guests:
            g.close()
        if agent:
            agent.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
