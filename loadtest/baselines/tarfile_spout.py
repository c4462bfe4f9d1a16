#!/usr/bin/env python3
"""The spout pattern the Pachyderm 1.x docs teach, as a baseline for the sidecar.

For each message: open the spout's named pipe, write a tar stream holding the
message as one file with `tarfile`, close the stream and the pipe (closing is what
makes the commit). With --per-commit N, N messages share one archive instead.

A write can fail with "broken pipe": Pachyderm's reader closes the pipe after each
archive and opens it again, and an open that lands just before that close leaves
the writer with no reader. Nothing of that archive was read (the reader had seen
the end of the last one), so the spout writes it again, as its users must.

The messages are the load generator's own (loadtest/src/msg.rs), so the harness
checks this baseline's output exactly as it checks the sidecar's:

    LT <run:8 hex> <id:16 hex> <len:8 hex> <crc:8 hex> : <filler>

crc is zlib.crc32 of the first 34 bytes followed by the filler. Prints
{"messages": N, "seconds": S, "broken_pipe_retries": R} when done.
"""

import argparse
import io
import json
import random
import tarfile
import time
import zlib

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._"
HEADER_LEN = 43


def make_message(run, msg_id, size, pool):
    filler = pool[msg_id % 4096 : msg_id % 4096 + max(size, HEADER_LEN) - HEADER_LEN]
    signed = b"LT%08x%016x%08x" % (run, msg_id, HEADER_LEN + len(filler))
    crc = zlib.crc32(filler, zlib.crc32(signed))
    return signed + b"%08x:" % crc + filler


def write_commit(fifo, messages):
    # As the docs show it: one open of /pfs/out, one tar stream, one close per commit.
    with open(fifo, "wb") as pipe:
        with tarfile.open(fileobj=pipe, mode="w|", encoding="utf-8") as tar:
            for name, data in messages:
                info = tarfile.TarInfo(name=name)
                info.size = len(data)
                info.mtime = time.time()
                tar.addfile(info, io.BytesIO(data))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fifo", required=True, help="the spout's named pipe (/pfs/out in a pipeline)")
    parser.add_argument("--seconds", type=float, required=True, help="how long to keep writing")
    parser.add_argument("--size", type=int, default=100, help="message size in bytes (at least 43)")
    parser.add_argument("--run", type=lambda s: int(s, 0), required=True, help="the run tag of the messages")
    parser.add_argument("--per-commit", type=int, default=1, help="messages per archive (the docs: 1)")
    args = parser.parse_args()

    rng = random.Random(args.run)
    pool = bytes(rng.choice(ALPHABET) for _ in range(args.size + 4096))
    started = time.monotonic()
    deadline = started + args.seconds
    sent = retries = 0
    while time.monotonic() < deadline:
        batch = []
        for _ in range(args.per_commit):
            batch.append(("msg-%020d" % sent, make_message(args.run, sent, args.size, pool)))
            sent += 1
        while True:
            try:
                write_commit(args.fifo, batch)
                break
            except BrokenPipeError:
                retries += 1
    print(json.dumps({"messages": sent, "seconds": time.monotonic() - started, "broken_pipe_retries": retries}))


if __name__ == "__main__":
    main()
