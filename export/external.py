"""Moving a graph that keeps its weights in an external data file, under the folder's naming.

Every graph of an export keeps its weights in a data file of its own named after it, optimum's naming
(`decoder_model.onnx` + `decoder_model.onnx_data`; `export.weights` writes the fp32 ones). onnxruntime's quantizer
names its output's file `decoder_model_quantized.onnx.data`; `move_graph` renames it and rewrites the graph's
references, without reading the weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from export.layout import data_name


def move_graph(src: Path, dest: Path) -> None:
    """Move the graph at `src` and the one data file its tensors name to `dest` and `data_name(dest.name)`; the
    folder of `src`, which held nothing else, is removed. The data file gets the graph file's permissions (onnx writes
    it readable by its owner alone)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    locations = {entry.value for t in model.graph.initializer for entry in t.external_data if entry.key == "location"}
    if len(locations) > 1:
        raise ValueError(f"{src} keeps its weights in several files ({sorted(locations)}); expected one")
    target = dest.with_name(data_name(dest.name))
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = target.name
    onnx.save_model(model, str(dest))
    if locations:
        (src.parent / locations.pop()).replace(target)
        os.chmod(target, os.stat(dest).st_mode & 0o777)
    shutil.rmtree(src.parent)
