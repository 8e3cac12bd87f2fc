#!/usr/bin/env python3
"""Benchmark: a full backfill of N conversations x M messages from the simulator, then a quiet re-sync.

Usage: python3 bench/run.py [--sizes 100x1000,1000x1000,10000x10] [--bin target/release/dm-handoff]
                            [--baseline 100x1000] [--steady 500x20 --ticks 60]

--baseline runs bench/baseline.py (plain Python: urllib + sqlite3) on the same backfill for a ratio.
--steady runs the daemon with a one-second schedule for --ticks ticks while new messages arrive in 2% of
the conversations per tick, once with adaptive polling and once without (same traffic), and reports
credits spent per new message delivered.

Builds nothing: run `cargo build --release` first. Starts `dm-handoff simulate` on a free loopback port
(separate process, so its CPU is visible but not in our RSS), writes a config, runs `dm-handoff sync`,
and reports wall time, messages/s, the sync process's peak RSS (its VmHWM, sampled), the CPU seconds of
the sync and of the simulator, requests and credits the simulator counted, and bytes written. Then it runs a second sync with nothing new, which
shows the steady-state cost of a poll. Numbers vary with the machine; the README quotes one run.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def run_measured(cmd, env):
    """Runs cmd; returns (wall seconds, peak RSS MiB of the child's own program, returncode, stderr).

    Peak RSS is the kernel's high-water mark of the child's address space (VmHWM in /proc/<pid>/status),
    read every 5 ms while it runs. Not getrusage: Python starts children with vfork, and Linux carries
    the parent's RSS into the child's ru_maxrss at exec, so ru_maxrss reports this script's own size
    whenever that is larger (it made the earlier figures of this benchmark read 30-70 MiB too high).
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hwm = [0]

    def sample():
        path = f"/proc/{proc.pid}/status"
        while proc.returncode is None:
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            hwm[0] = max(hwm[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # Read stderr before waiting so a chatty child cannot block on a full pipe.
    err = proc.stderr.read()
    # wait4 for the child's own CPU time (user + system); its times, unlike its maxrss, are its own.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    wall = time.monotonic() - t0
    return wall, hwm[0] / 1024.0, proc.returncode, err, usage.ru_utime + usage.ru_stime


def cpu_seconds(pid):
    """User + system CPU seconds a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


STATE_CACHE = 16 * 1024 * 1024
COMPRESS = "none"


def bench(binary, convs, msgs, workdir):
    scenario = scenario_of(convs, msgs)
    sim, addr = start_sim(binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        cfg = write_config(workdir, addr, peers, "0 * * * * *", f"state_cache_bytes = {STATE_CACHE}\n",
                           f'compress = "{COMPRESS}"\n')
        env = dict(os.environ, BENCH_KEY="xq_bench", RUST_LOG="warn")
        sim_cpu0 = cpu_seconds(sim.pid)
        wall, rss, code, err, cpu = run_measured([binary, "sync", "--config", cfg, "--log-level", "warn"], env)
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu0
        if code != 0:
            sys.exit(f"sync failed ({code}): {err[-2000:]}")
        stats = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        out = os.path.join(workdir, "out")
        nbytes = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
        lines = count_lines(out)
        total = convs * msgs
        assert lines == total, f"expected {total} records, found {lines}"
        wall2, _, code2, _, _ = run_measured([binary, "sync", "--config", cfg, "--log-level", "warn"], env)
        stats2 = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        return {
            "size": f"{convs}x{msgs}",
            "compress": COMPRESS,
            "messages": total,
            "wall_s": round(wall, 2),
            "msgs_per_s": int(total / wall),
            "peak_rss_mib": round(rss, 1),
            # Where the time went: both processes share the machine's cores.
            "cpu_s": round(cpu, 1),
            "sim_cpu_s": round(sim_cpu, 1),
            "requests": stats["requests"],
            "credits": stats["credits"],
            "bytes_written": nbytes,
            "resync_wall_s": round(wall2, 2),
            "resync_requests": stats2["requests"] - stats["requests"],
            "resync_credits": stats2["credits"] - stats["credits"],
            "resync_exit": code2,
        }
    finally:
        sim.terminate()
        sim.wait()


def start_sim(binary, scenario, workdir):
    sc_path = os.path.join(workdir, "scenario.json")
    with open(sc_path, "w") as f:
        json.dump(scenario, f)
    sim = subprocess.Popen([binary, "simulate", "--listen", "127.0.0.1:0", "--scenario", sc_path],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = re.search(r"http://([0-9.:]+)", sim.stdout.readline()).group(1)
    return sim, addr


def write_config(workdir, addr, peers, schedule, top_extra, pipeline_extra):
    """The one pipeline every benchmark syncs, against the simulator at `addr`."""
    cfg = os.path.join(workdir, "pipelines.toml")
    conv_list = ", ".join(f'"{p}"' for p in peers)
    with open(cfg, "w") as f:
        f.write(f"""state_dir = "state"
{top_extra}max_concurrency = 32
[[pipelines]]
name = "bench"
provider = "xquik"
base_url = "http://{addr}/api/v1"
api_key_env = "BENCH_KEY"
account = "bench_account"
conversations = [{conv_list}]
schedule = "{schedule}"
output_dir = "out"
rotate_max_bytes = 67108864
concurrency = 32
{pipeline_extra}""")
    return cfg


def scenario_of(convs, msgs):
    return {
        "seed": 11,
        "page_size": [18, 30],
        "conversations": [
            {"peer_id": str(10_000_000 + i), "messages": msgs, "cursor_style": "offset" if i % 2 else "max_id"}
            for i in range(convs)
        ],
    }


def count_lines(out):
    """Records in an output folder: the lines of its .jsonl files, and for a compressed closed segment the
    count its manifest gives (manifests themselves hold no records)."""
    n = 0
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name.endswith(".jsonl"):
            with open(path, "rb") as fh:
                n += fh.read().count(b"\n")
        elif name.endswith(".manifest.json"):
            with open(path) as fh:
                m = json.load(fh)
            if not m["segment"].endswith(".jsonl"):
                n += m["records"]
    return n


def baseline(binary, convs, msgs, workdir):
    scenario = scenario_of(convs, msgs)
    sim, addr = start_sim(binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [sys.executable, os.path.join(here, "baseline.py"), f"http://{addr}/api/v1", "bench_account",
               os.path.join(workdir, "seen.db"), os.path.join(workdir, "out.jsonl"), *peers]
        wall, rss, code, err, _ = run_measured(cmd, dict(os.environ))
        if code != 0:
            sys.exit(f"baseline failed: {err[-2000:]}")
        lines = sum(1 for _ in open(os.path.join(workdir, "out.jsonl"), "rb"))
        assert lines == convs * msgs, f"baseline wrote {lines}"
        return {"baseline": f"{convs}x{msgs}", "wall_s": round(wall, 2), "msgs_per_s": int(lines / wall),
                "peak_rss_mib": round(rss, 1)}
    finally:
        sim.terminate()
        sim.wait()


def steady(binary, convs, msgs, ticks, adaptive, workdir):
    """Daemon on a 1 s schedule for `ticks` ticks; 2% of conversations get one new message per tick."""
    import random
    import signal
    scenario = scenario_of(convs, msgs)
    sim, addr = start_sim(binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        cfg = write_config(workdir, addr, peers, "* * * * * *", "",
                           f"adaptive_poll_max = \"{'16s' if adaptive else '0'}\"\n")
        env = dict(os.environ, BENCH_KEY="xq_bench", RUST_LOG="warn")
        out = os.path.join(workdir, "out")
        # The initial backfill, so the steady state starts from a synced pipeline.
        subprocess.run([binary, "sync", "--config", cfg], env=env, capture_output=True, check=True)
        before_lines = count_lines(out)
        daemon = subprocess.Popen([binary, "run", "--config", cfg], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        base = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        rng = random.Random(5)
        added = 0
        for _ in range(ticks):
            for peer in rng.sample(peers, max(1, convs // 50)):
                req = urllib.request.Request(f"http://{addr}/_sim/conversations/{peer}/messages",
                                             data=b'{"count":1}', headers={"content-type": "application/json"})
                urllib.request.urlopen(req).read()
                added += 1
            time.sleep(1.0)
        time.sleep(2.0)
        stats = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        delivered = count_lines(out) - before_lines
        credits = stats["credits"] - base["credits"]
        return {"steady": f"{convs}x{msgs}", "adaptive": adaptive, "ticks": ticks, "new_messages": added,
                "delivered_in_window": delivered, "requests": stats["requests"] - base["requests"],
                "credits": credits, "credits_per_new_message": round(credits / max(delivered, 1), 1)}
    finally:
        sim.terminate()
        sim.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100x1000,1000x1000,10000x10")
    ap.add_argument("--bin", default="target/release/dm-handoff")
    ap.add_argument("--baseline", default="")
    ap.add_argument("--steady", default="")
    ap.add_argument("--ticks", type=int, default=60)
    ap.add_argument("--state-cache-mib", type=int, default=16, help="state_cache_bytes for the backfill runs")
    ap.add_argument("--compress", default="none", choices=["none", "zstd", "gzip"],
                    help="the pipeline's compress setting for the backfill runs")
    args = ap.parse_args()
    global STATE_CACHE, COMPRESS
    STATE_CACHE = args.state_cache_mib * 1024 * 1024
    COMPRESS = args.compress
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: run `cargo build --release` first")
    print(f"machine: {os.cpu_count()} cores; {open('/proc/meminfo').readline().split()[1]} kB memory")
    for size in [x for x in args.baseline.split(",") if x]:
        convs, msgs = (int(x) for x in size.lower().split("x"))
        work = tempfile.mkdtemp(prefix="dm-handoff-bench-")
        try:
            print(json.dumps(baseline(args.bin, convs, msgs, work)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for size in [x for x in args.steady.split(",") if x]:
        convs, msgs = (int(x) for x in size.lower().split("x"))
        for adaptive in (False, True):
            work = tempfile.mkdtemp(prefix="dm-handoff-bench-")
            try:
                print(json.dumps(steady(args.bin, convs, msgs, args.ticks, adaptive, work)))
                sys.stdout.flush()
            finally:
                shutil.rmtree(work, ignore_errors=True)
    for size in [x for x in args.sizes.split(",") if x]:
        convs, msgs = (int(x) for x in size.lower().split("x"))
        work = tempfile.mkdtemp(prefix="dm-handoff-bench-")
        try:
            print(json.dumps(bench(args.bin, convs, msgs, work)))
            sys.stdout.flush()
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
