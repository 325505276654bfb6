"""`make bench-gpu` (bench/gpu.sh): OnnxT5 on CUDA against torch bf16 and CTranslate2, and distillation on a GPU.

    bench/gpu.sh                                   # on a GPU machine: the whole run, into bench/results/gpu/
    bench/gpu.sh --models t5-large --no-train      # one part (its own folder, bench/results/gpu/t5-large/)
    bench/gpu.sh --device cpu --limit              # anywhere: a tiny model, batch 1, greedy: proves the run starts

Models, random weights in t5-base's (220M) and t5-large's (738M) shapes, and the default student
(`runs/distill/student`, when it is there). Engines, one at a time on the device, same token ids (random, EOS last,
input 64 tokens), min_new_tokens = max_new_tokens = 32, batch 1, 8, 32, greedy and beam 4:

    torch-bf16            transformers `generate`, the model in bfloat16
    onnx-fp16             OnnxT5 on `python -m export --dtype fp16` graphs, CUDA provider, plain `session.run`
    onnx-fp16-iobinding   the same with IO binding (the cache stays on the device)
    ct2-float16           CTranslate2 on `ct2-transformers-converter --quantization float16`
    ct2-int8_float16      and `--quantization int8_float16`

Each cell: one untimed call, then the median of `--repeats` calls; the share of tokens equal to torch's. A cell that
fails records its error and the run goes on (a GPU's time is short: one failure must not cost the rest). Then the
distillation's steps per second: `python -m distill fit` on configs/distill/sft-gpu.yaml (bf16, accelerator gpu) for
`--train-steps` steps, timed from the end of the first steps by a callback (`StepRate`). Written to `--out`:
results.json (every cell, the versions, the device) and results.md (the tables and the issue's goals as ratios).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml

from bench.errors import BenchError
from bench.shapes import T5_BASE, T5_LARGE, T5_SMALL
from distill.errors import cli_errors
from export.layout import META_FILE

PROG = "bench/gpu.sh"
SHAPES = {"t5-base": T5_BASE, "t5-large": T5_LARGE}
TINY = {**T5_SMALL, "vocab_size": 512, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
        "num_decoder_layers": 2, "num_heads": 4}  # --limit: proves the run starts, measures nothing
ENGINES = ("torch-bf16", "onnx-fp16", "onnx-fp16-iobinding", "ct2-float16", "ct2-int8_float16")
# CTranslate2 refuses float16 compute on CPUs without fp16 arithmetic: --device cpu runs its CPU counterparts
CPU_COMPUTE_TYPES = {"float16": "float32", "int8_float16": "int8"}
Generate = Callable[[np.ndarray, int, int], np.ndarray]  # (ids, beams, new tokens) -> token ids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--limit", action="store_true", help="a tiny model, batch 1, greedy, 4 tokens, 5 train steps")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    parser.add_argument("--work", type=Path, default=Path("bench/work/gpu"), help="models, exports, conversions")
    parser.add_argument("--student", type=Path, default=Path("runs/distill/student"))
    parser.add_argument("--models", nargs="+", default=[*SHAPES, "student"], choices=[*SHAPES, "student"],
                        help="which models (one run per model fits a 10-minute window: t5-large takes the longest)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-config", type=Path, default=Path("configs/distill/sft-gpu.yaml"))
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--data", type=Path, default=None, help="the dataset folder (default: the config's)")
    parser.add_argument("--no-train", action="store_true", help="skip the distillation steps per second")
    args = parser.parse_args(argv)
    if args.limit:
        args.repeats, args.train_steps = 1, 5
    return args


class StepRate(L.Callback):
    """Writes training steps per second to `path`, timed from the end of step `skip` (CUDA start-up, first kernels)."""

    def __init__(self, path: str, skip: int = 2) -> None:
        self.path, self.skip = Path(path), skip
        self.start: float | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.skip:
            self.start = time.perf_counter()
        elif self.start is not None:
            self.steps = trainer.global_step - self.skip
            seconds = time.perf_counter() - self.start
            self.path.write_text(json.dumps({"steps": self.steps, "seconds": seconds,
                                             "steps_per_s": self.steps / seconds}))


def _models(args: argparse.Namespace) -> dict[str, Path]:
    """The models to measure: random ones saved under --work, and the student when it is there."""
    from transformers import T5Config, T5ForConditionalGeneration

    shapes = {"tiny": TINY} if args.limit else {name: SHAPES[name] for name in args.models if name in SHAPES}
    models = {}
    for name, shape in shapes.items():
        folder = args.work / name
        if not (folder / "model.safetensors").is_file():
            T5ForConditionalGeneration(T5Config(**shape)).save_pretrained(folder)
        models[name] = folder
    if not args.limit and "student" in args.models and (args.student / "model.safetensors").is_file():
        models["student"] = args.student
    return models


def _convert(name: str, model: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The fp16 export (made again every run: it is what is measured) and CTranslate2's folders (made once)."""
    import shutil

    from export.exporter import export

    work = args.work / "converted" / name
    onnx = work / "onnx"
    if onnx.exists():
        shutil.rmtree(onnx)
    export(str(model), onnx, dtype="fp16", require_tokenizer=False)
    folders = {"onnx": onnx}
    converter = Path(sys.executable).with_name("ct2-transformers-converter")
    for quantization in ("float16", "int8_float16"):
        folder = work / f"ct2-{quantization}"
        if converter.is_file() and not (folder / "model.bin").is_file():
            subprocess.run([str(converter), "--model", str(model), "--output_dir", str(folder), "--quantization",
                            quantization, "--force"], check=True, capture_output=True)
        folders[f"ct2-{quantization}"] = folder
    return folders


def _engine(engine: str, model: Path, folders: dict[str, Path], device: str) -> Generate:
    """`engine` loaded on `device`, as a function of (ids, beams, new tokens)."""
    if engine == "torch-bf16":
        import torch
        from transformers import T5ForConditionalGeneration

        t5 = T5ForConditionalGeneration.from_pretrained(model, dtype=torch.bfloat16).to(device).eval()

        def run_torch(ids: np.ndarray, beams: int, new: int) -> np.ndarray:
            with torch.no_grad():
                x = torch.from_numpy(ids).to(device)
                return t5.generate(input_ids=x, attention_mask=torch.ones_like(x), num_beams=beams, do_sample=False,
                                   min_new_tokens=new, max_new_tokens=new).cpu().numpy()

        return run_torch
    if engine.startswith("onnx-fp16"):
        from export import OnnxT5

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
        onnx = OnnxT5.from_pretrained(folders["onnx"], providers=providers, dtype="fp16",
                                      io_binding=engine.endswith("iobinding"))
        return lambda ids, beams, new: onnx.generate(ids, np.ones_like(ids), num_beams=beams, do_sample=False,
                                                     min_new_tokens=new, max_new_tokens=new)
    from bench.worker import CTranslate2Engine

    if not (folders[engine] / "model.bin").is_file():
        raise BenchError(f"{engine}: no CTranslate2 conversion (is ctranslate2 installed in {sys.executable}?)")
    compute_type = engine[4:] if device == "cuda" else CPU_COMPUTE_TYPES[engine[4:]]
    ct2 = CTranslate2Engine({"path": str(folders[engine]), "start_id": 0, "compute_type": compute_type,
                             "threads": 0, "device": device})
    return ct2.generate


def _median_ms(fn: Callable[[], np.ndarray], repeats: int, device: str) -> tuple[float, np.ndarray]:
    import torch

    def synced() -> np.ndarray:
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    out = synced()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synced()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, out


def _released(ids: np.ndarray, beams: int, new: int) -> np.ndarray:
    raise BenchError("an engine was used after its memory was released")


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every cell of every model and engine; and each fp16 export's check against fp32 (export_meta.json's
    `precision`: on CUDA, the t5-large-shaped fp16 check of issue 20)."""
    batches, beams_list = ([1], [1]) if args.limit else ([1, 8, 32], [1, 4])
    length, new = (8, 4) if args.limit else (64, 32)
    cells, precision = [], {}
    for name, model in _models(args).items():
        folders = _convert(name, model, args)
        precision[name] = json.loads((folders["onnx"] / META_FILE).read_text())["precision"]
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]
        rng = np.random.default_rng(0)
        inputs = {b: np.concatenate([rng.integers(2, min(vocab, 32000), (b, length - 1)),
                                     np.ones((b, 1), dtype=np.int64)], axis=1) for b in batches}
        reference: dict[tuple[int, int], np.ndarray] = {}
        for engine in ENGINES:
            try:
                generate = _engine(engine, model, folders, args.device)
            except Exception as e:  # noqa: BLE001 (one engine's failure is recorded, the run goes on)
                cells.append({"model": name, "engine": engine, "error": f"{type(e).__name__}: {e}"[:500]})
                continue
            for b in batches:
                for beams in beams_list:
                    cell: dict[str, Any] = {"model": name, "engine": engine, "batch": b, "beams": beams,
                                            "input_tokens": length, "new_tokens": new}
                    try:
                        ms, out = _median_ms(lambda b=b, beams=beams, g=generate, x=inputs: g(x[b], beams, new),
                                             args.repeats, args.device)
                    except Exception as e:  # noqa: BLE001
                        cells.append({**cell, "error": f"{type(e).__name__}: {e}"[:500]})
                        continue
                    want = reference.setdefault((b, beams), out)
                    width = min(want.shape[1], out.shape[1])
                    cells.append({**cell, "ms": round(ms, 2),
                                  "token_agreement_with_torch": float(np.mean(want[:, :width] == out[:, :width]))})
                    print(json.dumps(cells[-1]), flush=True)
            generate = _released
            _free(args.device)
    return cells, precision


def train_rate(args: argparse.Namespace) -> dict[str, Any]:
    """Steps per second of `python -m distill fit` on --train-config, run for --train-steps steps."""
    config = yaml.safe_load(args.train_config.read_text())
    run = args.work / "distill"
    rate = run / "step_rate.json"
    rate.parent.mkdir(parents=True, exist_ok=True)
    rate.unlink(missing_ok=True)
    trainer = config["trainer"]
    trainer.update({"max_steps": args.train_steps, "val_check_interval": args.train_steps, "limit_val_batches": 1,
                    "default_root_dir": str(run), "logger": False, "enable_progress_bar": False})
    trainer["callbacks"] = [{"class_path": "bench.gpu.StepRate", "init_args": {"path": str(rate)}}]
    if args.device == "cpu":
        trainer["accelerator"] = "cpu"
    config["model"]["init_args"]["val_generate_examples"] = 8
    if args.data is not None:
        config["data"]["path"] = str(args.data)
    config["out"] = None
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "distill", "fit", "--config", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0 or not rate.is_file():
        return {"error": (done.stderr or done.stdout)[-1500:]}
    return {"config": str(args.train_config), "accelerator": trainer.get("accelerator"),
            "precision": trainer.get("precision"), **json.loads(rate.read_text())}


def _versions() -> dict[str, Any]:
    import onnxruntime
    import torch

    versions: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                                "onnxruntime": onnxruntime.__version__,
                                "providers": onnxruntime.get_available_providers()}
    if torch.cuda.is_available():
        versions["gpu"] = torch.cuda.get_device_name(0)
    try:
        import ctranslate2

        versions["ctranslate2"] = ctranslate2.__version__
    except ImportError:
        versions["ctranslate2"] = None
    return versions


def render(results: dict[str, Any]) -> str:
    """results.md: one table per model (ms per call, agreement) and the goals as ratios."""
    lines = [f"# GPU run ({results['device']}{', limited' if results['limit'] else ''})", "",
             f"Versions: {json.dumps(results['versions'])}", ""]
    cells = [c for c in results["cells"] if "ms" in c]
    ms = {(c["model"], c["engine"], c["batch"], c["beams"]): c["ms"] for c in cells}
    for model in sorted({c["model"] for c in results["cells"]}):
        lines += [f"## {model}", "", "| engine | batch | beams | ms | tokens equal to torch's |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['engine']} | {c['batch']} | {c['beams']} | {c['ms']} | {c['token_agreement_with_torch']:.3f} |"
                  for c in cells if c["model"] == model]
        lines += [f"- {c['engine']}: **error** {c['error']}" for c in results["cells"]
                  if c["model"] == model and "error" in c]
        lines.append("")
    lines += ["## Goals (batch 1, greedy)", ""]
    for model in sorted({c["model"] for c in cells}):
        onnx, bound = ms.get((model, "onnx-fp16", 1, 1)), ms.get((model, "onnx-fp16-iobinding", 1, 1))
        torch_ms, ct2 = ms.get((model, "torch-bf16", 1, 1)), ms.get((model, "ct2-float16", 1, 1))
        if bound:
            ratios = [f"vs torch bf16 {torch_ms / bound:.2f}x (goal >= 2)" if torch_ms else "",
                      f"vs CTranslate2 float16 {ct2 / bound:.2f}x (goal >= 1.0)" if ct2 else "",
                      f"IO binding vs plain {onnx / bound:.2f}x (goal >= 1.5)" if onnx else ""]
            lines.append(f"- {model}: OnnxT5 fp16 + IO binding " + ", ".join(r for r in ratios if r))
    lines += ["", "fp16 export against fp32 (logits teacher-forced, greedy tokens on the validation batch):", ""]
    lines += [f"- {model}: {json.dumps(p)}" for model, p in results["fp16_vs_fp32"].items()]
    lines += ["", f"Distillation: {json.dumps(results['train'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with cli_errors(PROG):
        if args.device == "cuda":
            import onnxruntime
            import torch

            missing = [what for what, ok in (("torch with CUDA", torch.cuda.is_available()),
                                             ("onnxruntime-gpu", "CUDAExecutionProvider" in
                                              onnxruntime.get_available_providers())) if not ok]
            if missing:
                raise BenchError(f"--device cuda needs {' and '.join(missing)} in {sys.executable}; install them, or "
                                 "run `bench/gpu.sh --device cpu --limit` to check that the run starts.")
        args.out.mkdir(parents=True, exist_ok=True)
        if not args.limit and args.models != [*SHAPES, "student"]:  # one folder per part: bench/results/gpu/t5-large/
            args.out = args.out / "-".join(args.models)
            args.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"device": args.device, "limit": args.limit, "versions": _versions(),
                                   "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])])}
        results["cells"], results["fp16_vs_fp32"] = measure(args)
        results["train"] = None if args.no_train else train_rate(args)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "results.md").write_text(render(results))
    print(f"wrote {args.out / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
