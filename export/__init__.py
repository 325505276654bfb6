"""ONNX export of T5-family models and the runtime that serves it.

`export.exporter` (and `python -m export`) writes the graphs and needs torch and transformers; `OnnxT5`, the runtime
(`export.runtime`), needs only numpy, onnxruntime and tokenizers, so `from export import OnnxT5` imports neither torch
nor transformers. `export.layout` names what an export folder holds, for both.
"""

from export.runtime import OnnxT5

__all__ = ["OnnxT5"]
