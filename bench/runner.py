"""One engine on one model: the shared input ids, and `python -m bench.worker` in the engine's venv."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.steps import WORKER, run_step, worker_env
from eval.speed import fixed_inputs


def inputs_file(args: argparse.Namespace, grid: dict[str, list[int]], folder: Path, eos_id: int) -> Path:
    """The token ids of every (batch, input length) of the grid, shared by all engines: `inputs.npz` in `folder`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    rows = [json.loads(line) for line in (args.data / "test.jsonl").read_text().splitlines()[:400]]
    sources = [e.ids for e in tokenizer.encode_batch(["translate English to French: " + r["en"] for r in rows])]
    arrays = {f"ids_{b}_{n}": fixed_inputs(sources, b, n, eos_id)[0]
              for b in grid["batch_sizes"] for n in grid["input_lengths"]}
    path = folder / "inputs.npz"
    np.savez(path, **arrays)
    return path


def run_engine(engine: str, model: str, folders: dict[str, Path], source: Path, cells: list[list[int]], inputs: Path,
               args: argparse.Namespace, config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """One engine on one model, in `python -m bench.worker` with the engine's venv; the worker's OUT.json."""
    kind, _, precision = engine.partition("-")
    quantized = precision == "int8"
    python = sys.executable
    path = {"torch": source, "onnx": folders.get("onnx"), "ct2": folders.get(engine),
            "optimum": folders.get("optimum")}[kind]
    if kind == "onnx":
        python = str(args.serve_python)
    elif kind == "optimum":
        python = str(args.optimum_python)
    job = {"name": f"{model}/{engine}", "engine": {"ct2": "ctranslate2"}.get(kind, kind), "path": str(path),
           "quantized": quantized, "compute_type": "int8" if quantized else "float32", "threads": args.threads,
           "inputs": str(inputs), "cells": cells, "new_tokens": args.new_tokens, "warmup": 1,
           "repeats": args.repeats, "start_id": config["decoder_start_token_id"], "eos_id": config["eos_token_id"],
           "pad_id": config["pad_token_id"]}
    job_file, out_file = tmp / f"{model}-{engine}.job.json", tmp / f"{model}-{engine}.json"
    job_file.write_text(json.dumps(job))
    run_step([python, "-m", WORKER, str(job_file), str(out_file)], f"{model}/{engine}", worker_env())
    return json.loads(out_file.read_text())
