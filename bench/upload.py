#!/usr/bin/env python3
"""Upload benchmark (SPEC 9.2): closed segments to a local S3 server (moto), as ratios.

1. Throughput: `dm-handoff upload` of SIZE MiB of closed segments (8 MiB each, with their manifests) beside
   `raw_put` (bench/raw_put.rs), a plain loop of create-only PUTs of the same files with the same client
   (object_store), into the same moto server. Reported as ours / raw (1.0 = as fast as the raw loop).
2. Sync speed with uploads on vs off: one `sync` of the same simulated history (rotate_max_bytes 1 MiB, so
   segments close during the run) into a fresh folder, without and with `upload_url`; the one-shot sync
   includes its upload of every closed segment before it exits. Reported as off_wall / on_wall (target >= 0.9).

Builds nothing: `cargo build --example raw_put` and the binary first (debug or release; say which).
Usage: bench/upload.py [--size-mib 256] [--binary target/debug/dm-handoff]
                       [--raw target/debug/examples/raw_put] [--moto target/moto-venv/bin/moto_server]
moto is Python and bounds both sides alike; its throughput, not ours, sets the absolute figures.
"""
import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench_run  # noqa: E402  (start_sim, write_config, scenario_of)

SEGMENT = 8 * 1024 * 1024
STEM = "xquik-dm-handoff"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(program, port):
    proc = subprocess.Popen([program, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/bench", method="PUT")
            urllib.request.urlopen(req)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("moto did not start")


def make_segments(out, size_mib):
    """Closed segments of synthetic message lines and their manifests, as the finisher leaves them."""
    os.makedirs(out)
    line = json.dumps({"kind": "dm_message", "provider": "xquik", "pipeline": "bench", "message_id": "0",
                       "text": "x" * 300}).encode() + b"\n"
    per = SEGMENT // len(line)
    body = line * per
    digest = hashlib.sha256(body).hexdigest()
    n = max(1, size_mib * 1024 * 1024 // len(body))
    for seq in range(1, n + 1):
        base = f"{STEM}.20261207T120000Z.{seq:06}"
        with open(os.path.join(out, base + ".jsonl"), "wb") as f:
            f.write(body)
        manifest = {"segment": base + ".jsonl", "records": per, "bytes": len(body), "sha256": digest,
                    "kinds": {"dm_message": per}, "first_created_at": None, "last_created_at": None,
                    "schema_version": 1}
        with open(os.path.join(out, base + ".manifest.json"), "w") as f:
            json.dump(manifest, f)
    return n, n * len(body)


def upload_keys(port, prefix):
    return (f'upload_url = "s3://bench/{prefix}"\nupload_endpoint = "http://127.0.0.1:{port}"\n'
            f'upload_region = "us-east-1"\nupload_allow_http = true\n')


def throughput(args, port, work, env):
    out = os.path.join(work, "out")
    n, nbytes = make_segments(out, args.size_mib)
    cfg = bench_run.write_config(work, "127.0.0.1:9", ["1"], "0 * * * * *", "", upload_keys(port, "ours"))
    t0 = time.monotonic()
    r = subprocess.run([args.binary, "upload", "--config", cfg], env=env, capture_output=True, text=True)
    ours = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"upload failed: {r.stderr[-2000:]}")
    r = subprocess.run([args.raw, f"http://127.0.0.1:{port}", "bench", "raw", out], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"raw_put failed: {r.stderr[-2000:]}")
    raw = json.loads(r.stdout)
    return {"segments": n, "mib": round(nbytes / 2**20), "ours_wall_s": round(ours, 2),
            "raw_wall_s": round(raw["wall_s"], 2), "ours_mib_s": round(nbytes / 2**20 / ours, 1),
            "raw_mib_s": round(nbytes / 2**20 / raw["wall_s"], 1),
            "throughput_ratio": round(raw["wall_s"] / ours, 2)}


def sync_wall(args, port, work, env, convs, msgs, upload):
    os.makedirs(work)
    scenario = bench_run.scenario_of(convs, msgs)
    sim, addr = bench_run.start_sim(args.binary, scenario, work)
    try:
        peers = [c["peer_id"] for c in scenario["conversations"]]
        extra = 'read_rate_limit = "off"\n' + (upload_keys(port, "sync") if upload else "")
        cfg = bench_run.write_config(work, addr, peers, "0 * * * * *", "", extra)
        with open(cfg) as f:
            text = f.read().replace("rotate_max_bytes = 67108864", "rotate_max_bytes = 1048576")
        with open(cfg, "w") as f:
            f.write(text)
        t0 = time.monotonic()
        r = subprocess.run([args.binary, "sync", "--config", cfg, "--log-level", "warn"], env=env,
                           capture_output=True, text=True)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            sys.exit(f"sync failed ({r.returncode}): {r.stderr[-2000:]}")
        return wall
    finally:
        sim.terminate()
        sim.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--binary", default="target/debug/dm-handoff")
    ap.add_argument("--raw", default="target/debug/examples/raw_put")
    ap.add_argument("--moto", default="target/moto-venv/bin/moto_server")
    ap.add_argument("--convs", type=int, default=20)
    ap.add_argument("--msgs", type=int, default=2000)
    args = ap.parse_args()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", BENCH_KEY="xq_bench",
               RUST_LOG="warn")
    port = free_port()
    moto = start_moto(args.moto, port)
    work = tempfile.mkdtemp(prefix="dmh-upload-bench-")
    try:
        row = throughput(args, port, os.path.join(work, "tp"), env)
        off = sync_wall(args, port, os.path.join(work, "off"), env, args.convs, args.msgs, False)
        on = sync_wall(args, port, os.path.join(work, "on"), env, args.convs, args.msgs, True)
        row.update({"sync_messages": args.convs * args.msgs, "sync_off_wall_s": round(off, 2),
                    "sync_on_wall_s": round(on, 2), "sync_speed_ratio_on_vs_off": round(off / on, 2),
                    "binary": args.binary})
        print(json.dumps(row))
    finally:
        moto.kill()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
