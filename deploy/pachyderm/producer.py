"""Example producer for the spout 1.x pipeline (spout-v1.json): one file per event.

Each reading becomes its own file, `readings/<sequence>.json`, so downstream
pipelines can glob them one by one. Fire and forget: a 202 means the sidecar holds
the message and will commit it within --max-batch-age.

PRODUCER_COUNT stops after that many events (0, the default, runs forever as a
spout does); PRODUCER_INTERVAL is the pause between events in seconds.
"""

import itertools
import json
import os
import socket
import time

from spout_client import post


def main():
    count = int(os.environ.get("PRODUCER_COUNT", "0"))
    interval = float(os.environ.get("PRODUCER_INTERVAL", "1"))
    sequence = itertools.count() if count == 0 else range(count)
    for n in sequence:
        reading = {"host": socket.gethostname(), "seq": n, "time": time.time()}
        post(json.dumps(reading).encode(), "application/json", file_name=f"readings/{n:012d}.json")
        time.sleep(interval)


if __name__ == "__main__":
    main()
