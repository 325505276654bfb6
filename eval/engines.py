"""What a variant runs on: one `Engine` per kind, all with transformers' `generate` signature and numpy in and out.

- `torch`: `T5ForConditionalGeneration` (safetensors only, through `distill.models.load_t5`) and transformers'
  `generate`.
- `torch-int8`: the same model after `torch.ao.quantization.quantize_dynamic` of every `nn.Linear` (int8 weights,
  activations quantized on the fly): PyTorch's own answer to "make it faster on CPU".
- `onnx`: the project's `OnnxT5` runtime (fp32 graphs, or the int8 or int4 ones with `quantized`).
- `onnx-assisted`: the same, generating with a draft model's export as `assistant=` (assisted decoding: the model's
  own output, several tokens per model call).

Every engine tokenizes with the variant folder's `tokenizer.json` through `tokenizers`, so no variant pays for (or
differs by) a tokenizer implementation. The libraries an engine needs are imported inside its loader, and this module
imports only the standard library and numpy at the top: a torch worker never imports onnxruntime, an ONNX worker never
imports torch or transformers (its memory is what serving it costs), and `python -m bench.worker` can load these
engines in a venv that holds only numpy, onnxruntime and tokenizers. Engines are loaded in the variant's own worker
process (`eval.worker`, `bench.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Engine(Protocol):
    pad_id: int
    eos_ids: list[int]
    tokenizer: Any  # tokenizers.Tokenizer; None when loaded without one
    size_bytes: int | None  # bytes of the weights as they are stored (or would be, for torch-int8)
    files: list[str]  # what size_bytes counts
    info: dict[str, Any]  # library versions, threads

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, **kwargs: Any) -> np.ndarray: ...


def load_tokenizer(path: str, hub: bool = False) -> Any:
    """The `tokenizers.Tokenizer` of a variant: `tokenizer.json` of its folder, or of its hub repository."""
    from tokenizers import Tokenizer

    if hub:
        return Tokenizer.from_pretrained(path)
    file = Path(path).expanduser() / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: the evaluation tokenizes with each variant's own "
                                "tokenizer.json (save_pretrained of a fast tokenizer writes one).")
    return Tokenizer.from_file(str(file))


def _ids(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


@dataclass
class TorchEngine:
    model: Any
    tokenizer: Any
    size_bytes: int | None
    files: list[str]
    pad_id: int = field(init=False)
    eos_ids: list[int] = field(init=False)
    info: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        import torch
        import transformers

        config, generation = self.model.config, self.model.generation_config
        self.pad_id = config.pad_token_id
        self.eos_ids = _ids(generation.eos_token_id if generation.eos_token_id is not None else config.eos_token_id)
        self.info = {"torch": torch.__version__, "transformers": transformers.__version__,
                     "threads": torch.get_num_threads(), "quantized_engine": torch.backends.quantized.engine}

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, **kwargs: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.generate(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(
                attention_mask), **kwargs)
        return out.numpy()


def _load_torch(path: str, hub: bool, int8: bool, threads: int, tokenizer: bool) -> TorchEngine:
    import torch

    from distill.models import load_t5

    torch.set_num_threads(threads)
    model = load_t5(path).eval()
    folder = Path(path).expanduser()
    weights = [] if hub else sorted(folder.glob("*.safetensors"))
    size, files = (sum(p.stat().st_size for p in weights), [p.name for p in weights]) if weights else (None, [])
    if int8:
        import io
        import warnings

        with warnings.catch_warnings():
            # torch.ao.quantization and its qint8 tensors are deprecated in favour of torchao (not a dependency); the
            # eager dynamic API still works in every torch that pyproject admits (<= 2.14.1)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)  # nothing is stored: this is what saving the int8 model would take
        size, files = buffer.getbuffer().nbytes, ["(torch.save of the quantized state_dict, in memory)"]
    return TorchEngine(model, load_tokenizer(path, hub) if tokenizer else None, size, files)


@dataclass
class OnnxEngine:
    model: Any  # export.OnnxT5
    tokenizer: Any
    size_bytes: int
    files: list[str]
    pad_id: int
    eos_ids: list[int]
    info: dict[str, Any]
    draft: Any = None  # export.OnnxT5 drafting for `model` (onnx-assisted)

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, **kwargs: Any) -> np.ndarray:
        if self.draft is not None:
            kwargs = {**kwargs, "assistant": self.draft}
        return self.model.generate(input_ids, attention_mask, **kwargs)


def _load_onnx(path: str, quantized: bool | str, threads: int, tokenizer: bool,
               draft: str | None = None) -> OnnxEngine:
    # imported here, not at the top: `export` brings onnxruntime, which a torch worker must not load
    import onnxruntime

    from export import OnnxT5

    def served(runtime: OnnxT5) -> list[Path]:
        """The files `runtime` serves from (`OnnxT5.served_files`)."""
        return [runtime.folder / name for name in runtime.served_files()]

    model = OnnxT5.from_pretrained(path, quantized=quantized, threads=threads)
    files = served(model)
    assistant = None
    if draft is not None:
        assistant = OnnxT5.from_pretrained(draft, quantized=quantized, threads=threads)
        files += served(assistant)
    size = sum(f.stat().st_size for f in files)
    return OnnxEngine(model, load_tokenizer(path) if tokenizer else None, size, [str(f) for f in files],
                      model.settings.pad_token_id, _ids(model.settings.eos_token_id),
                      {"onnxruntime": onnxruntime.__version__, "threads": threads, "quantized": quantized,
                       "draft": draft}, assistant)


def load_engine(kind: str, path: str, quantized: bool | str = False, hub: bool = False, threads: int = 1,
                tokenizer: bool = True, draft: str | None = None) -> Engine:
    """The engine of a variant kind (`torch`, `torch-int8`, `onnx`, `onnx-assisted` with its `draft` export), with
    the folder's tokenizer unless `tokenizer` is false (the benchmark feeds token ids, and its random models may have
    no tokenizer.json)."""
    if kind == "onnx-assisted" and draft is None:
        raise ValueError("an onnx-assisted variant needs its draft model's export folder (draft)")
    if kind in ("onnx", "onnx-assisted"):
        return _load_onnx(path, quantized, threads, tokenizer, draft if kind == "onnx-assisted" else None)
    if kind in ("torch", "torch-int8"):
        return _load_torch(path, hub, kind == "torch-int8", threads, tokenizer)
    raise ValueError(f"unknown variant kind {kind!r}")
