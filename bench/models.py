"""What the bench runs on: its models (made or read under `--work`), each engine's conversion of them, the venvs."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.shapes import T5_SMALL
from bench.steps import WORKER, run_step, worker_env
from export.layout import META_FILE


def make_models(args: argparse.Namespace) -> dict[str, Path]:
    models = {}
    if "student" in args.models:
        if not (args.student / "model.safetensors").is_file():
            raise BenchError(f"no student at {args.student}. Make it with `make distill`.")
        models["student"] = args.student
    small = args.work / "t5-small-6-6"
    if {"t5-small-6-6", "t5-small-6-2"} & set(args.models) and not (small / "model.safetensors").is_file():
        import torch
        from transformers import T5Config, T5ForConditionalGeneration

        torch.manual_seed(0)
        T5ForConditionalGeneration(T5Config(**T5_SMALL)).save_pretrained(small)
        for name in ("tokenizer.json", "tokenizer_config.json"):  # text in, ids out: the student's 8k vocabulary
            shutil.copy(args.tokenizer / name, small / name)  # fits inside t5-small's 32,128 ids
    if "t5-small-6-6" in args.models:
        models["t5-small-6-6"] = small
    if "t5-small-6-2" in args.models:
        student = args.work / "t5-small-6-2"
        if not (student / "model.safetensors").is_file():
            run_step([sys.executable, "-m", "distill.student", "--teacher", str(small), "--decoder-layers", "2",
                  "--out", str(student)], "making the t5-small-shaped 6->2 student")
        models["t5-small-6-2"] = student
    return models


def convert(name: str, model: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Each engine's folder for `model` under work/<name>/: our export every run, the peers' made on first use."""
    work = args.work / "converted" / name
    folders = {}
    if {"onnx-fp32", "onnx-int8"} & set(args.engines):
        onnx = work / "onnx"  # made again on every run: the export is what this bench measures
        if (onnx / META_FILE).is_file():  # this bench's own earlier export, possibly by an older exporter
            shutil.rmtree(onnx)
        run_step([sys.executable, "-m", "export", "--model", str(model), "--out", str(onnx), "--int8"],
             f"exporting {name} with python -m export")
        folders["onnx"] = onnx
    for engine, quantization in (("ct2-int8", "int8"), ("ct2-fp32", "float32")):
        if engine in args.engines:
            folder = work / engine
            if not (folder / "model.bin").is_file():
                converter = Path(sys.executable).with_name("ct2-transformers-converter")
                run_step([str(converter), "--model", str(model), "--output_dir", str(folder), "--quantization",
                      quantization, "--force"], f"converting {name} with ct2-transformers-converter")
            folders[engine] = folder
    if {"optimum-fp32", "optimum-int8"} & set(args.engines):
        folder = work / "optimum"
        if not (folder / "decoder_with_past_model_quantized.onnx").is_file():
            cli = args.optimum_python.with_name("optimum-cli")
            run_step([str(cli), "export", "onnx", "--model", str(model), "--task", "text2text-generation-with-past",
                  str(folder)], f"exporting {name} with optimum-cli")
            run_step([str(args.optimum_python), "-m", WORKER, "--optimum-int8", str(folder)],
                 f"quantizing {name}'s optimum export with ORTQuantizer", worker_env())
        folders["optimum"] = folder
    return folders


def check_venvs(args: argparse.Namespace) -> dict[str, Any]:
    """The serving and optimum venvs exist; the serving venv's size on disk."""
    info = {}
    needs = {"serve": ({"onnx-fp32", "onnx-int8"}, args.serve_python),
             "optimum": ({"optimum-fp32", "optimum-int8"}, args.optimum_python)}
    for venv, (engines, python) in needs.items():
        if engines & set(args.engines) and not python.is_file():
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
