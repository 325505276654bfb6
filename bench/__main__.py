"""`make bench`: OnnxT5 against torch, CTranslate2 and optimum on the same weights, inputs, output length and threads.

    python -m bench                        # the full grid (batch 1, 8, 32 x greedy, beam 4 x input 16, 64, 256)
    python -m bench --grid quick           # batch 1 and 8, input 64: a smaller grid, for before/after checks

Models: the default student (`runs/distill/student`), a t5-small-shaped random teacher (6+6 layers, 60.5M parameters)
and its 6->2 student (`python -m distill.student`), all three made or read under `--work` (default bench/work).
Engines, each in its own process (`python -m bench.worker`, bench/worker.py), so that its peak memory is its own:

    torch          transformers `generate`, fp32 (the project venv)
    onnx-fp32      OnnxT5 on `python -m export` graphs, run from a venv that holds only numpy, onnxruntime and
    onnx-int8      tokenizers (.venv-serve): it proves the runtime needs nothing else, and its size is measured
    ct2-int8       CTranslate2 on `ct2-transformers-converter --quantization int8` / `float32`, its own decoding
    ct2-fp32
    optimum-fp32   optimum-onnx's ORTModelForSeq2SeqLM on `optimum-cli export onnx` graphs, and on its own dynamic
    optimum-int8   int8 of them (ORTQuantizer), in a venv of its own (.venv-optimum: it needs transformers < 4.58)

Every engine gets the same token ids (real test verses joined end to end and cut to the input length, EOS last, no
padding), min_new_tokens = max_new_tokens = 32, and the same thread count. Each cell: one untimed call, then the
median of `--repeats` calls. Outputs are compared with torch's, cell by cell (share of equal tokens), so that no engine
wins by decoding something else. Written to bench/results/: results.json, results.md (tables with the ratios against
CTranslate2 int8 and against torch, and the goals), speedup.png. What `make bench` needs and lacks (a venv, the
student) prints one `python -m bench: error: ...` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.shapes import T5_SMALL
from distill.errors import UserError, cli_errors
from eval.report import environment, markdown_table
from eval.speed import fixed_inputs

PROG = "python -m bench"
WORKER = "bench.worker"  # run as `python -m bench.worker` with the repository root on PYTHONPATH, in any of the venvs
ROOT = Path(__file__).resolve().parents[1]
GRIDS = {"full": {"batch_sizes": [1, 8, 32], "num_beams": [1, 4], "input_lengths": [16, 64, 256]},
         "quick": {"batch_sizes": [1, 8], "num_beams": [1, 4], "input_lengths": [64]}}
ENGINES = ("torch", "onnx-fp32", "onnx-int8", "ct2-int8", "ct2-fp32", "optimum-fp32", "optimum-int8")


class BenchError(UserError):
    """Something `make bench` needs and does not have, or a conversion step that failed."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, default=Path("runs/distill/student"),
                        help="the default student (default %(default)s; made by make distill)")
    parser.add_argument("--data", type=Path, default=Path("data/bible"), help="test sources for the inputs")
    parser.add_argument("--tokenizer", type=Path, default=Path("models/teacher"),
                        help="folder whose tokenizer.json makes the input ids (default: the committed teacher's, which "
                             "the default student shares)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="full")
    parser.add_argument("--models", default="student,t5-small-6-2,t5-small-6-6",
                        help="comma-separated subset of student, t5-small-6-2, t5-small-6-6")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for every engine (default %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median reported)")
    parser.add_argument("--work", type=Path, default=Path("bench/work"), help="models and conversions (cached)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--serve-python", type=Path, default=Path(".venv-serve/bin/python"),
                        help="python of the venv holding only what OnnxT5 needs (make bench creates it)")
    parser.add_argument("--optimum-python", type=Path, default=Path(".venv-optimum/bin/python"),
                        help="python of the optimum venv (make bench creates it)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in args.engines if e not in ENGINES] + [
        m for m in args.models if m not in ("student", "t5-small-6-2", "t5-small-6-6")]
    if unknown:
        parser.error(f"unknown model or engine {unknown}")
    if "torch" not in args.engines:
        parser.error("--engines must include torch: every output is checked against it")
    return args


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """A conversion step; its output goes to the console, a failure stops the bench naming the step."""
    print(f"$ {' '.join(map(str, command))}", flush=True)
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit {done.returncode}); see the output above.")


def _worker_env() -> dict[str, str]:
    """The environment of `python -m bench.worker`: the venvs other than the project's find `eval` and `export`
    through PYTHONPATH only."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ---- models and conversions ----------------------------------------------------------------------------------------
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
            _run([sys.executable, "-m", "distill.student", "--teacher", str(small), "--decoder-layers", "2",
                  "--out", str(student)], "making the t5-small-shaped 6->2 student")
        models["t5-small-6-2"] = student
    return models


def convert(name: str, model: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Each engine's folder for `model` under work/<name>/: our export every run, the peers' made on first use."""
    work = args.work / "converted" / name
    folders = {}
    if {"onnx-fp32", "onnx-int8"} & set(args.engines):
        onnx = work / "onnx"  # made again on every run: the export is what this bench measures
        _run([sys.executable, "-m", "export", "--model", str(model), "--out", str(onnx), "--int8"],
             f"exporting {name} with python -m export")
        folders["onnx"] = onnx
    for engine, quantization in (("ct2-int8", "int8"), ("ct2-fp32", "float32")):
        if engine in args.engines:
            folder = work / engine
            if not (folder / "model.bin").is_file():
                converter = Path(sys.executable).with_name("ct2-transformers-converter")
                _run([str(converter), "--model", str(model), "--output_dir", str(folder), "--quantization",
                      quantization, "--force"], f"converting {name} with ct2-transformers-converter")
            folders[engine] = folder
    if {"optimum-fp32", "optimum-int8"} & set(args.engines):
        folder = work / "optimum"
        if not (folder / "decoder_with_past_model_quantized.onnx").is_file():
            cli = args.optimum_python.with_name("optimum-cli")
            _run([str(cli), "export", "onnx", "--model", str(model), "--task", "text2text-generation-with-past",
                  str(folder)], f"exporting {name} with optimum-cli")
            _run([str(args.optimum_python), "-m", WORKER, "--optimum-int8", str(folder)],
                 f"quantizing {name}'s optimum export with ORTQuantizer", _worker_env())
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


# ---- measuring -----------------------------------------------------------------------------------------------------
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
    _run([python, "-m", WORKER, str(job_file), str(out_file)], f"{model}/{engine}", _worker_env())
    return json.loads(out_file.read_text())


def agreement(got: list[list[int]], want: list[list[int]]) -> float:
    """Share of positions where the two outputs hold the same token (0 where shapes differ)."""
    a, b = np.asarray(got), np.asarray(want)
    return float(np.mean(a == b)) if a.shape == b.shape else 0.0


def summarize(results: dict[str, Any]) -> None:
    """Ratios per cell: against torch and against CTranslate2 int8 (median over median), and token agreement."""
    for model in results["models"].values():
        engines = model["engines"]
        for i, cell in enumerate(engines["torch"]["cells"]):
            base = cell["latency_ms"]["median"]
            ct2 = engines.get("ct2-int8", {}).get("cells", [None] * (i + 1))[i]
            for engine in engines.values():
                c = engine["cells"][i]
                c["vs_torch"] = base / c["latency_ms"]["median"]
                c["vs_ct2_int8"] = ct2["latency_ms"]["median"] / c["latency_ms"]["median"] if ct2 else None
                c["agreement_with_torch"] = agreement(c["tokens"], cell["tokens"])


def _cell(results: dict[str, Any], model: str, engine: str, batch: int, beams: int, length: int
          ) -> dict[str, Any] | None:
    engines = results["models"].get(model, {}).get("engines", {})
    cells = engines.get(engine, {}).get("cells", [])
    return next((c for c in cells if (c["batch_size"], c["num_beams"], c["input_length"]) == (batch, beams, length)),
                None)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with its measured ratio (None when a needed engine or model was not run)."""
    length = 64 if 64 in results["grid"]["input_lengths"] else results["grid"]["input_lengths"][0]
    rows = []

    def ratio(model_a: str, engine_a: str, model_b: str, engine_b: str, batch: int, beams: int) -> float | None:
        a, b = _cell(results, model_a, engine_a, batch, beams, length), _cell(results, model_b, engine_b, batch,
                                                                               beams, length)
        return None if a is None or b is None else b["latency_ms"]["median"] / a["latency_ms"]["median"]

    for what, value, target in (
            ("t5-small 6-2, batch 1 greedy: OnnxT5 int8 vs CTranslate2 int8",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-2", "ct2-int8", 1, 1), 1.25),
            ("t5-small 6-2, batch 1 greedy: OnnxT5 int8 vs optimum int8",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-2", "optimum-int8", 1, 1), 2.0),
            ("t5-small 6-2, batch 8 beam 4: OnnxT5 int8 vs CTranslate2 int8",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-2", "ct2-int8", 8, 4), 1.0),
            ("batch 1 greedy: torch teacher 6-6 -> OnnxT5 int8 student 6-2",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-6", "torch", 1, 1), 8.0),
            ("default student, batch 1 greedy: OnnxT5 int8 vs CTranslate2 int8",
             ratio("student", "onnx-int8", "student", "ct2-int8", 1, 1), None)):
        rows.append({"goal": what, "input_length": length, "ratio": value, "target": target,
                     "met": None if value is None or target is None else value >= target})
    slower = [(m, e, c["batch_size"], c["num_beams"], c["input_length"], c["vs_torch"])
              for m, model in results["models"].items() for e, engine in model["engines"].items()
              if e.startswith("onnx") for c in engine["cells"] if c["vs_torch"] < 1.0]
    rows.append({"goal": "no cell where OnnxT5 is slower than torch on the same model", "ratio": len(slower),
                 "target": 0, "met": not slower, "cells": slower})
    small = results["models"].get("t5-small-6-2", {}).get("engines", {}).get("onnx-int8")
    teacher = results["models"].get("t5-small-6-6", {}).get("engines", {}).get("torch")
    if small and teacher:
        mem = small["memory"]["peak_mb"] / teacher["memory"]["peak_mb"]
        rows.append({"goal": "peak RSS: OnnxT5 int8 student 6-2 / torch teacher 6-6", "ratio": mem, "target": 0.35,
                     "met": mem <= 0.35, "lower_is_better": True})
    venv = results.get("venvs", {}).get("serve_venv")
    if venv:
        mb = venv["bytes"] / 1e6
        rows.append({"goal": "venv holding only what OnnxT5 needs, MB", "ratio": mb, "target": 200, "met": mb <= 200,
                     "lower_is_better": True})
    return rows


# ---- report ----------------------------------------------------------------------------------------------------------
def render(results: dict[str, Any]) -> str:
    """results.md: the goals, then per model the latency table (ratios, agreement) and the memory table."""
    lines = [f"# make bench, {results['created']}", "",
             f"{results['environment']['cpu']}, {results['threads']} threads; {results['new_tokens']} new tokens "
             "forced (min = max); median of the timed calls; ratios = other latency / this latency (> 1: faster).",
             ""]
    lines += ["## Goals", "", markdown_table(
        ["goal", "input tokens", "measured", "target", "met"],
        [[g["goal"], g.get("input_length"), g["ratio"], g["target"],
          None if g["met"] is None else ("yes" if g["met"] else "**no**")] for g in results["goals"]]), ""]
    for model, data in results["models"].items():
        lines += [f"## {model} ({data['path']})", ""]
        rows = []
        for engine, e in data["engines"].items():
            for c in e["cells"]:
                rows.append([c["batch_size"], "greedy" if c["num_beams"] == 1 else f"beam {c['num_beams']}",
                             c["input_length"], engine, c["latency_ms"]["median"], c["tokens_per_s"],
                             f"{c['vs_torch']:.2f}x", None if c["vs_ct2_int8"] is None else f"{c['vs_ct2_int8']:.2f}x",
                             c["agreement_with_torch"]])
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        lines += [markdown_table(["batch", "decoding", "input", "engine", "median ms", "tokens/s", "vs torch",
                                  "vs ct2 int8", "same tokens as torch"], rows), ""]
        mem = [[engine, e["memory"]["after_load_mb"], e["memory"]["peak_mb"], e["load_seconds"]]
               for engine, e in data["engines"].items()]
        lines += [markdown_table(["engine", "RSS after load MiB", "peak RSS MiB", "load s"], mem), ""]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """speedup.png: every engine's speed-up against torch generate, cell by cell, one panel per model."""
    from matplotlib.figure import Figure

    models = list(results["models"])
    fig = Figure(figsize=(6 * len(models), 4.5), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        engines = results["models"][model]["engines"]
        labels = [f"b{c['batch_size']} {'g' if c['num_beams'] == 1 else 'b' + str(c['num_beams'])} "
                  f"{c['input_length']}" for c in engines["torch"]["cells"]]
        width = 0.8 / len(engines)
        for k, (engine, e) in enumerate(engines.items()):
            ax.bar(np.arange(len(labels)) + k * width, [c["vs_torch"] for c in e["cells"]], width, label=engine)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=60, fontsize=7)
        ax.set_ylabel("speed-up vs torch generate")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def run(argv: list[str] | None = None) -> None:
    """The whole bench of the module docstring; raises BenchError for what it needs and lacks."""
    args = parse_args(argv)
    grid = GRIDS[args.grid]
    venvs = check_venvs(args)
    models = make_models(args)
    cells = [[b, k, n] for b in grid["batch_sizes"] for k in grid["num_beams"] for n in grid["input_lengths"]]
    results = {"schema_version": 1, "created": datetime.now(UTC).isoformat(timespec="seconds"),
               "command": f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:]),
               "environment": environment(args.threads), "threads": args.threads, "new_tokens": args.new_tokens,
               "repeats": args.repeats, "grid": grid, "venvs": venvs, "models": {}}
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench.") as tmp:
        tmp = Path(tmp)
        for name, folder in models.items():
            folders = convert(name, folder, args)
            config = json.loads((folder / "config.json").read_text())
            inputs = inputs_file(args, grid, tmp, config["eos_token_id"])
            results["models"][name] = {"path": str(folder), "engines": {
                engine: run_engine(engine, name, folders, folder, cells, inputs, args, config, tmp)
                for engine in args.engines}}
    summarize(results)
    results["goals"] = goals(results)
    results["seconds"] = time.perf_counter() - start
    for model in results["models"].values():  # the tokens served their purpose (agreement); keep the file small
        for engine in model["engines"].values():
            for c in engine["cells"]:
                c.pop("tokens")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render(results)
    (args.out / "results.md").write_text(report)
    plot(results, args.out / "speedup.png")
    print(report)
    print(f"bench: {args.out / 'results.md'} ({results['seconds'] / 60:.1f} min)")


def main(argv: list[str] | None = None) -> None:
    with cli_errors(PROG):
        run(argv)


if __name__ == "__main__":
    main()
