"""One engine of `make bench` in its own process: load, time every grid cell, return the tokens and the peak memory.

    python -m bench.worker JOB.json OUT.json          (PYTHONPATH: the repository root)
    python -m bench.worker --optimum-int8 FOLDER OUT  optimum's own dynamic int8 of its export

`python -m bench` runs it with three pythons: the project venv's (torch, CTranslate2), the serving venv's, which holds
only numpy, onnxruntime and tokenizers (OnnxT5: it proves the runtime needs nothing else), and the optimum venv's
(transformers < 4.58). So besides the standard library and numpy it imports only `eval.engines` and `eval.memory`,
which import nothing more at the top, and the engine's own library when it loads: the torch and onnx engines are the
evaluation's own (`eval.engines`), CTranslate2 and optimum are defined here. A process per engine makes its peak
resident memory its own.

JOB.json: {"engine": "torch"|"torch-int8"|"onnx"|"ctranslate2"|"optimum"|"ort-beam", "path", "threads",
           "inputs": NPZ (arrays ids_<batch>_<length>), "cells": [[batch, beams, length]], "new_tokens",
           "warmup", "repeats", "min_seconds", "max_repeats", "start_id", "eos_id", "pad_id",
           and the configuration's own keys (`bench.configs`): "quantized", "compute_type", "autocast", "merged"}
OUT.json: {"engine", "load_seconds", "memory": {"after_load_mb", "peak_mb"}, "versions",
           "cells": [{"batch_size", "num_beams", "input_length", "latency_ms": {median, p90, min}, "calls",
                      "tokens_per_s", "tokens": ids of the last call (N, 1 + new_tokens)}]}

Each cell: `warmup` untimed calls, then at least `repeats` timed calls, and more while the timed calls add up to less
than `min_seconds` (at most `max_repeats`): a fast cell's median then rests on enough calls that a scheduler hiccup
cannot move it, while a slow cell costs no more than `repeats` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bench.ort_beam import OrtBeamEngine
from eval.engines import load_engine
from eval.memory import peak_rss_mb


class BenchEngine(Protocol):
    versions: dict[str, Any]

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        """(B, L) int64 ids without padding -> (B, 1 + new_tokens) int64, exactly `new_tokens` generated."""
        ...


class EvalEngine:
    """The evaluation's torch, torch-int8 or OnnxT5 engine (`eval.engines`), fed token ids: no tokenizer is loaded.
    torch with `"autocast": "bfloat16"` generates under `torch.autocast` (the weights stay fp32)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.engine = load_engine(job["engine"], job["path"], quantized=job.get("quantized", False),
                                  threads=job["threads"], tokenizer=False)
        self.autocast = job.get("autocast")
        info = self.engine.info
        if job["engine"].startswith("torch"):
            self.versions = {"torch": info["torch"], "transformers": info["transformers"], "autocast": self.autocast}
        else:
            self.versions = {"onnxruntime": info["onnxruntime"], "torch_imported": "torch" in sys.modules}

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        kwargs = {"num_beams": beams, "do_sample": False, "min_new_tokens": new_tokens, "max_new_tokens": new_tokens}
        if self.autocast is None:
            return self.engine.generate(ids, np.ones_like(ids), **kwargs)
        import torch

        with torch.autocast("cpu", dtype=getattr(torch, self.autocast)):
            return self.engine.generate(ids, np.ones_like(ids), **kwargs)


class CTranslate2Engine:
    """CTranslate2's own decoding; ids are mapped to its vocabulary strings and back (its folder has no tokenizer)."""

    def __init__(self, job: dict[str, Any]) -> None:
        import ctranslate2

        folder = Path(job["path"])
        vocab_file = next(f for f in ("shared_vocabulary.json", "shared_vocabulary.txt") if (folder / f).is_file())
        if vocab_file.endswith(".json"):
            self.vocab = json.loads((folder / vocab_file).read_text())
        else:
            self.vocab = (folder / vocab_file).read_text().splitlines()
        self.index = {token: i for i, token in enumerate(self.vocab)}
        self.start = job["start_id"]
        self.model = ctranslate2.Translator(str(folder), device=job.get("device", "cpu"),
                                            compute_type=job["compute_type"], inter_threads=1,
                                            intra_threads=job["threads"])
        # a compute type the CPU lacks falls back to another one: the type it runs is what the bench reports
        self.versions = {"ctranslate2": ctranslate2.__version__, "compute_type": job["compute_type"],
                         "compute_type_used": self.model.compute_type,
                         "use_mkl": os.environ.get("CT2_USE_MKL", "")}

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        source = [[self.vocab[i] for i in row] for row in ids.tolist()]
        results = self.model.translate_batch(source, beam_size=beams, max_decoding_length=new_tokens,
                                             min_decoding_length=new_tokens, max_batch_size=0)
        rows = [[self.start] + [self.index[t] for t in r.hypotheses[0]] for r in results]
        width = max(len(r) for r in rows)
        return np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int64)


class OptimumEngine:
    """optimum-onnx's ORTModelForSeq2SeqLM on its own export (fp32) or on its own dynamic int8 of it (another folder,
    the same file names), with its two decoders or (`"merged": true`) the merged one."""

    def __init__(self, job: dict[str, Any]) -> None:
        import onnxruntime
        import optimum.onnxruntime as ortopt
        import torch
        import transformers

        from distill.files import package_version

        torch.set_num_threads(job["threads"])
        self.torch = torch
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = job["threads"]
        options.inter_op_num_threads = 1
        merged = job.get("merged", False)  # the folder holds both forms under optimum's standard names
        self.model = ortopt.ORTModelForSeq2SeqLM.from_pretrained(job["path"], session_options=options, use_cache=True,
                                                                 use_merged=merged)
        self.versions = {"optimum-onnx": package_version("optimum-onnx"), "transformers": transformers.__version__,
                         "onnxruntime": onnxruntime.__version__, "merged": merged}

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        ids_t = self.torch.from_numpy(ids)
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=ids_t, attention_mask=self.torch.ones_like(ids_t), num_beams=beams,
                                      do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens)
        return out.numpy()


ENGINES: dict[str, type[BenchEngine]] = {"torch": EvalEngine, "torch-int8": EvalEngine, "onnx": EvalEngine,
                                         "ctranslate2": CTranslate2Engine, "optimum": OptimumEngine,
                                         "ort-beam": OrtBeamEngine}


def timed_calls(call: Any, repeats: int, min_seconds: float, max_repeats: int) -> tuple[list[float], Any]:
    """Seconds of each timed call: at least `repeats`, more until they add up to `min_seconds`, at most
    `max_repeats`; and the last call's result."""
    seconds: list[float] = []
    out = None
    while len(seconds) < max(repeats, 1) or (sum(seconds) < min_seconds and len(seconds) < max_repeats):
        t0 = time.perf_counter()
        out = call()
        seconds.append(time.perf_counter() - t0)
    return seconds, out


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Everything OUT.json holds, for the engine and cells JOB.json names (see the module docstring)."""
    start = time.perf_counter()
    engine = ENGINES[job["engine"]](job)
    load_seconds = time.perf_counter() - start
    memory = {"after_load_mb": peak_rss_mb()}
    inputs = np.load(job["inputs"])
    cells = []
    for batch, beams, length in job["cells"]:
        ids = inputs[f"ids_{batch}_{length}"]
        for _ in range(job["warmup"]):
            engine.generate(ids, beams, job["new_tokens"])
        seconds, out = timed_calls(lambda ids=ids, beams=beams: engine.generate(ids, beams, job["new_tokens"]),
                                   job["repeats"], job.get("min_seconds", 0.0), job.get("max_repeats", job["repeats"]))
        ms = np.asarray(seconds) * 1000
        cells.append({"batch_size": batch, "num_beams": beams, "input_length": length,
                      "latency_ms": {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                                     "min": float(ms.min())}, "calls": len(seconds),
                      "tokens_per_s": batch * job["new_tokens"] / float(np.median(seconds)),
                      "tokens": out.tolist()})
        print(f"[{job['name']}] batch {batch:3d} beams {beams} input {length:4d}: {np.median(ms):9.1f} ms "
              f"({len(seconds)} calls)",
              file=sys.stderr, flush=True)
    memory["peak_mb"] = peak_rss_mb()
    return {"engine": job["engine"], "name": job["name"], "load_seconds": load_seconds, "memory": memory,
            "versions": engine.versions, "cells": cells}


def quantize_optimum(folder: Path, out: Path) -> None:
    """optimum's own dynamic int8 of its export in `folder` (ORTQuantizer, as its documentation does it), into `out`
    under the export's own file names, so that ORTModelForSeq2SeqLM picks the merged or the two decoders there as it
    does in the fp32 folder."""
    import shutil

    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    vnni = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    make = AutoQuantizationConfig.avx512_vnni if vnni else AutoQuantizationConfig.avx2
    config = make(is_static=False, per_channel=False)
    staged = out.with_name(out.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for graph in sorted(folder.glob("*.onnx")):
        ORTQuantizer.from_pretrained(folder, file_name=graph.name).quantize(save_dir=staged,
                                                                            quantization_config=config)
        (staged / graph.name.replace(".onnx", "_quantized.onnx")).rename(staged / graph.name)
    for other in folder.iterdir():
        if other.is_file() and other.suffix != ".onnx" and not other.name.endswith((".onnx_data", ".onnx.data")):
            shutil.copy(other, staged / other.name)
    shutil.rmtree(out, ignore_errors=True)
    staged.rename(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="JOB.json OUT.json")
    parser.add_argument("--optimum-int8", type=Path, nargs=2, metavar=("FOLDER", "OUT"),
                        help="quantize optimum's export in FOLDER into OUT")
    args = parser.parse_args(argv)
    if args.optimum_int8 is not None and not args.files:
        quantize_optimum(*args.optimum_int8)
        return
    if len(args.files) != 2 or args.optimum_int8 is not None:
        parser.error("give JOB.json OUT.json, or --optimum-int8 FOLDER OUT alone")
    job, out = args.files
    out.write_text(json.dumps(run(json.loads(job.read_text()))) + "\n")


if __name__ == "__main__":
    main()
