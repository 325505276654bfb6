"""One engine of `make bench` in its own process: load, time every grid cell, return the tokens and the peak memory.

    python -m bench.worker JOB.json OUT.json          (PYTHONPATH: the repository root)
    python -m bench.worker --optimum-int8 FOLDER      optimum's own dynamic int8 of its export

`python -m bench` runs it with three pythons: the project venv's (torch, CTranslate2), the serving venv's, which holds
only numpy, onnxruntime and tokenizers (OnnxT5: it proves the runtime needs nothing else), and the optimum venv's
(transformers < 4.58). So besides the standard library and numpy it imports only `eval.engines` and `eval.memory`,
which import nothing more at the top, and the engine's own library when it loads: the torch and onnx engines are the
evaluation's own (`eval.engines`), CTranslate2 and optimum are defined here. A process per engine makes its peak
resident memory its own.

JOB.json: {"engine": "torch"|"onnx"|"ctranslate2"|"optimum", "path", "quantized": bool, "threads",
           "inputs": NPZ (arrays ids_<batch>_<length>), "cells": [[batch, beams, length]], "new_tokens",
           "warmup", "repeats", "start_id", "eos_id", "pad_id"}
OUT.json: {"engine", "load_seconds", "memory": {"after_load_mb", "peak_mb"}, "versions",
           "cells": [{"batch_size", "num_beams", "input_length", "latency_ms": {median, p90, min}, "tokens_per_s",
                      "tokens": ids of the last call (N, 1 + new_tokens)}]}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eval.engines import load_engine
from eval.memory import peak_rss_mb


class BenchEngine(Protocol):
    versions: dict[str, Any]

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        """(B, L) int64 ids without padding -> (B, 1 + new_tokens) int64, exactly `new_tokens` generated."""
        ...


class EvalEngine:
    """The evaluation's torch or OnnxT5 engine (`eval.engines`), fed token ids: no tokenizer is loaded."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.engine = load_engine(job["engine"], job["path"], quantized=job["quantized"], threads=job["threads"],
                                  tokenizer=False)
        info = self.engine.info
        if job["engine"] == "torch":
            self.versions = {"torch": info["torch"], "transformers": info["transformers"]}
        else:
            self.versions = {"onnxruntime": info["onnxruntime"], "torch_imported": "torch" in sys.modules}

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        return self.engine.generate(ids, np.ones_like(ids), num_beams=beams, do_sample=False,
                                    min_new_tokens=new_tokens, max_new_tokens=new_tokens)


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
        self.versions = {"ctranslate2": ctranslate2.__version__, "compute_type": job["compute_type"]}

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        source = [[self.vocab[i] for i in row] for row in ids.tolist()]
        results = self.model.translate_batch(source, beam_size=beams, max_decoding_length=new_tokens,
                                             min_decoding_length=new_tokens, max_batch_size=0)
        rows = [[self.start] + [self.index[t] for t in r.hypotheses[0]] for r in results]
        width = max(len(r) for r in rows)
        return np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int64)


class OptimumEngine:
    """optimum-onnx's ORTModelForSeq2SeqLM on its own export (fp32) or its own dynamic int8 of it."""

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
        names = {}
        if job["quantized"]:
            names = {"encoder_file_name": "encoder_model_quantized.onnx",
                     "decoder_file_name": "decoder_model_quantized.onnx",
                     "decoder_with_past_file_name": "decoder_with_past_model_quantized.onnx"}
        self.model = ortopt.ORTModelForSeq2SeqLM.from_pretrained(job["path"], session_options=options, use_cache=True,
                                                                 use_merged=False, **names)
        self.versions = {"optimum-onnx": package_version("optimum-onnx"), "transformers": transformers.__version__,
                         "onnxruntime": onnxruntime.__version__}

    def generate(self, ids: np.ndarray, beams: int, new_tokens: int) -> np.ndarray:
        ids_t = self.torch.from_numpy(ids)
        with self.torch.inference_mode():
            out = self.model.generate(input_ids=ids_t, attention_mask=self.torch.ones_like(ids_t), num_beams=beams,
                                      do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens)
        return out.numpy()


ENGINES: dict[str, type[BenchEngine]] = {"torch": EvalEngine, "onnx": EvalEngine, "ctranslate2": CTranslate2Engine,
                                         "optimum": OptimumEngine}


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="JOB.json OUT.json")
    parser.add_argument("--optimum-int8", type=Path, metavar="FOLDER", help="quantize optimum's export in FOLDER")
    args = parser.parse_args(argv)
    if args.optimum_int8 is not None and not args.files:
        quantize_optimum(args.optimum_int8)
        return
    if len(args.files) != 2 or args.optimum_int8 is not None:
        parser.error("give JOB.json OUT.json, or --optimum-int8 FOLDER alone")
    job, out = args.files
    out.write_text(json.dumps(run(json.loads(job.read_text()))) + "\n")


if __name__ == "__main__":
    main()
