"""The peak resident memory of loading one graph into an onnxruntime session, against the bytes of its data file.

    python -m bench.load_peak runs/export/student decoder_model_merged.onnx decoder_with_past_model.onnx

Each graph is loaded in a fresh child process (VmHWM only grows), with the session options OnnxT5 serves with
(`export.runtime.sessions.session_options`); `--no-prepack` sets onnxruntime's `session.disable_prepacking`, which
shows what prepacking the MatMul weights adds to the peak: a mapped data file is only read where a kernel packs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.errors import BenchError
from distill.errors import cli_errors
from export.layout import data_name

CHILD = """
import json, sys
import onnxruntime as ort
from export.runtime.sessions import session_options
options = session_options()
if sys.argv[2] == "1":
    options.add_session_config_entry("session.disable_prepacking", "1")
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({key: int(status[key].split()[0]) * 1024 for key in ("VmHWM", "VmRSS")}))
"""


def load_peak(graph: Path, prepack: bool = True) -> dict[str, float]:
    """Peak and resident GB of a fresh process after creating a session on `graph`, and its data file's GB."""
    if not graph.is_file():
        raise BenchError(f"{graph}: no such graph; export the model first (python -m export --model M --out FOLDER).")
    done = subprocess.run([sys.executable, "-c", CHILD, str(graph), "0" if prepack else "1"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise BenchError(f"loading {graph} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    data = graph.parent / data_name(graph.name)
    return {"peak_gb": rss["VmHWM"] / 1e9, "resident_gb": rss["VmRSS"] / 1e9,
            "data_gb": data.stat().st_size / 1e9 if data.is_file() else 0.0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load_peak", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="an export folder")
    parser.add_argument("graphs", nargs="+", help="graph file names in it")
    parser.add_argument("--no-prepack", action="store_true", help="set onnxruntime's session.disable_prepacking")
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        for name in args.graphs:
            row = load_peak(args.folder / name, prepack=not args.no_prepack)
            print(f"{name}: peak {row['peak_gb']:.2f} GB, resident after loading {row['resident_gb']:.2f} GB, "
                  f"data file {row['data_gb']:.2f} GB", flush=True)


if __name__ == "__main__":
    main()
