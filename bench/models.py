"""What the bench runs on: its models (made or read under `--work`), each engine's conversion of them, the venvs.

The shapes users bring, with random weights in their published configurations (`configs/models`, built by
`distill.published`: every cost is the real model's, the outputs are meaningless) and their students made by
`distill.student`, beside the default student the project trains. The larger shapes get the quick grid unless
`--grid full` asks for the full one everywhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.configs import Config
from bench.errors import BenchError
from bench.steps import WORKER, run_step, worker_env
from export.layout import META_FILE


@dataclass(frozen=True)
class Model:
    name: str
    published: str | None  # a configs/models name: built with random weights; None: the trained default student
    teacher: str | None = None  # a student of this model (by name), made with distill.student
    decoder_layers: int | None = None
    grid: str = "full"  # the grid this shape gets by default ("quick" for the larger shapes)


MODELS = {m.name: m for m in (
    Model("student", None),
    Model("t5-small-6-6", "t5-small"),
    Model("t5-small-6-2", None, "t5-small-6-6", 2),
    Model("t5-base-12-12", "t5-base", grid="quick"),
    Model("t5-base-12-3", None, "t5-base-12-12", 3, grid="quick"),
    Model("mt5-small-8-8", "mt5-small", grid="quick"),
    Model("mt5-small-8-2", None, "mt5-small-8-8", 2, grid="quick"),
)}


def make_models(args: argparse.Namespace) -> dict[str, Path]:
    """The folder of every model in `args.models`, built on first use (a student's teacher first)."""
    folders: dict[str, Path] = {}

    def folder(name: str) -> Path:
        model = MODELS[name]
        if name == "student":
            if not (args.student / "model.safetensors").is_file():
                raise BenchError(f"no student at {args.student}. Make it with `make distill`.")
            return args.student
        out = args.work / "models" / name
        if not (out / "model.safetensors").is_file():
            if model.published is not None:
                run_step([sys.executable, "-m", "distill.published", "--config", model.published, "--out", str(out)],
                         f"building {name} with random weights")
            else:
                teacher = folder(str(model.teacher))
                run_step([sys.executable, "-m", "distill.student", "--teacher", str(teacher), "--decoder-layers",
                          str(model.decoder_layers), "--out", str(out)], f"making the {name} student")
        return out

    for name in args.models:
        folders[name] = folder(name)
    return folders


def convert(name: str, model: Path, configs: list[Config], args: argparse.Namespace
            ) -> tuple[dict[str, Path], dict[str, str]]:
    """Each configuration's folder for `model` under work/converted/<name>/: our export every run, the peers' on
    first use. Returns the folders made and, per folder kind that could not be made, the reason (a peer's converter
    failing on a shape is a result to report, not a reason to stop the bench)."""
    work = args.work / "converted" / name
    kinds = {c.folder for c in configs}
    folders: dict[str, Path] = {"source": model}
    failed: dict[str, str] = {}

    def attempt(kind: str, make: Any) -> None:
        try:
            folders[kind] = make()
        except BenchError as err:
            failed[kind] = str(err)

    if "onnx" in kinds:
        def ours() -> Path:
            onnx = work / "onnx"  # made again on every run: the export is what this bench measures
            if (onnx / META_FILE).is_file():  # this bench's own earlier export, possibly by an older exporter
                shutil.rmtree(onnx)
            int4 = ["--int4"] if any(c.job.get("quantized") == "int4" for c in configs) else []
            run_step([sys.executable, "-m", "export", "--model", str(model), "--out", str(onnx), "--int8", *int4],
                     f"exporting {name} with python -m export")
            return onnx
        folders["onnx"] = ours()  # ours must work: a failure stops the bench
    for kind, quantization in (("ct2-int8", "int8"), ("ct2-fp32", "float32")):
        if kind in kinds:
            def ct2(kind: str = kind, quantization: str = quantization) -> Path:
                out = work / kind
                if not (out / "model.bin").is_file():
                    converter = Path(sys.executable).with_name("ct2-transformers-converter")
                    run_step([str(converter), "--model", str(model), "--output_dir", str(out), "--quantization",
                              quantization, "--force"], f"converting {name} with ct2-transformers-converter")
                return out
            attempt(kind, ct2)
    if "ort-beam" in kinds:
        def ort_beam() -> Path:
            out = work / "ort-beam"
            run_step([sys.executable, "-m", "bench.ort_beam", "--model", str(model), "--out", str(out)],
                     f"building {name}'s onnxruntime BeamSearch graph")
            return out
        attempt("ort-beam", ort_beam)
    if {"optimum", "optimum-int8"} & kinds:
        def optimum() -> Path:
            out = work / "optimum"
            if not (out / "decoder_with_past_model.onnx").is_file():
                cli = args.optimum_python.with_name("optimum-cli")
                run_step([str(cli), "export", "onnx", "--model", str(model), "--task",
                          "text2text-generation-with-past", str(out)], f"exporting {name} with optimum-cli")
            return out
        attempt("optimum", optimum)
    if "optimum-int8" in kinds and "optimum" in folders:
        def optimum_int8() -> Path:
            out = work / "optimum-int8"
            if not (out / "decoder_with_past_model.onnx").is_file():
                run_step([str(args.optimum_python), "-m", WORKER, "--optimum-int8", str(folders["optimum"]),
                          str(out)], f"quantizing {name}'s optimum export with ORTQuantizer", worker_env())
            return out
        attempt("optimum-int8", optimum_int8)
    return folders, failed


def check_venvs(args: argparse.Namespace, configs: list[Config]) -> dict[str, Any]:
    """The serving and optimum venvs exist when a configuration needs them; the serving venv's size on disk."""
    info = {}
    pythons = {"serve": args.serve_python, "optimum": args.optimum_python}
    for venv, python in pythons.items():
        if any(c.venv == venv for c in configs) and not python.is_file():
            raise BenchError(f"{python} does not exist; `make bench` creates the {venv} venv "
                             "(or leave those engines out with --engines).")
    if args.serve_python.is_file():
        root = args.serve_python.parents[1]
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        packages = subprocess.run([sys.executable, "-m", "pip", "--python", str(args.serve_python), "list",
                                   "--format", "json"],
                                  capture_output=True, text=True, check=False).stdout
        info["serve_venv"] = {"path": str(root), "bytes": size,
                              "packages": {p["name"]: p["version"] for p in json.loads(packages or "[]")}}
    return info
