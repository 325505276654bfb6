"""The weights of a traced graph, written into its external data file one tensor at a time.

torch's TorchScript exporter builds the whole ONNX protobuf in memory, weights included, and serialises it again
into bytes: a graph costs about three times its weights while it is written (constant-folded copies, the protobuf,
its bytes), on top of the model itself. So the graphs are traced without their weights (`export_params=False`: each
parameter becomes a graph input named after it, e.g. `model.decoder.block.0.layer.0.SelfAttention.q.weight`) and
`attach_weights` turns those inputs into initializers whose bytes it appends to `decoder_model.onnx_data` straight from
the torch tensors. The one fold torch would have done on them, `Transpose` of a 2-D weight before each MatMul
(nn.Linear's x @ W.T), is done here, tensor by tensor; onnxruntime folds what remains (shapes, the position-bias
arithmetic) when it loads the graph, as it would have before.

Every graph keeps its weights in a data file of its own, optimum's naming (`decoder_model.onnx` +
`decoder_model.onnx_data`), whatever its size: protobuf's 2 GB limit never applies, no file is shared between graphs,
and onnxruntime maps the file instead of copying it, so the embedding rows a step never looks up are never read
(docs/architecture.md, "Export memory").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from export.layout import data_name

ALIGN = 4096  # each tensor starts on a page, so that onnxruntime can map it in place (onnx's own alignment)
CHUNK_BYTES = 64 << 20  # a transposed weight is written this much at a time: never a whole copy of lm_head in memory


class DataFile:
    """A graph's data file, written a tensor at a time: each tensor appended page-aligned, its initializer (pointing
    at its bytes) returned. `close` cuts the file at its last byte. `extend`: after the tensors the file holds already
    (a pass that adds one to a written graph), instead of a new file."""

    def __init__(self, path: Path, extend: bool = False):
        self.path, self.offset = path, path.stat().st_size if extend else 0
        self.file = open(path, "r+b" if extend else "wb")  # noqa: SIM115 - closed by `close`

    def append(self, name: str, dims: Any, data_type: int, blocks: Any) -> Any:
        """Write `blocks` (bytes-like, in order) as tensor `name` (`dims`, onnx `data_type`); its initializer."""
        import onnx

        self.offset = -(-self.offset // ALIGN) * ALIGN
        self.file.seek(self.offset)
        length = 0
        for block in blocks:
            self.file.write(block)
            length += memoryview(block).nbytes
        tensor = onnx.TensorProto(name=name, dims=list(dims), data_type=data_type)
        for key, value in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.offset += length
        return tensor

    def close(self) -> None:
        self.file.truncate(self.offset)
        self.file.close()


def _is_plain_transpose(node: Any) -> bool:
    """A Transpose that swaps the two axes of a matrix (no perm, or perm [1, 0])."""
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    return node.op_type == "Transpose" and (not perm or perm[0] == [1, 0])


def attach_weights(path: Path, module: torch.nn.Module) -> int:
    """Make the parameter inputs of the graph traced at `path` initializers, their bytes in `path`'s data file;
    returns the bytes written. `module` is the module that was traced (its parameter names are the input names)."""
    import onnx

    model = onnx.load(str(path))  # no weights in it: a few MB
    graph = model.graph
    params: dict[str, torch.Tensor] = dict(module.named_parameters())
    params.update({name: b for name, b in module.named_buffers() if name not in params})
    used = [i for i in graph.input if i.name in params]
    consumers: dict[str, list[Any]] = {i.name: [] for i in used}
    for node in graph.node:
        for name in node.input:
            if name in consumers:
                consumers[name].append(node)
    data = DataFile(path.with_name(data_name(path.name)))
    dropped = []

    def write(name: str, tensor: torch.Tensor) -> None:
        """Append `tensor` (a transposed view is copied a block of rows at a time) as initializer `name`."""
        tensor = tensor.detach()
        rows = max(1, CHUNK_BYTES // max(1, tensor[0].numel() * tensor.element_size())) if tensor.ndim else 1
        blocks = ((tensor[start:start + rows] if tensor.ndim else tensor).contiguous().numpy()
                  for start in range(0, max(1, len(tensor)) if tensor.ndim else 1, rows))
        np_dtype = torch.empty((), dtype=tensor.dtype).numpy().dtype
        graph.initializer.append(data.append(name, tuple(tensor.shape),
                                             onnx.helper.np_dtype_to_tensor_dtype(np_dtype), blocks))

    try:
        for value in used:
            tensor = params[value.name]
            nodes = consumers[value.name]
            transposes = [n for n in nodes if tensor.ndim == 2 and _is_plain_transpose(n)]
            if len(transposes) < len(nodes):  # read as it is by something (an embedding's Gather, a layer norm)
                write(value.name, tensor)
            if transposes:  # one transposed copy for all of them: torch's constant folding, one tensor at a time
                kept = transposes[0].output[0]
                write(kept, tensor.t())
                for node in transposes[1:]:
                    _rename_input(graph, node.output[0], kept)
                dropped += transposes
    finally:
        data.close()
    for node in dropped:
        graph.node.remove(node)
    for value in used:
        graph.input.remove(value)
    onnx.save_model(model, str(path))
    os.chmod(data.path, os.stat(path).st_mode & 0o777)
    return data.offset


def _rename_input(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
    for output in graph.output:
        if output.name == old:
            raise ValueError(f"{old} is a graph output; it cannot be merged into {new}")


BLOCK = 16 << 20  # bytes read and written at a time when weights move from one graph's data file to another's


def tensor_blocks(folder: Path, tensor: Any) -> Any:
    """The bytes of `tensor`, a block at a time: from its data file in `folder`, or from the graph for an inline
    tensor."""
    import onnx
    from onnx import numpy_helper

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        yield numpy_helper.to_array(tensor).tobytes()
        return
    ext = {entry.key: entry.value for entry in tensor.external_data}
    offset, length = int(ext.get("offset", 0)), int(ext["length"])
    with open(folder / ext["location"], "rb") as f:
        f.seek(offset)
        while length > 0:
            block = f.read(min(BLOCK, length))
            if not block:
                raise ValueError(f"{folder / ext['location']} ends inside {tensor.name}: the file is truncated")
            length -= len(block)
            yield block


def copy_weights(folder: Path, sources: dict[str, Any], data: Path) -> tuple[list[Any], int]:
    """The initializers of a graph built from other graphs' tensors: `sources` maps each new name to a tensor of a
    graph in `folder`; the external ones are copied, a block at a time, into `data` (the new graph's own data file),
    the inline ones stay inline. Returns the initializers and the bytes written."""
    import onnx

    initializers = []
    out = DataFile(data)
    try:
        for name, tensor in sources.items():
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                initializers.append(out.append(name, tensor.dims, tensor.data_type, tensor_blocks(folder, tensor)))
            else:
                copy = onnx.TensorProto()
                copy.CopyFrom(tensor)
                copy.name = name
                initializers.append(copy)
    finally:
        out.close()
    return initializers, out.offset


def save_derived(base: Any, graph: Any, folder: Path, name: str, like: str) -> None:
    """Save `graph`, built from parts of the model `base` (its weights in `name`'s data file already), as `name` in
    `folder`: with `base`'s opsets, IR version, producer and metadata (the export id it carries), and its data file
    given the permissions of the graph file `like`."""
    import onnx

    model = onnx.helper.make_model(graph, opset_imports=list(base.opset_import), ir_version=base.ir_version,
                                   producer_name=base.producer_name, producer_version=base.producer_version)
    model.metadata_props.extend(base.metadata_props)
    onnx.save_model(model, str(folder / name))
    os.chmod(folder / data_name(name), os.stat(folder / like).st_mode & 0o777)
