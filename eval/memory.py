"""Peak resident memory of the current process: what the evaluation and the benchmark workers report as their own.

Standard library only: the benchmark runs it in venvs that hold none of the project's dependencies.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB.

    Linux: VmHWM of /proc/self/status, the peak of this address space. Not ru_maxrss: at exec the kernel carries the
    parent's high-water mark over into the child's ru_maxrss, so every worker started from a parent that had imported
    torch would report the parent's peak. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS) is all there is.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
