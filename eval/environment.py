"""The environment a run measured in: CPU, cores, memory, load, platform, threads and library versions."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distill.files import package_version

LIBRARIES = ("torch", "transformers", "tokenizers", "onnxruntime", "numpy", "sacrebleu", "rouge-score", "datasets",
             "matplotlib")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def environment(threads: int) -> dict[str, Any]:
    """Where and with what the run measured: read before the workers start (the load average says how busy)."""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "memory_gib": _memory_gib(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(), "threads": threads,
            "libraries": {name: package_version(name) for name in LIBRARIES}}
