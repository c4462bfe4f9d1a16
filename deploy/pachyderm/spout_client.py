"""The few lines a producer needs to talk to spout-sidecar, standard library only.

`spout-sidecar -- CMD` sets SPOUT_URL for CMD; a separate-container deployment sets it
in the pod spec. PRODUCER_TOKEN_FILE, when set, names the file holding the bearer
token the sidecar requires once it listens beyond loopback (the same file as its
--auth-token-file; the sidecar passes none of its own SPOUT_* settings to CMD).
"""

import json
import os
import time
import urllib.error
import urllib.request

# Overload answers are worth waiting out; anything else is the producer's bug.
MAX_OVERLOAD_RETRIES = 30


def _token():
    path = os.environ.get("PRODUCER_TOKEN_FILE")
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()


def post(body, content_type="application/octet-stream", file_name=None, wait_commit=False):
    """POST one request to /messages and return the sidecar's JSON answer.

    A 503 (buffer full or draining) is retried after its Retry-After; with
    wait_commit the answer carries the commit id once the batch is committed.
    """
    url = os.environ["SPOUT_URL"].rstrip("/") + "/messages"
    if wait_commit:
        url += "?wait=commit"
    headers = {"Content-Type": content_type}
    if file_name:
        headers["Spout-File"] = file_name
    token = _token()
    if token:
        headers["Authorization"] = "Bearer " + token
    for _ in range(MAX_OVERLOAD_RETRIES):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as err:
            if err.code != 503:
                raise RuntimeError(f"spout-sidecar answered {err.code}: {err.read().decode()}") from err
            time.sleep(float(err.headers.get("Retry-After", "1")))
    raise RuntimeError(f"spout-sidecar stayed overloaded for {MAX_OVERLOAD_RETRIES} tries")
