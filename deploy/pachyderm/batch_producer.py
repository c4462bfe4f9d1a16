"""Example producer for the spout 2.x pipeline (spout-v2.json): NDJSON batches, acknowledged.

Sends PRODUCER_BATCH events per request as newline-delimited JSON and waits for the
commit (`?wait=commit`): once the answer arrives, the events are in a PFS commit and
survive any crash, so a real producer would acknowledge its upstream source here.

PRODUCER_COUNT stops after that many requests (0, the default, runs forever as a
spout does); PRODUCER_INTERVAL is the pause between requests in seconds.
"""

import itertools
import json
import os
import time

from spout_client import post


def main():
    count = int(os.environ.get("PRODUCER_COUNT", "0"))
    batch = int(os.environ.get("PRODUCER_BATCH", "100"))
    interval = float(os.environ.get("PRODUCER_INTERVAL", "1"))
    requests_sent = itertools.count() if count == 0 else range(count)
    for r in requests_sent:
        lines = (json.dumps({"request": r, "event": e, "time": time.time()}) for e in range(batch))
        answer = post(("\n".join(lines) + "\n").encode(), "application/x-ndjson", wait_commit=True)
        print(f"request {r}: {answer['accepted']} events in commit {answer['commit']}", flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main()
