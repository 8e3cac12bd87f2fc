#!/usr/bin/env python3
"""What a user would otherwise write: a plain Python script (urllib + sqlite3, no dependencies) that pages
each conversation's history from the same simulator, dedupes message IDs in SQLite, and appends new
messages as JSON lines. Used by bench/run.py --baseline for the speed ratio in the README.

It is written the way such scripts usually are: sequential, one SQLite commit per page (SQLite's default
synchronous=FULL makes that durable), JSONL appended without fsync, and no retries (the benchmark's
simulator injects no faults).

Usage: python3 bench/baseline.py BASE_URL ACCOUNT STATE_DB OUT_JSONL PEER [PEER ...]
"""
import json
import sqlite3
import sys
import urllib.parse
import urllib.request


def main():
    base, account, db_path, out_path, *peers = sys.argv[1:]
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE IF NOT EXISTS seen (peer TEXT, id TEXT, PRIMARY KEY (peer, id))")
    written = 0
    with open(out_path, "a", encoding="utf-8") as out:
        for peer in peers:
            cursor = None
            while True:
                q = {"account": account}
                if cursor:
                    q["cursor"] = cursor
                url = f"{base}/x/dm/{peer}/history?{urllib.parse.urlencode(q)}"
                req = urllib.request.Request(url, headers={"x-api-key": "xq_baseline"})
                with urllib.request.urlopen(req) as resp:
                    page = json.load(resp)
                for m in page["messages"]:
                    cur = db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (peer, m["id"]))
                    if cur.rowcount:
                        rec = {"kind": "dm_message", "conversation_user_id": peer, "message_id": m["id"],
                               "sender_id": m["senderId"], "receiver_id": m["receiverId"],
                               "created_at": m.get("createdAt"), "text": m.get("text"),
                               "media_url": m.get("mediaUrl")}
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        written += 1
                db.commit()
                if not page["has_next_page"]:
                    break
                cursor = page["next_cursor"]
    print(written)


if __name__ == "__main__":
    main()
