"""The bench's child processes: a step whose failure stops the bench, and the environment of `bench.worker`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.errors import BenchError

WORKER = "bench.worker"  # run as `python -m bench.worker` with the repository root on PYTHONPATH, in any of the venvs
ROOT = Path(__file__).resolve().parents[1]


def run_step(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """A step of the bench (a conversion, an engine's worker); its output goes to the console as it comes, and a
    failure raises BenchError naming the step and the last line it printed (the exception of a Python child)."""
    print(f"$ {' '.join(map(str, command))}", flush=True)
    last = ""
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as child:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            if line.strip():
                last = line.strip()
    sys.stdout.flush()
    if child.returncode != 0:
        raise BenchError(f"{what} failed (exit {child.returncode}): {last[-300:]}")


def worker_env() -> dict[str, str]:
    """The environment of `python -m bench.worker`: the venvs other than the project's find `eval` and `export`
    through PYTHONPATH only."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}
