#!/usr/bin/env python3
"""Soak: one daemon for a long time under everything a long run meets, sampled each minute.

Usage: python3 bench/soak.py [--minutes 60] [--bin target/release/dm-handoff] [--convs 1000] [--msgs 20]
                             [--schedule-secs 10] [--fault-every 5] [--hup-every 7] [--workdir DIR]

Two simulators (`dm-handoff simulate`, separate processes, so their CPU and memory are not the daemon's) and
one daemon (`dm-handoff run`) with two pipelines:

- `soak`: Xquik, `--convs` conversations of `--msgs` messages each, a small `rotate_max_bytes` (64 KiB, so
  the active file rotates every few hundred records) and gzip compression of closed segments;
- `renew`: X API v2 with `oauth_client_id`, 20 conversations, tokens imported once with `auth
  --refresh-token-file` from a simulator whose access tokens live 90 s, so the daemon renews them itself
  about every 72 s for the whole run.

While it runs: new messages arrive every 2 s (5 random conversations of `soak`, 1 of `renew`, through the
simulators' `/_sim/conversations/{peer}/messages`); faults come and go (every fifth minute, `--fault-every`,
5% 429s, 5% 5xx, 2% bodies cut short, `/_sim/faults`, cleared the next minute); a SIGHUP every 7 minutes
(`--hup-every`), every other one after a real change of `soak` (its `max_retries`), so the pipeline restarts
mid-stream. A short smoke run wants smaller periods (`--minutes 5 --fault-every 2 --hup-every 1`).

Each minute it samples the daemon: RSS (VmRSS), open files (/proc/PID/fd), the sled folder's size on
disk, the CPU it used in that minute (percent of one core), and the records in the files; it prints one
table row per minute, then a least-squares slope per hour for each column (the first two minutes, the
initial backfill, are left out of the slopes).

At the end: arrivals and faults stop, the daemon gets three ticks and a SIGTERM, then one `dm-handoff sync`
polls every conversation (the daemon's adaptive polling, default `adaptive_poll_max = "15m"`, leaves a
quiet conversation's last arrivals for a later poll; the line says how many records that sync added).
Then `verify` must say 0 problems and every message the simulators hold must be in the files exactly once
(the multiset of message IDs per conversation equals the simulator's). Exit 0 when all of that holds.

Builds nothing: run `cargo build --release` first. The daemon logs to DIR/daemon.log (WARN and above).
"""
import argparse
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

CLIENT = "dm-handoff-soak"
SCOPES = "dm.read dm.write tweet.read users.read offline.access"
X_ACCOUNT = "987654321"


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def start_sim(binary, scenario, workdir, name):
    path = os.path.join(workdir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(scenario, f)
    sim = subprocess.Popen([binary, "simulate", "--listen", "127.0.0.1:0", "--scenario", path],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = re.search(r"http://([0-9.:]+)", sim.stdout.readline()).group(1)
    return sim, addr


def write_config(workdir, xq, xv, xq_peers, xv_peers, schedule, max_retries):
    q = ", ".join(f'"{p}"' for p in xq_peers)
    v = ", ".join(f'"{p}"' for p in xv_peers)
    cfg = os.path.join(workdir, "pipelines.toml")
    tmp = cfg + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"""state_dir = "state"
max_concurrency = 16
shutdown_timeout = "30s"

[[pipelines]]
name = "soak"
provider = "xquik"
base_url = "http://{xq}/api/v1"
api_key_env = "SOAK_KEY"
account = "soak_account"
conversations = [{q}]
schedule = "{schedule}"
output_dir = "out/soak"
rotate_max_bytes = 65536
compress = "gzip"
retry_base = "50ms"
retry_max = "2s"
max_retries = {max_retries}

[[pipelines]]
name = "renew"
provider = "x-api-v2"
base_url = "http://{xv}"
account = "{X_ACCOUNT}"
conversations = [{v}]
schedule = "{schedule}"
output_dir = "out/renew"
rotate_max_bytes = 65536
retry_base = "50ms"
retry_max = "2s"
max_retries = 40
oauth_client_id = "{CLIENT}"
oauth_authorize_url = "http://{xv}/i/oauth2/authorize"
oauth_token_url = "http://{xv}/2/oauth2/token"
oauth_redirect_uri = "http://127.0.0.1:9/callback"
""")
    # Atomically, so a SIGHUP never reads half a file.
    os.replace(tmp, cfg)
    return cfg


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def catches_sighup(pid):
    """Whether the process has installed its SIGHUP handler (before that, a SIGHUP would kill it)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)) != 0
    return False


def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def records(out_dir):
    """Every record line of a pipeline's files: .jsonl (active and closed) and .jsonl.gz segments."""
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name.startswith("."):
            continue
        if name.endswith(".jsonl"):
            opener = open
        elif name.endswith(".jsonl.gz"):
            opener = gzip.open
        else:
            continue
        try:
            with opener(path, "rb") as f:
                for line in f:
                    yield line
        except FileNotFoundError:
            # Compressed and removed between the listing and the open.
            continue


def count_records(workdir):
    n = 0
    for p in ("soak", "renew"):
        d = os.path.join(workdir, "out", p)
        if os.path.isdir(d):
            n += sum(1 for _ in records(d))
    return n


def slope_per_hour(xs, ys):
    """Least-squares slope of ys over xs (minutes), per hour."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60.0


def exactly_once(workdir, pipeline, addr, peers):
    """Problems found comparing the files' dm_message IDs per conversation with the simulator's messages."""
    got = {}
    for line in records(os.path.join(workdir, "out", pipeline)):
        r = json.loads(line)
        if r.get("kind") != "dm_message":
            continue
        got.setdefault(r.get("conversation_user_id"), []).append(r.get("message_id"))
    problems = []
    total = 0
    for peer in peers:
        want = sorted(m["id"] for m in http("GET", f"http://{addr}/_sim/conversations/{peer}/messages"))
        have = sorted(got.pop(peer, []))
        total += len(want)
        if have != want:
            dup = len(have) - len(set(have))
            missing = len(set(want) - set(have))
            extra = len(set(have) - set(want))
            problems.append(f"{pipeline} {peer}: {len(have)} records for {len(want)} messages "
                            f"({dup} duplicated, {missing} missing, {extra} unknown)")
    for peer, ids in got.items():
        problems.append(f"{pipeline}: {len(ids)} records of an unconfigured conversation {peer}")
    return total, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--bin", default="target/release/dm-handoff")
    ap.add_argument("--convs", type=int, default=1000)
    ap.add_argument("--msgs", type=int, default=20)
    ap.add_argument("--schedule-secs", type=int, default=10)
    ap.add_argument("--fault-every", type=int, default=5, help="faults on in every Nth minute")
    ap.add_argument("--hup-every", type=int, default=7, help="a SIGHUP every N minutes")
    ap.add_argument("--workdir", help="keep everything here (default: a temporary folder, removed on success)")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="dm-soak-")
    os.makedirs(workdir, exist_ok=True)
    print(f"soak: {args.minutes} min, {args.convs} conversations x {args.msgs}, workdir {workdir}", flush=True)

    xq_peers = [str(20_000_000 + i) for i in range(args.convs)]
    xv_peers = [str(30_000_000 + i) for i in range(20)]
    xq_scenario = {
        "seed": 27, "page_size": [18, 30],
        "conversations": [{"peer_id": p, "messages": args.msgs, "cursor_style": "offset" if i % 2 else "max_id"}
                          for i, p in enumerate(xq_peers)],
    }
    xv_scenario = {
        "seed": 28, "account": X_ACCOUNT, "x_rate_limit": None, "x_token_lifetime_secs": 90,
        "conversations": [{"peer_id": p, "messages": args.msgs, "cursor_style": "max_id"} for p in xv_peers],
    }
    xq_sim, xq = start_sim(binary, xq_scenario, workdir, "xquik")
    xv_sim, xv = start_sim(binary, xv_scenario, workdir, "xapi")
    procs = [xq_sim, xv_sim]
    daemon = None
    ok = False
    try:
        max_retries = 40
        cfg = write_config(workdir, xq, xv, xq_peers, xv_peers, f"*/{args.schedule_secs} * * * * *", max_retries)
        env = dict(os.environ, SOAK_KEY="xq_soak", RUST_LOG="warn")
        issued = http("POST", f"http://{xv}/_sim/oauth/issue", {"client_id": CLIENT, "scope": SCOPES})
        token_path = os.path.join(workdir, "refresh-token")
        with open(os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(issued["refresh_token"] + "\n")
        subprocess.run([binary, "auth", "--pipeline", "renew", "--refresh-token-file", token_path, "--config", cfg],
                       env=env, check=True, capture_output=True)
        os.remove(token_path)
        log = open(os.path.join(workdir, "daemon.log"), "w")
        daemon = subprocess.Popen([binary, "run", "--config", cfg], env=env, stdout=log, stderr=log)
        procs.append(daemon)
        pid = daemon.pid
        # The minutes count from a daemon that is up: its first backfill is part of the run, an early SIGHUP
        # must not be the default action's kill.
        ready_by = time.monotonic() + 120
        while not catches_sighup(pid):
            if daemon.poll() is not None or time.monotonic() > ready_by:
                raise SystemExit(f"the daemon did not start; see {workdir}/daemon.log")
            time.sleep(0.1)
        rng = random.Random(27)
        header = f"{'min':>4} {'rss_mib':>8} {'open_fds':>8} {'sled_mib':>8} {'cpu_pct':>7} {'records':>9}"
        print(header, flush=True)
        rows = []
        start = time.monotonic()
        last_cpu, last_at = cpu_seconds(pid), start
        hups = 0
        next_arrival = start
        for minute in range(1, args.minutes + 1):
            # Faults: on in every fifth minute, off in the others.
            if minute % args.fault_every == 0:
                faults = {"rate_limit": 0.05, "server_error": 0.05, "drop": 0.02, "retry_after_secs": 0}
            else:
                faults = {}
            http("PUT", f"http://{xq}/_sim/faults", faults)
            http("PUT", f"http://{xv}/_sim/faults", faults)
            if minute % args.hup_every == 0:
                hups += 1
                if hups % 2 == 0:
                    max_retries = 41 if max_retries == 40 else 40
                    write_config(workdir, xq, xv, xq_peers, xv_peers, f"*/{args.schedule_secs} * * * * *",
                                 max_retries)
                daemon.send_signal(signal.SIGHUP)
            end = start + minute * 60
            while time.monotonic() < end:
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited with {daemon.returncode}; see {workdir}/daemon.log")
                if time.monotonic() >= next_arrival:
                    for peer in rng.sample(xq_peers, min(5, len(xq_peers))):
                        http("POST", f"http://{xq}/_sim/conversations/{peer}/messages", {"count": 1})
                    http("POST", f"http://{xv}/_sim/conversations/{rng.choice(xv_peers)}/messages", {"count": 1})
                    next_arrival += 2
                time.sleep(max(0.0, min(0.5, end - time.monotonic())))
            now, cpu = time.monotonic(), cpu_seconds(pid)
            row = (minute, rss_kib(pid) / 1024, open_files(pid), disk_bytes(os.path.join(workdir, "state")) / 2**20,
                   100.0 * (cpu - last_cpu) / (now - last_at), count_records(workdir))
            last_cpu, last_at = cpu, now
            rows.append(row)
            print(f"{row[0]:>4} {row[1]:>8.1f} {row[2]:>8} {row[3]:>8.1f} {row[4]:>7.1f} {row[5]:>9}", flush=True)

        steady = [r for r in rows if r[0] > 2] or rows
        xs = [r[0] for r in steady]
        slopes = [slope_per_hour(xs, [r[i] for r in steady]) for i in range(1, 6)]
        print(f"{'/h':>4} {slopes[0]:>+8.2f} {slopes[1]:>+8.2f} {slopes[2]:>+8.2f} {slopes[3]:>+7.2f} "
              f"{slopes[4]:>+9.0f}   (least-squares slope per hour, minutes 3-{args.minutes})", flush=True)

        # Catch up: no arrivals, no faults, three ticks, then stop.
        for addr in (xq, xv):
            http("PUT", f"http://{addr}/_sim/faults", {})
        time.sleep(3 * args.schedule_secs + 5)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=120)
        before_sync = count_records(workdir)
        final_sync = subprocess.run([binary, "sync", "--config", cfg], env=env, capture_output=True, text=True)
        caught_up = count_records(workdir) - before_sync
        renewals = http("GET", f"http://{xv}/_sim/oauth/stats")
        verify = subprocess.run([binary, "verify", "--config", cfg], env=env, capture_output=True, text=True)
        problems = []
        if code != 0:
            problems.append(f"the daemon exited with {code} on SIGTERM")
        if final_sync.returncode != 0:
            problems.append(f"the final sync exited with {final_sync.returncode}: "
                            + final_sync.stderr.strip().replace("\n", "; ")[:2000])
        if verify.returncode != 0:
            problems.append("verify: " + (verify.stdout + verify.stderr).strip().replace("\n", "; ")[:2000])
        n_xq, p_xq = exactly_once(workdir, "soak", xq, xq_peers)
        n_xv, p_xv = exactly_once(workdir, "renew", xv, xv_peers)
        problems += p_xq + p_xv
        refreshes = renewals.get("refreshes", 0)
        segments = sum(1 for p in ("soak", "renew") for n in os.listdir(os.path.join(workdir, "out", p))
                       if n.endswith((".jsonl", ".jsonl.gz")))
        print(f"end: {n_xq + n_xv} messages in the simulators, {segments} files (rotations), {hups} SIGHUPs, "
              f"{refreshes} token renewals, {caught_up} records added by the final sync, "
              f"verify exit {verify.returncode}; "
              + ("every message in the files exactly once" if not problems else f"{len(problems)} problems"),
              flush=True)
        for p in problems[:20]:
            print("  " + p)
        ok = not problems
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        if ok and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
