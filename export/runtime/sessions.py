"""How onnxruntime runs the graphs: session options, run options, and the heap that loading leaves behind."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any, Literal, get_args

import onnxruntime as ort

# When a session's worker threads spin-wait for work (`session_options`)
Spin = Literal["always", "in_run", "never"]


def session_options(threads: int | None = None, spin: Spin = "always") -> ort.SessionOptions:
    """The options every session gets; chosen for one-request-at-a-time decoding on CPU.

    `threads`: intra-op threads (None: onnxruntime's default, one per physical core). `spin`: when the session's
    worker threads spin-wait for work. "always": between runs too, for the per-step graphs, which run back to back.
    "in_run": only between a run's nodes, and they sleep when it ends, for the graphs that run once per call (the
    encoder, the first step, the search graph): each session has its own pool, and one left spinning after its run
    takes a core from the next session's. "never": they sleep after each node's work and are woken for the next,
    which costs more than the spinning on short nodes (docs/architecture.md, "Runtime").
    """
    if spin not in get_args(Spin):
        raise ValueError(f"session_options: spin must be one of {', '.join(get_args(Spin))}, got {spin!r}.")
    options = ort.SessionOptions()
    # ENABLE_ALL: layer-norm, GELU and MatMul fusions on top of constant folding; what the export is validated with
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # T5's graphs are one chain: no parallel branches
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one thread per physical core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "never" else "1")
    if spin == "in_run":  # onnxruntime stops the pool's spinning when the run returns and restarts it at the next
        options.add_session_config_entry("session.force_spinning_stop", "1")
    # The int8 graphs are dynamically quantized: their only DequantizeLinear is the int8 embedding lookup's, which
    # onnxruntime's QDQ passes copy once per reader (four per step in the committed teacher's), leaving the first norm
    # unfused; without those passes it is one node and the norm fuses (docs/architecture.md, "Runtime")
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


def shrink_after_run(arenas: str = "cpu:0") -> ort.RunOptions:
    """Run options that hand a session's arena back after the run.

    For the graphs that run once per call, on the whole input (the encoder and the first decoder step): their arenas
    would otherwise keep the largest batch's activations for the process's lifetime (docs/architecture.md,
    "Runtime"). The per-step graph keeps its arena. `arenas`: onnxruntime's list of devices, e.g. "cpu:0;gpu:0".
    """
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
    return options


def return_freed_heap() -> None:
    """Hand the heap that loading freed back to the OS (glibc's malloc_trim; elsewhere nothing happens).

    Parsing the graphs allocates their weights once more than the sessions keep, and glibc holds on to the freed
    pages.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class GraphLike:
    """A stand-in for the session of one graph, made of other sessions (`Branch`, `FirstStep`): `get_inputs` and
    `get_outputs` return the graph's (`_inputs`, `_outputs`, set by the subclass), which also defines `run`."""

    _inputs: list[Any]
    _outputs: list[Any]

    def get_inputs(self) -> list[Any]:
        return self._inputs

    def get_outputs(self) -> list[Any]:
        return self._outputs


def fixed_size(dim: Any, what: str, graph: str) -> int:
    """`dim` of an input of `graph`, which the export fixes (heads, d_kv, d_model); ValueError when it is not."""
    if not isinstance(dim, int):
        raise ValueError(f"{graph}: {what} has no fixed size ({dim!r}); re-export the folder")
    return dim
