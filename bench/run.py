#!/usr/bin/env python3
"""Benchmark: a full backfill of N conversations x M messages from the simulator, then a quiet re-sync.

Usage: python3 bench/run.py [--sizes 100x1000,1000x1000,10000x10] [--bin target/release/dm-handoff]
                            [--latency MIN,MAX] [--window] [--default-config]
                            [--baseline 100x1000] [--dlt 100x1000] [--steady 500x20 --ticks 60]
                            [--inbox 100x20 --ticks 30]

Every backfill row is measured against the reference: `raw_fetch` (bench/raw_fetch.rs, built with
`cargo build --release --example raw_fetch`), a plain loop that pages the same simulator with a fixed number of
requests in flight, parses each page only for its cursor and writes nothing. It runs at several concurrencies
in the same run, and the row reports `wall_ratio` (dm-handoff's wall time / the loop's best) and `cpu_ratio`
(dm-handoff's CPU seconds / the loop's at that concurrency). Rows without latency also run the loop in
its durable mode (RAW_DURABLE_DIR: every item parsed and serialized as a record, appended, fdatasync'd, a
sled batch flushed per group) at the best concurrency, the *durable floor*, and report `floor_wall_ratio`
and `floor_cpu_ratio` (the floor / the loop): the part of the gap the contract itself costs. `--latency MIN,MAX` delays every answer of the
simulator by a uniform random time in [MIN, MAX] ms; `--window` keeps Xquik's 300-reads-per-second window on
(off otherwise, with `read_rate_limit = "off"` in the config to match, so the no-latency rows measure our own
CPU, not the provider's budget; everything else stays at its default) and reports the window's
floor (requests / 300 s) and the 429s drawn. `--default-config` syncs with dm-handoff's defaults (concurrency
"auto"); otherwise with the fixed concurrency of earlier versions of this benchmark (32).

--baseline runs bench/baseline.py (plain Python: urllib + sqlite3) on the same backfill for a ratio.
--dlt runs bench/dlt_rest.py (dlt's `rest_api` source into its `filesystem` destination as JSONL) and a
dm-handoff sync with its default config, each against a fresh copy of the same world with the read window
off (and `read_rate_limit = "off"`), and reports `dlt_over_dm_handoff` (dlt's wall time / dm-handoff's). It
needs network access once: it makes a venv at target/bench-venv and pip-installs dlt[filesystem]==DLT_VERSION.
--steady runs the daemon with a one-second schedule for --ticks ticks while new messages arrive in 2% of
the conversations per tick, once with adaptive polling and once without (same traffic), and reports
credits spent per new message delivered.
--inbox runs an X API v2 pipeline (the simulator's rate window off) as a daemon on a one-second schedule for
--ticks ticks while 2 of the conversations get a message per tick, three ways: every conversation listed and
polled every tick, listed with adaptive polling, and `inbox = true` with nothing listed (one GET /2/dm_events
stream); it reports X API requests per tick (X allows 15 DM reads per 15 minutes per user).

Builds nothing: run `cargo build --release` first (to profile, `cargo build --profile profiling` and `--bin target/profiling/dm-handoff`: the same code with line tables). Starts `dm-handoff simulate` on a free loopback port
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


def run_measured(cmd, env, stdout=subprocess.DEVNULL):
    """Runs cmd (its stdout to `stdout`, discarded by default); returns (wall seconds, peak RSS MiB of the child's own program, returncode, stderr).

    Peak RSS is the kernel's high-water mark of the child's address space (VmHWM in /proc/<pid>/status),
    read every 5 ms while it runs. Not getrusage: Python starts children with vfork, and Linux carries
    the parent's RSS into the child's ru_maxrss at exec, so ru_maxrss reports this script's own size
    whenever that is larger (it made the earlier figures of this benchmark read 30-70 MiB too high).
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
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
# The simulator's answer delay, [min, max] ms, or None.
LATENCY = None
# Xquik's read window in the simulator: on (the default, 300 per second) or off.
WINDOW = False
# Sync with dm-handoff's own defaults instead of the pinned concurrency of the older rows.
DEFAULT_CONFIG = False
RAW_CONCURRENCY = (1, 4, 16, 32, 64, 128)


def raw_binary(binary):
    return os.path.join(os.path.dirname(binary), "examples", "raw_fetch")


def reference(binary, addr, peers, sim):
    """The raw fetch loop at each concurrency against a fresh copy of the same world; returns the runs and
    the best (fastest) one. A single conversation is one cursor chain: only concurrency 1 applies."""
    raw = raw_binary(binary)
    if not os.path.exists(raw):
        sys.exit(f"{raw} not found: run `cargo build --release --example raw_fetch` first")
    runs = []
    for c in (RAW_CONCURRENCY if len(peers) > 1 else (1,)):
        if c > len(peers):
            break
        if LATENCY and len(peers) > 1 and c < 16:
            # At 100-200 ms per answer, 1 or 4 in flight take minutes and are never the best: skip them.
            continue
        out = subprocess.run([raw, f"http://{addr}/api/v1", "bench_account", str(c), "-"],
                             input="\n".join(peers), capture_output=True, text=True,
                             env=dict(os.environ, BENCH_KEY="xq_bench"))
        if out.returncode != 0:
            sys.exit(f"raw_fetch failed: {out.stderr[-2000:]}")
        runs.append(json.loads(out.stdout))
    best = min(runs, key=lambda r: r["wall_s"])
    return runs, best


def durable_floor(binary, addr, peers, concurrency, workdir):
    """The raw loop in its durable mode (RAW_DURABLE_DIR, see bench/raw_fetch.rs) at the reference's best
    concurrency: every item parsed and serialized as a record, appended, fdatasync'd and a sled batch
    flushed per group. The least work the contract asks for, so a row can say what part of its cost is
    that work."""
    d = tempfile.mkdtemp(prefix="floor-", dir=workdir)
    out = subprocess.run([raw_binary(binary), f"http://{addr}/api/v1", "bench_account", str(concurrency), "-"],
                         input="\n".join(peers), capture_output=True, text=True,
                         env=dict(os.environ, BENCH_KEY="xq_bench", RAW_DURABLE_DIR=d))
    shutil.rmtree(d, ignore_errors=True)
    if out.returncode != 0:
        sys.exit(f"raw_fetch (durable) failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def bench(binary, convs, msgs, workdir):
    scenario = scenario_of(convs, msgs)
    # The reference first, against its own simulator (the same seeded world), so neither run warms the other.
    ref_sim, ref_addr = start_sim(binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        _, best = reference(binary, ref_addr, peers, ref_sim)
        floor = None if LATENCY else durable_floor(binary, ref_addr, peers, best["concurrency"], workdir)
    finally:
        ref_sim.terminate()
        ref_sim.wait()
    sim, addr = start_sim(binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        top = f"state_cache_bytes = {STATE_CACHE}\n" + ("" if DEFAULT_CONFIG else "max_concurrency = 32\n")
        pipe = f'compress = "{COMPRESS}"\n' + ("" if DEFAULT_CONFIG else "concurrency = 32\n")
        if not WINDOW:
            # The simulator enforces no read window here, and the client is told so: otherwise it would pace
            # itself to Xquik's documented 300 reads per second and the row would measure that budget.
            pipe += 'read_rate_limit = "off"\n'
        cfg = write_config(workdir, addr, peers, "0 * * * * *", top, pipe)
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
        row = {
            "size": f"{convs}x{msgs}",
            "config": "default" if DEFAULT_CONFIG else "concurrency 32",
            "latency_ms": LATENCY,
            "window": WINDOW,
            "compress": COMPRESS,
            "messages": total,
            "wall_s": round(wall, 2),
            "ref_wall_s": round(best["wall_s"], 2),
            "ref_concurrency": best["concurrency"],
            "wall_ratio": round(wall / best["wall_s"], 2),
            "cpu_s": round(cpu, 2),
            "ref_cpu_s": round(best["cpu_s"], 2),
            "cpu_ratio": round(cpu / max(best["cpu_s"], 1e-3), 2),
            "msgs_per_s": int(total / wall),
            "peak_rss_mib": round(rss, 1),
            # Where the time went: both processes share the machine's cores.
            "sim_cpu_s": round(sim_cpu, 1),
            "requests": stats["requests"],
            "throttled_429": stats.get("rate_limited", 0),
            "credits": stats["credits"],
            "bytes_written": nbytes,
            "resync_wall_s": round(wall2, 2),
            "resync_requests": stats2["requests"] - stats["requests"],
            "resync_credits": stats2["credits"] - stats["credits"],
            "resync_exit": code2,
        }
        if floor:
            # The durable floor: the same fetches plus the least writing the contract asks for.
            row["floor_wall_s"] = round(floor["wall_s"], 2)
            row["floor_cpu_s"] = round(floor["cpu_s"], 2)
            row["floor_cpu_ratio"] = round(floor["cpu_s"] / max(best["cpu_s"], 1e-3), 2)
            row["floor_wall_ratio"] = round(floor["wall_s"] / best["wall_s"], 2)
        if WINDOW:
            # The provider's budget bounds any client: requests / 300 per second.
            floor = stats["requests"] / 300.0
            row["window_floor_s"] = round(floor, 2)
            row["wall_per_floor"] = round(wall / floor, 3)
            row["throttled_share"] = round(row["throttled_429"] / max(stats["requests"], 1), 4)
        return row
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
{top_extra}
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
{pipeline_extra}""")
    return cfg


def scenario_of(convs, msgs):
    sc = {
        "seed": 11,
        "page_size": [18, 30],
        "conversations": [
            {"peer_id": str(10_000_000 + i), "messages": msgs, "cursor_style": "offset" if i % 2 else "max_id"}
            for i in range(convs)
        ],
        # Xquik's documented read window, on by default in the simulator.
        "xquik_rate_limit": [300, 1] if WINDOW else None,
    }
    if LATENCY:
        sc["latency_ms"] = list(LATENCY)
    return sc


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


# Pinned so --dlt rows stay comparable across runs and machines.
DLT_VERSION = "1.31.0"


def dlt_python():
    """The venv's Python with dlt[filesystem]==DLT_VERSION, made (or upgraded) on first use."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(root, "target", "bench-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    have = subprocess.run([py, "-c", "import dlt; print(dlt.__version__)"], capture_output=True, text=True)
    if have.returncode != 0 or have.stdout.strip() != DLT_VERSION:
        subprocess.run([py, "-m", "pip", "install", "-q", f"dlt[filesystem]=={DLT_VERSION}"], check=True)
    return py


def dlt_compare(binary, convs, msgs, workdir):
    """dm-handoff (default config) and dlt's rest_api source on the same backfill, each against its own
    simulator. The window is off for both: dlt has no notion of Xquik's budget, so with it on the row
    would compare 429 handling, not the work of syncing."""
    global WINDOW
    py = dlt_python()
    saved, WINDOW = WINDOW, False
    try:
        scenario = scenario_of(convs, msgs)
    finally:
        WINDOW = saved
    peers = [c["peer_id"] for c in scenario["conversations"]]
    total = convs * msgs
    row = {"dlt": f"{convs}x{msgs}", "dlt_version": DLT_VERSION, "latency_ms": LATENCY, "messages": total}

    dm_dir = os.path.join(workdir, "dm-handoff")
    os.makedirs(dm_dir)
    sim, addr = start_sim(binary, scenario, dm_dir)
    try:
        # As --default-config writes it, plus the client told there is no read window (as the simulator has none).
        cfg = write_config(dm_dir, addr, peers, "0 * * * * *", f"state_cache_bytes = {STATE_CACHE}\n",
                           f'compress = "{COMPRESS}"\nread_rate_limit = "off"\n')
        env = dict(os.environ, BENCH_KEY="xq_bench", RUST_LOG="warn")
        wall, rss, code, err, cpu = run_measured([binary, "sync", "--config", cfg, "--log-level", "warn"], env)
        if code != 0:
            sys.exit(f"sync failed ({code}): {err[-2000:]}")
        lines = count_lines(os.path.join(dm_dir, "out"))
        assert lines == total, f"dm-handoff wrote {lines} records, expected {total}"
        stats = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        dm_wall = wall
        row.update({"dm_handoff_wall_s": round(wall, 2), "dm_handoff_cpu_s": round(cpu, 2),
                    "dm_handoff_peak_rss_mib": round(rss, 1), "dm_handoff_requests": stats["requests"]})
    finally:
        sim.terminate()
        sim.wait()

    dlt_dir = os.path.join(workdir, "dlt")
    os.makedirs(dlt_dir)
    sim, addr = start_sim(binary, scenario, dlt_dir)
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [py, os.path.join(here, "dlt_rest.py"), f"http://{addr}/api/v1", "bench_account", "xq_bench",
               dlt_dir, str(total), *peers]
        out_json = os.path.join(dlt_dir, "result.json")
        with open(out_json, "w") as f:
            wall, rss, code, err, cpu = run_measured(cmd, dict(os.environ, RUNTIME__DLTHUB_TELEMETRY="false"), f)
        if code != 0:
            sys.exit(f"dlt_rest.py failed ({code}): {err[-2000:]}")
        with open(out_json) as f:
            res = json.load(f)
        stats = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        # Wall and CPU are the whole process for both tools, so dlt's include starting Python and importing dlt
        # (dlt_run_s is pipeline.run alone: extract, normalize, load).
        row.update({"dlt_wall_s": round(wall, 2), "dlt_run_s": round(res["run_s"], 2), "dlt_cpu_s": round(cpu, 2),
                    "dlt_peak_rss_mib": round(rss, 1), "dlt_requests": stats["requests"],
                    "dlt_records": res["records"],
                    "dlt_over_dm_handoff": round(wall / dm_wall, 2)})
    finally:
        sim.terminate()
        sim.wait()
    return row


def steady(binary, convs, msgs, ticks, adaptive, workdir):
    """Daemon on a 1 s schedule for `ticks` ticks; 2% of conversations get one new message per tick."""
    import random
    import signal
    scenario = scenario_of(convs, msgs)
    sim, addr = start_sim(binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        cfg = write_config(workdir, addr, peers, "* * * * * *", "max_concurrency = 32\n",
                           f"adaptive_poll_max = \"{'16s' if adaptive else '0'}\"\nconcurrency = 32\n")
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


def inbox_bench(binary, convs, msgs, ticks, mode, workdir):
    """X API v2 requests per daemon tick: `listed`, `listed-adaptive` or `inbox` (SPEC 8.2)."""
    import random
    import signal
    scenario = scenario_of(convs, msgs)
    scenario.update({"account": "987654321", "x_rate_limit": None})
    sim, addr = start_sim(binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        listed = [] if mode == "inbox" else peers
        conv_list = ", ".join(f'"{p}"' for p in listed)
        cfg = os.path.join(workdir, "pipelines.toml")
        with open(cfg, "w") as f:
            f.write(f"""state_dir = "state"
max_concurrency = 32
[[pipelines]]
name = "bench"
provider = "x-api-v2"
base_url = "http://{addr}"
api_key_env = "BENCH_KEY"
account = "987654321"
conversations = [{conv_list}]
schedule = "* * * * * *"
output_dir = "out"
concurrency = 32
adaptive_poll_max = "{'16s' if mode == 'listed-adaptive' else '0'}"
{'inbox = true' if mode == 'inbox' else ''}
""")
        env = dict(os.environ, BENCH_KEY="x-bench-token", RUST_LOG="warn")
        out = os.path.join(workdir, "out")
        backfill = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))["requests"]
        subprocess.run([binary, "sync", "--config", cfg], env=env, capture_output=True, check=True)
        backfill = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))["requests"] - backfill
        assert count_lines(out) == convs * msgs, "the initial sync wrote every message"
        before_lines = count_lines(out)
        daemon = subprocess.Popen([binary, "run", "--config", cfg], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        base = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        rng = random.Random(5)
        added = 0
        for _ in range(ticks):
            for peer in rng.sample(peers, 2):
                req = urllib.request.Request(f"http://{addr}/_sim/conversations/{peer}/messages",
                                             data=b'{"count":1}', headers={"content-type": "application/json"})
                urllib.request.urlopen(req).read()
                added += 1
            time.sleep(1.0)
        stats = json.load(urllib.request.urlopen(f"http://{addr}/_sim/stats"))
        time.sleep(2.0)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
        delivered = count_lines(out) - before_lines
        reqs = stats["requests"] - base["requests"]
        return {"inbox_bench": f"{convs}x{msgs}", "mode": mode, "ticks": ticks, "initial_sync_requests": backfill,
                "requests": reqs, "requests_per_tick": round(reqs / ticks, 1), "new_messages": added,
                "delivered": delivered}
    finally:
        sim.terminate()
        sim.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100x1000,1000x1000,10000x10")
    ap.add_argument("--bin", default="target/release/dm-handoff")
    ap.add_argument("--baseline", default="")
    ap.add_argument("--dlt", default="", help="dlt's rest_api source vs dm-handoff on this backfill, e.g. 100x1000")
    ap.add_argument("--steady", default="")
    ap.add_argument("--ticks", type=int, default=60)
    ap.add_argument("--inbox", default="", help="X API v2 requests per tick, inbox vs listed, e.g. 100x20")
    ap.add_argument("--state-cache-mib", type=int, default=16, help="state_cache_bytes for the backfill runs")
    ap.add_argument("--compress", default="none", choices=["none", "zstd", "gzip"],
                    help="the pipeline's compress setting for the backfill runs")
    ap.add_argument("--latency", default="", help="MIN,MAX ms the simulator delays every answer")
    ap.add_argument("--window", action="store_true", help="keep Xquik's 300 reads/s window on in the simulator")
    ap.add_argument("--default-config", action="store_true", help="sync with dm-handoff's default concurrency")
    args = ap.parse_args()
    global STATE_CACHE, COMPRESS, LATENCY, WINDOW, DEFAULT_CONFIG
    STATE_CACHE = args.state_cache_mib * 1024 * 1024
    COMPRESS = args.compress
    LATENCY = tuple(int(x) for x in args.latency.split(",")) if args.latency else None
    WINDOW = args.window
    DEFAULT_CONFIG = args.default_config
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
    for size in [x for x in args.dlt.split(",") if x]:
        convs, msgs = (int(x) for x in size.lower().split("x"))
        work = tempfile.mkdtemp(prefix="dm-handoff-bench-")
        try:
            print(json.dumps(dlt_compare(args.bin, convs, msgs, work)))
            sys.stdout.flush()
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
    for size in [x for x in args.inbox.split(",") if x]:
        convs, msgs = (int(x) for x in size.lower().split("x"))
        for mode in ("listed", "listed-adaptive", "inbox"):
            work = tempfile.mkdtemp(prefix="dm-handoff-bench-")
            try:
                print(json.dumps(inbox_bench(args.bin, convs, msgs, args.ticks, mode, work)))
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
