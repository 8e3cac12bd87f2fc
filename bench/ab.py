#!/usr/bin/env python3
"""A/B: two dm-handoff builds on the same backfill, run alternately, so a shared machine's drift hits both.

Usage: python3 bench/ab.py --a OLD_BINARY --b NEW_BINARY [--size 100x1000] [--pairs 10]

Each pair starts a fresh simulator (the same seeded world, `bench/run.py`'s scenario) for A, syncs it with
A's `dm-handoff sync` (default config, `read_rate_limit = "off"`, no compression), then does the same for B.
It prints each build's median wall and CPU seconds (the sync process's own user + system time, from wait4)
and B's medians as a fraction of A's. The simulator is always B's binary, so both builds read the same
pages. Single runs on a 2-core shared machine vary by ±25%; compare medians of ten pairs or more.

To build an older commit beside the current one:
    git worktree add /tmp/base <commit> && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release)
then `--a /tmp/base-target/release/dm-handoff --b target/release/dm-handoff`.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's scenario, simulator and config helpers)


def one(binary, sim_binary, convs, msgs, workdir):
    """One sync of a fresh world; returns (wall seconds, CPU seconds)."""
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    run.WINDOW = False
    scenario = run.scenario_of(convs, msgs)
    sim, addr = run.start_sim(sim_binary, scenario, workdir)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        cfg = run.write_config(workdir, addr, peers, "0 * * * * *", f"state_cache_bytes = {run.STATE_CACHE}\n",
                               'compress = "none"\nread_rate_limit = "off"\n')
        env = dict(os.environ, BENCH_KEY="xq_bench", RUST_LOG="warn")
        started = time.monotonic()
        proc = subprocess.Popen([binary, "sync", "--config", cfg, "--log-level", "warn"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{binary} sync failed: {proc.stderr.read()[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime
    finally:
        sim.terminate()
        sim.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the baseline build's dm-handoff binary")
    ap.add_argument("--b", required=True, help="the build under test")
    ap.add_argument("--size", default="100x1000")
    ap.add_argument("--pairs", type=int, default=10)
    args = ap.parse_args()
    convs, msgs = (int(x) for x in args.size.split("x"))
    results = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="dmh-ab-") as tmp:
        for _ in range(args.pairs):
            for name in ("a", "b"):
                binary = getattr(args, name)
                results[name].append(one(binary, args.b, convs, msgs, os.path.join(tmp, name)))
    med = {name: (statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows))
           for name, rows in results.items()}
    for name in ("a", "b"):
        print(f"{name}: wall median {med[name][0]:.3f} s, CPU median {med[name][1]:.3f} s, CPU runs "
              f"{[round(c, 2) for _, c in results[name]]}")
    print(f"b / a: wall {med['b'][0] / med['a'][0]:.3f}, CPU {med['b'][1] / med['a'][1]:.3f}")


if __name__ == "__main__":
    main()
