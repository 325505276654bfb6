"""`DeferredSession`: a graph's session opened at its first use, its inputs and outputs known before that from a session
of a graph with the same interface.

Where greedy and beam search step on the shared-cache graph (`export.runtime.shared_cache`), the with-past graph serves
only what that graph cannot: several new tokens a step (assisted decoding's verification) and `OnnxT5.steps` called
directly. Opened at load, its session would hold a second copy of the decoder's weights (onnxruntime prepacks each
session's MatMul weights into memory of its own) that most processes never use; so `OnnxT5` opens the shared-cache graph
at load, checks it in the with-past graph's place, and opens the with-past graph only when something runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnxruntime as ort

from export.runtime.sessions import GraphLike


class DeferredSession(GraphLike):
    """The session `open_session()` returns, opened at the first `run` (or any other use of a session's methods);
    `get_inputs` and `get_outputs` are `like`'s without the inputs named in `extra`. Where `like`'s shapes differ from
    the graph's (the shared-cache graph's cache dimension is its capacity, not the past's length), only what both
    graphs fix may be read from them: names, heads, d_kv, the vocabulary."""

    def __init__(self, open_session: Callable[[], ort.InferenceSession], like: ort.InferenceSession,
                 extra: tuple[str, ...]):
        self._open = open_session
        self._session: ort.InferenceSession | None = None
        self._inputs = [i for i in like.get_inputs() if i.name not in extra]
        self._outputs = like.get_outputs()

    @property
    def opened(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = self._open()
        return self._session

    def run(self, output_names: list[str] | None, feed: dict[str, Any],
            run_options: ort.RunOptions | None = None) -> list[Any]:
        return self.session.run(output_names, feed, run_options)

    def __getattr__(self, name: str) -> Any:  # io_binding, run_with_iobinding, get_modelmeta, ...
        if name.startswith("_"):  # not a session method: copy.copy and pickle probe for these before __init__
            raise AttributeError(name)
        return getattr(self.session, name)
