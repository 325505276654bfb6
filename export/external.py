"""Graphs over protobuf's 2 GB limit: each graph's weights in one external data file of its own.

A graph whose weights pass `EXTERNAL_DATA_BYTES` is written as `decoder_model.onnx` (the graph, a few MB) beside
`decoder_model.onnx_data` (every weight, one after the other): optimum's naming, which ORTModelForSeq2SeqLM and
transformers.js read. Never one file per tensor (what torch's exporter writes past 2 GB: hundreds of files named
after the tensors, with names such as `model.shared.weight` that two graphs of one folder would both write), and
never a data file shared between graphs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from export.layout import data_name

# protobuf cannot serialise a message of 2 GiB or more; weights above this leave room for the graph itself. Graphs
# under it stay one file, as most users expect; a test lowers it to exercise the external path on a tiny model.
EXTERNAL_DATA_BYTES = 2**31 - 2**28  # 1.75 GiB
SMALL_TENSOR_BYTES = 1024  # tensors under this stay in the graph (shapes, constants), as onnx's own default


def place_graph(traced: Path, dest: Path, threshold: int = EXTERNAL_DATA_BYTES) -> None:
    """Move the graph written alone in its own folder at `traced` (by torch, with one file per tensor past 2 GB; or
    by the quantizer, with its `.onnx.data`) to `dest`: one file when its weights are under `threshold`, else `dest`
    and `dest.name + "_data"`. The folder of `traced` is removed.

    The weights are read into memory once here (the graph's size) and written out again; the torch model is the
    only other large thing alive at that point.
    """
    import onnx

    external = [p for p in traced.parent.iterdir() if p != traced]
    if not external and traced.stat().st_size < threshold:
        traced.replace(dest)
        traced.parent.rmdir()
        return
    model = onnx.load(str(traced), load_external_data=True)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    data = dest.with_name(data_name(dest.name))
    data.unlink(missing_ok=True)  # save_model would append to an existing data file
    if weights < threshold:
        onnx.save_model(model, str(dest))
    else:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=SMALL_TENSOR_BYTES, convert_attribute=True)
    del model
    shutil.rmtree(traced.parent)
