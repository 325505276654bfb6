"""Beam search's log-softmax over each step's logits, in onnxruntime (the one-node graph
`small_graphs.log_softmax_graph`).

numpy's log-softmax passes over the (rows, vocabulary) logits five times with temporaries; at large batch x beams
that cost more than the int8 decoder step, and onnxruntime's kernel does it in a fraction of the time on the same
single thread. Its values also equal torch's bit for bit more often than numpy's, which matters where two beams'
scores nearly tie (docs/results.md, "Batch 32, beam 4: which measurement was right").

The kernel runs with subnormals flushed to zero (`subnormals.py`). Logits more than 87 below their row's maximum make
its exponentials subnormal, which Intel CPUs compute several times slower, and the logits of the bench's random-weight
mT5 (250,112 a row) span 200 and more. A flushed exponential is below 1.2e-38 and adds to a sum of at least 1: float32
cannot hold the difference, so the log-probabilities are the same bit for bit (docs/results.md, "Subnormal
exponentials in beam search's log-softmax").
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from export.runtime.sessions import session_options
from export.runtime.small_graphs import log_softmax_graph
from export.runtime.subnormals import FlushedSubnormals


class LogSoftmax:
    """The session of the log-softmax graph: one thread, the caller's. It runs between two decoder steps, while the
    per-step session's pool spins on the other cores; a pool of its own would contend with it (measured slower).
    `flush_subnormals=False` keeps the caller's floating-point modes (what `bench.interleaved` compares with)."""

    def __init__(self, flush_subnormals: bool = True) -> None:
        self.session = ort.InferenceSession(log_softmax_graph(), session_options(1, spin="never"),
                                            providers=["CPUExecutionProvider"])
        self.flush_subnormals = flush_subnormals

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """log-softmax of (rows, vocabulary) logits over the vocabulary, float32, a new array."""
        feed = {"logits": np.ascontiguousarray(logits, dtype=np.float32)}
        if not self.flush_subnormals:
            return self.session.run(None, feed)[0]
        with FlushedSubnormals():
            return self.session.run(None, feed)[0]
