"""One engine configuration on one model: the shared input ids, and `python -m bench.worker` in the configuration's
venv and environment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.configs import Config
from bench.errors import BenchError
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


def python_for(config: Config, args: argparse.Namespace) -> str:
    """The python of the venv `config` runs in."""
    pythons = {"project": sys.executable, "serve": str(args.serve_python), "optimum": str(args.optimum_python)}
    return pythons[config.venv]


def worker_job(config: Config, model: str, folder: Path, cells: list[list[int]], inputs: Path,
               args: argparse.Namespace, model_config: dict[str, Any], repeats: int | None = None) -> dict[str, Any]:
    """What `bench.worker` (or `bench.served`) is told to load and run: `config` on `model`'s converted `folder`."""
    return {"name": f"{model}/{config.name}", "engine": config.worker, "path": str(folder), "threads": args.threads,
            "inputs": str(inputs), "cells": cells, "new_tokens": args.new_tokens, "warmup": 1,
            "repeats": repeats or args.repeats, "min_seconds": args.min_seconds, "max_repeats": args.max_repeats,
            "start_id": model_config["decoder_start_token_id"], "eos_id": model_config["eos_token_id"],
            "pad_id": model_config["pad_token_id"], **config.job}


def run_config(config: Config, model: str, folder: Path, cells: list[list[int]], inputs: Path,
               args: argparse.Namespace, model_config: dict[str, Any], tmp: Path, repeats: int | None = None
               ) -> dict[str, Any]:
    """`config` on `model` (its converted `folder`) over `cells`, in `python -m bench.worker` with the configuration's
    venv and environment: the worker's OUT.json, or {"error": ...} when the worker fails (a peer configuration that
    cannot run a shape is reported, not fatal; ours failing is)."""
    job = worker_job(config, model, folder, cells, inputs, args, model_config, repeats)
    job_file, out_file = tmp / f"{model}-{config.name}.job.json", tmp / f"{model}-{config.name}.json"
    job_file.write_text(json.dumps(job))
    out_file.unlink(missing_ok=True)
    try:
        run_step([python_for(config, args), "-m", WORKER, str(job_file), str(out_file)], f"{model}/{config.name}",
                 {**worker_env(), **config.env})
    except BenchError as err:
        if config.family == "onnx":
            raise
        return {"error": str(err)}
    return json.loads(out_file.read_text())
