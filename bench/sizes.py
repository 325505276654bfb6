"""Export and runtime memory at the sizes users bring: peak RSS against the bytes of the weights, per shape.

    python -m bench.sizes --configs mt5-small,mt5-base,t5-large --json runs/bench-sizes/results.json

For each published configuration (`configs/models/`): the random-weight model is built once
(`python -m distill.published`), exported with `python -m export --int8` in a child process, then loaded by OnnxT5
(fp32, then int8) in a fresh child process that runs one batch-1 greedy call of 32 new tokens. Each child's peak RSS
comes from the kernel (`os.wait4`), so nothing of this process is counted. Ratios are against the fp32 bytes of the
weights (the export's and the fp32 runtime's) and against the bytes the int8 graphs serve (1 byte per quantized
weight, 4 per weight kept fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from transformers import AutoConfig

from bench.errors import BenchError
from distill.errors import cli_errors
from distill.published import parameter_bytes, read_config
from export.exporter import default_keep_fp32
from export.resources import int8_weight_bytes

GREEDY = """
import numpy as np, sys
from export import OnnxT5
model = OnnxT5.from_pretrained(sys.argv[1], quantized=sys.argv[2] == "int8")
ids = np.array([[37, 80, 95, 120, 300, 41, 1]], dtype=np.int64)
model.generate(ids, np.ones_like(ids), max_new_tokens=32, min_new_tokens=32)
"""


def peak_rss(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run `cmd` (output to `log`); its peak RSS in bytes and its seconds. RuntimeError when it fails."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        last = log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"{' '.join(cmd)} failed ({last[0]}); see {log}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def measure(name: str, work: Path) -> dict:
    fields = read_config(name)
    model_dir, export_dir = work / "models" / name, work / "exports" / name
    if not (model_dir / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "distill.published", "--config", name, "--out", str(model_dir)],
                       check=True)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    rss, seconds = peak_rss([sys.executable, "-m", "export", "--model", str(model_dir), "--out", str(export_dir),
                             "--int8"], work / f"{name}-export.log")
    weights = parameter_bytes(fields)
    keep = default_keep_fp32(AutoConfig.from_pretrained(model_dir))
    row = {"config": name, "weights_gb": weights / 1e9, "export_peak_gb": rss / 1e9, "export_ratio": rss / weights,
           "export_minutes": seconds / 60, "int8_keep_fp32": list(keep),
           "folder_gb": sum(p.stat().st_size for p in export_dir.iterdir()) / 1e9}
    for precision, served in (("fp32", weights), ("int8", int8_weight_bytes(fields, keep))):
        rss, _ = peak_rss([sys.executable, "-c", GREEDY, str(export_dir), precision], work / f"{name}-{precision}.log")
        row |= {f"runtime_{precision}_peak_gb": rss / 1e9, f"runtime_{precision}_ratio": rss / served,
                f"served_{precision}_gb": served / 1e9}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="mt5-small,mt5-base,t5-large",
                        help="comma-separated names in configs/models")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-sizes"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with cli_errors("python -m bench.sizes"):
        args.work.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in args.configs.split(","):
            rows.append(measure(name.strip(), args.work))
            r = rows[-1]
            print(f"{r['config']}: weights {r['weights_gb']:.2f} GB; export peak {r['export_peak_gb']:.2f} GB "
                  f"({r['export_ratio']:.2f}x) in {r['export_minutes']:.1f} min; OnnxT5 fp32 peak "
                  f"{r['runtime_fp32_peak_gb']:.2f} GB ({r['runtime_fp32_ratio']:.2f}x), int8 "
                  f"{r['runtime_int8_peak_gb']:.2f} GB ({r['runtime_int8_ratio']:.2f}x of "
                  f"{r['served_int8_gb']:.2f} GB)", flush=True)
            if args.json:  # after each shape: a later one that fails or is interrupted keeps the earlier rows
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
