"""One engine of the bench kept loaded in its own process, timing blocks of calls on request: `bench.paired`'s side.

    python -m bench.served JOB.json          (PYTHONPATH: the repository root; any of the bench's venvs)

JOB.json is `bench.worker`'s (its "cells", "repeats" and timing keys are not read). Once loaded, the process writes one
JSON line, {"ready": true, "load_seconds", "versions"}, then answers each request line read from stdin,
{"cell": [batch, beams, input_length], "calls": N}, with one line {"seconds": [N floats], "tokens": the last call's
ids}; it exits at the end of stdin. Replies go to the stdout the process started with; whatever the engine's libraries
print goes to stderr, so that no log line can be taken for a reply.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

import numpy as np

from bench.worker import ENGINES, BenchEngine, timed_calls


def answer(engine: BenchEngine, inputs: Any, new_tokens: int, request: dict[str, Any]) -> dict[str, Any]:
    """The seconds of each of the request's calls, one after the other, and the last call's tokens."""
    batch, beams, length = request["cell"]
    ids = inputs[f"ids_{batch}_{length}"]
    calls = int(request["calls"])
    seconds, out = timed_calls(lambda: engine.generate(ids, beams, new_tokens), calls, 0.0, calls)
    return {"seconds": seconds, "tokens": out.tolist()}


def serve(job: dict[str, Any], requests: TextIO, replies: TextIO) -> None:
    """Load the job's engine, say so, then answer every request line until the end of `requests`."""
    start = time.perf_counter()
    engine = ENGINES[job["engine"]](job)
    inputs = np.load(job["inputs"])
    replies.write(json.dumps({"ready": True, "load_seconds": time.perf_counter() - start,
                              "versions": engine.versions}) + "\n")
    replies.flush()
    for line in requests:
        if line.strip():
            replies.write(json.dumps(answer(engine, inputs, job["new_tokens"], json.loads(line))) + "\n")
            replies.flush()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m bench.served JOB.json")
    with open(args[0]) as f:
        job = json.load(f)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print or log on stdout reaches stderr
    sys.stdout = sys.stderr
    serve(job, sys.stdin, replies)


if __name__ == "__main__":
    main()
