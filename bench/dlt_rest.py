#!/usr/bin/env python3
"""The same backfill as bench/baseline.py, written the way a dlt user would: dlt's declarative `rest_api`
source against the simulator's Xquik-style API, loaded into the `filesystem` destination as JSONL. Used by
bench/run.py --dlt for the comparison in the README; needs `dlt[filesystem]` (run.py makes a venv for it).

Configuration, all dlt defaults otherwise:
- client: base_url, `x-api-key` header auth (type "api_key"), `account` as a query parameter.
- `peers`: a plain dlt resource yielding the conversation IDs (not an API endpoint: Xquik's history endpoint
  needs each peer listed), unselected so it is not loaded itself. `messages` depends on it through the path
  parameter `{resources.peers.peer_id}`, and `include_from_parent` keeps the peer on every row.
- paginator: JSON-response cursor, `next_cursor` from the body sent back as the `cursor` query parameter,
  stopping on `has_next_page` false (the simulator also sends an empty `next_cursor` on the last page).
- data_selector "messages"; primary key (peer, id).
- write_disposition "append": the filesystem destination merges only into delta/iceberg tables, so a user
  after "every message once" with plain JSONL appends and relies on a one-shot backfill (or on an incremental
  cursor later); a full reload with "replace" would also rewrite history each run.
- destination filesystem, bucket_url a local folder, loader_file_format "jsonl" (dlt gzips the files by
  default, as *.jsonl.gz). The pipeline's working folder is put next to it, not in ~/.dlt.

Usage: python3 bench/dlt_rest.py BASE_URL ACCOUNT API_KEY OUT_DIR EXPECTED_RECORDS PEER [PEER ...]
Prints {"wall_s": ..., "run_s": ..., "records": ...}: wall_s from before `import dlt` to the end of the
load, run_s for pipeline.run alone, records counted from the files written.
"""
import time

T0 = time.monotonic()

import gzip
import json
import os
import sys

# No anonymous usage reports to dlt's endpoint from a benchmark.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

import dlt
from dlt.sources.rest_api import rest_api_source


def count_records(folder):
    """Lines of every file dlt wrote for the table; files are gzip unless compression was turned off."""
    n = 0
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                magic = fh.read(2)
            opener = gzip.open if magic == b"\x1f\x8b" else open
            with opener(path, "rb") as fh:
                n += sum(1 for _ in fh)
    return n


def main():
    base, account, key, out_dir, expected, *peers = sys.argv[1:]

    @dlt.resource(name="peers", selected=False)
    def peers_resource():
        yield [{"peer_id": p} for p in peers]

    source = rest_api_source({
        "client": {
            "base_url": base,
            "auth": {"type": "api_key", "name": "x-api-key", "api_key": key, "location": "header"},
        },
        "resource_defaults": {"write_disposition": "append"},
        "resources": [
            peers_resource,
            {
                "name": "messages",
                "primary_key": ["_peers_peer_id", "id"],
                "include_from_parent": ["peer_id"],
                "endpoint": {
                    "path": "x/dm/{resources.peers.peer_id}/history",
                    "params": {"account": account},
                    "data_selector": "messages",
                    "paginator": {
                        "type": "cursor",
                        "cursor_path": "next_cursor",
                        "cursor_param": "cursor",
                        "has_more_path": "has_next_page",
                    },
                },
            },
        ],
    })

    bucket = os.path.join(out_dir, "bucket")
    pipeline = dlt.pipeline(
        pipeline_name="dm_history",
        pipelines_dir=os.path.join(out_dir, "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=bucket),
        dataset_name="dms",
    )
    t_run = time.monotonic()
    pipeline.run(source, loader_file_format="jsonl")
    end = time.monotonic()

    records = count_records(os.path.join(bucket, "dms", "messages"))
    assert records == int(expected), f"dlt wrote {records} records, expected {expected}"
    print(json.dumps({"wall_s": round(end - T0, 3), "run_s": round(end - t_run, 3), "records": records}))


if __name__ == "__main__":
    main()
