"""The engine configurations `make bench` measures: each engine the way a user would try it, so that every engine is
compared at its best.

A configuration names its family (ours, `onnx`, or a peer's), the worker engine that runs it (`bench.worker`), the
venv it runs in, the converted folder it reads, what the worker is told (compute type, autocast, merged decoder) and
the environment variables it needs at import time (CTranslate2 reads `CT2_USE_MKL` when it loads its library).

Why these:
- CTranslate2 uses MKL only on CPUs that report as genuine Intel unless `CT2_USE_MKL=1` is set, and oneDNN otherwise
  (its `src/cpu/backend.cc`); its packed GEMM is MKL-only. Which is faster depends on the CPU, so both are measured,
  with every compute type it offers on CPU. A compute type the CPU lacks (bfloat16 on most) falls back to another: the
  worker records the type CTranslate2 actually used.
- optimum with its fp32 export and its own dynamic int8 (ORTQuantizer), with the two decoders or the merged one.
- torch fp32, under bf16 autocast, and `torch.ao` dynamic int8 (every nn.Linear).
- onnxruntime's own beam-search graph (`onnxruntime.transformers.convert_generation`), where it can be built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OURS = "onnx"  # the family that is ours; every other family is a peer
REFERENCE = "torch"  # the configuration every output is compared with (transformers' generate, fp32)


@dataclass(frozen=True)
class Config:
    name: str  # e.g. "ct2-int8_float32-mkl"
    family: str  # "onnx", "torch", "ct2", "optimum", "ort-beam"
    worker: str  # the engine kind of `bench.worker`: "onnx", "torch", "ctranslate2", "optimum", "ort-beam"
    venv: str  # "project", "serve" (numpy, onnxruntime, tokenizers only) or "optimum"
    folder: str  # the folder it reads: "source" (the model), "onnx", "ct2-int8", "ct2-fp32", "optimum",
    # "optimum-int8", "ort-beam"
    job: dict[str, Any] = field(default_factory=dict)  # what the worker is told besides the common keys
    env: dict[str, str] = field(default_factory=dict)  # set in the worker's environment before it imports anything


def _ct2() -> list[Config]:
    configs = []
    for compute_type in ("int8", "int8_float32", "float32", "bfloat16"):
        folder = "ct2-int8" if compute_type.startswith("int8") else "ct2-fp32"  # the weights it would be converted to
        for mkl in (False, True):  # named by the backend it forces: neither is the default on every CPU
            configs.append(Config(f"ct2-{compute_type}-{'mkl' if mkl else 'onednn'}", "ct2", "ctranslate2", "project",
                                  folder, {"compute_type": compute_type}, {"CT2_USE_MKL": "1" if mkl else "0"}))
    return configs


CONFIGS: tuple[Config, ...] = (
    Config("torch", "torch", "torch", "project", "source"),
    Config("torch-bf16", "torch", "torch", "project", "source", {"autocast": "bfloat16"}),
    Config("torch-int8", "torch", "torch-int8", "project", "source"),
    Config("onnx-fp32", OURS, "onnx", "serve", "onnx"),
    Config("onnx-int8", OURS, "onnx", "serve", "onnx", {"quantized": "int8"}),
    Config("onnx-int4", OURS, "onnx", "serve", "onnx", {"quantized": "int4"}),
    *_ct2(),
    Config("optimum-fp32", "optimum", "optimum", "optimum", "optimum"),
    Config("optimum-int8", "optimum", "optimum", "optimum", "optimum-int8"),
    Config("optimum-fp32-merged", "optimum", "optimum", "optimum", "optimum", {"merged": True}),
    Config("optimum-int8-merged", "optimum", "optimum", "optimum", "optimum-int8", {"merged": True}),
    # onnxruntime's one-graph search runs with onnxruntime and numpy only: the serving venv, as OnnxT5
    Config("ort-beam", "ort-beam", "ort-beam", "serve", "ort-beam"),
)
BY_NAME = {c.name: c for c in CONFIGS}


def select(names: list[str]) -> list[Config]:
    """The configurations named (in CONFIGS' order); a family name that is no configuration's name stands for all of
    the family's configurations (`torch` is torch fp32 alone)."""
    families = {c.family for c in CONFIGS} - set(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME and n not in families]
    if unknown:
        raise ValueError(f"unknown engine configuration {unknown}; choose among {', '.join(BY_NAME)} or the "
                         f"families {', '.join(sorted(families))}")
    return [c for c in CONFIGS if c.name in names or (c.family in names and c.family in families)]
