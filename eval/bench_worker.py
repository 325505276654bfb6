"""One engine of `make bench` in its own process: load, time every grid cell, return the tokens and the peak memory.

    python eval/bench_worker.py JOB.json OUT.json      (run by path: the optimum engine runs it in another venv)

A standalone script on purpose: it imports only the standard library, numpy and the engine's own library, so the same
file runs in the project's venv (torch, OnnxT5, CTranslate2), in the serving venv that holds only what OnnxT5 needs,
and in the optimum venv (transformers < 4.58) without importing anything of the project but `export.runtime` for the
`onnx` engine. A process per engine makes its peak resident memory its own.

JOB.json: {"engine": "torch"|"onnx"|"ctranslate2"|"optimum", "path", "quantized": bool, "threads",
           "inputs": NPZ (arrays ids_<batch>_<length>), "cells": [[batch, beams, length]], "new_tokens",
           "warmup", "repeats", "start_id", "eos_id", "pad_id"}
OUT.json: {"engine", "load_seconds", "memory": {"after_load_mb", "peak_mb"}, "versions",
           "cells": [{"batch_size", "num_beams", "input_length", "latency_ms": {median, p90, min}, "tokens_per_s",
                      "tokens": ids of the last call (N, 1 + new_tokens)}]}
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- engines: generate(ids (B, L) int64, beams, new_tokens) -> (B, 1 + new_tokens) int64 ---------------------------
class TorchEngine:
    def __init__(self, job):
        import torch
        import transformers

        torch.set_num_threads(job["threads"])
        self.torch = torch
        self.model = transformers.T5ForConditionalGeneration.from_pretrained(job["path"], use_safetensors=True).eval()
        self.versions = {"torch": torch.__version__, "transformers": transformers.__version__}

    def generate(self, ids, beams, new_tokens):
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=self.torch.from_numpy(ids), attention_mask=self.torch.ones_like(
                self.torch.from_numpy(ids)), num_beams=beams, do_sample=False, min_new_tokens=new_tokens,
                max_new_tokens=new_tokens)
        return out.numpy()


class OnnxEngine:
    def __init__(self, job):
        runtime = importlib.import_module("export.runtime")  # the project's runtime, by name (see eval/engines.py)
        import onnxruntime

        self.model = runtime.OnnxT5.from_pretrained(job["path"], quantized=job["quantized"], threads=job["threads"])
        self.versions = {"onnxruntime": onnxruntime.__version__, "torch_imported": "torch" in sys.modules}

    def generate(self, ids, beams, new_tokens):
        return self.model.generate(ids, np.ones_like(ids), num_beams=beams, do_sample=False,
                                   min_new_tokens=new_tokens, max_new_tokens=new_tokens)


class CTranslate2Engine:
    """CTranslate2's own decoding; ids are mapped to its vocabulary strings and back (its folder has no tokenizer)."""

    def __init__(self, job):
        import ctranslate2

        folder = Path(job["path"])
        vocab_file = next(f for f in ("shared_vocabulary.json", "shared_vocabulary.txt") if (folder / f).is_file())
        if vocab_file.endswith(".json"):
            self.vocab = json.loads((folder / vocab_file).read_text())
        else:
            self.vocab = (folder / vocab_file).read_text().splitlines()
        self.index = {token: i for i, token in enumerate(self.vocab)}
        self.start = job["start_id"]
        self.model = ctranslate2.Translator(str(folder), device="cpu", compute_type=job["compute_type"],
                                            inter_threads=1, intra_threads=job["threads"])
        self.versions = {"ctranslate2": ctranslate2.__version__, "compute_type": job["compute_type"]}

    def generate(self, ids, beams, new_tokens):
        source = [[self.vocab[i] for i in row] for row in ids.tolist()]
        results = self.model.translate_batch(source, beam_size=beams, max_decoding_length=new_tokens,
                                             min_decoding_length=new_tokens, max_batch_size=0)
        rows = [[self.start] + [self.index[t] for t in r.hypotheses[0]] for r in results]
        width = max(len(r) for r in rows)
        return np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int64)


class OptimumEngine:
    """optimum-onnx's ORTModelForSeq2SeqLM on its own export (fp32) or its own dynamic int8 of it."""

    def __init__(self, job):
        import onnxruntime
        import optimum.onnxruntime as ortopt
        import torch
        import transformers

        torch.set_num_threads(job["threads"])
        self.torch = torch
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = job["threads"]
        options.inter_op_num_threads = 1
        names = {}
        if job["quantized"]:
            names = {"encoder_file_name": "encoder_model_quantized.onnx",
                     "decoder_file_name": "decoder_model_quantized.onnx",
                     "decoder_with_past_file_name": "decoder_with_past_model_quantized.onnx"}
        self.model = ortopt.ORTModelForSeq2SeqLM.from_pretrained(job["path"], session_options=options, use_cache=True,
                                                                 use_merged=False, **names)
        self.versions = {"optimum-onnx": _version("optimum-onnx"), "transformers": transformers.__version__,
                         "onnxruntime": onnxruntime.__version__}

    def generate(self, ids, beams, new_tokens):
        ids_t = self.torch.from_numpy(ids)
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=ids_t, attention_mask=self.torch.ones_like(ids_t), num_beams=beams,
                                      do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens)
        return out.numpy()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


ENGINES = {"torch": TorchEngine, "onnx": OnnxEngine, "ctranslate2": CTranslate2Engine, "optimum": OptimumEngine}


def run(job: dict) -> dict:
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
        seconds = []
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            out = engine.generate(ids, beams, job["new_tokens"])
            seconds.append(time.perf_counter() - t0)
        ms = np.asarray(seconds) * 1000
        cells.append({"batch_size": batch, "num_beams": beams, "input_length": length,
                      "latency_ms": {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                                     "min": float(ms.min())},
                      "tokens_per_s": batch * job["new_tokens"] / float(np.median(seconds)),
                      "tokens": out.tolist()})
        print(f"[{job['name']}] batch {batch:3d} beams {beams} input {length:4d}: {np.median(ms):9.1f} ms",
              file=sys.stderr, flush=True)
    memory["peak_mb"] = peak_rss_mb()
    return {"engine": job["engine"], "name": job["name"], "load_seconds": load_seconds, "memory": memory,
            "versions": engine.versions, "cells": cells}


def quantize_optimum(folder: Path) -> None:
    """optimum's own dynamic int8 of its export (ORTQuantizer), as its documentation does it; `*_quantized.onnx`."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    vnni = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    make = AutoQuantizationConfig.avx512_vnni if vnni else AutoQuantizationConfig.avx2
    config = make(is_static=False, per_channel=False)
    for graph in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):
        ORTQuantizer.from_pretrained(folder, file_name=graph).quantize(save_dir=folder, quantization_config=config)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--optimum-int8":
        quantize_optimum(Path(sys.argv[2]))
        return
    if len(sys.argv) != 3:
        raise SystemExit("usage: python eval/bench_worker.py JOB.json OUT.json | --optimum-int8 FOLDER")
    job = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run(job)) + "\n")


if __name__ == "__main__":
    main()
