"""The bench's child processes: a step whose failure stops the bench, and the environment of `bench.worker`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.errors import BenchError

WORKER = "bench.worker"  # run as `python -m bench.worker` with the repository root on PYTHONPATH, in any of the venvs
ROOT = Path(__file__).resolve().parents[1]


def run_step(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """A step of the bench (a conversion, an engine's worker); its output goes to the console, a failure stops the
    bench naming the step."""
    print(f"$ {' '.join(map(str, command))}", flush=True)
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit {done.returncode}); see the output above.")


def worker_env() -> dict[str, str]:
    """The environment of `python -m bench.worker`: the venvs other than the project's find `eval` and `export`
    through PYTHONPATH only."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}
