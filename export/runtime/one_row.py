"""The one-row int8 graph (`export.one_row`): one-row calls of the int8 graphs step on it.

Its MatMuls are 8-bit blocks (MatMulNBits), whose kernel onnxruntime runs faster than the int8 graphs'
DynamicQuantizeMatMul at one row and slower at four rows or more. `OnnxT5.generate` steps a call on it when the
call decodes one sequence (one input, greedy or sampling, one sequence returned): the first step too, through the
cross-attention K/V graph as the with-past graph's. The session opens at the first call it serves, so that a process
that never decodes one row does not hold the decoder's weights twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from export.runtime.first_step import FirstStep
from export.runtime.folder import open_session, reexport_hint


class OneRow:
    """The graph at `path`, opened when first needed with `options` and `providers`; `check(session)` is run on it
    then (the folder's export id)."""

    def __init__(self, path: Path, options: ort.SessionOptions, providers: list[Any], check: Any):
        self.path, self.options, self.providers, self.check = path, options, providers, check
        self.session: ort.InferenceSession | None = None
        self._first: FirstStep | None = None

    def sessions(self, cross_kv: ort.InferenceSession) -> tuple[FirstStep, ort.InferenceSession]:
        """The first step (the cross-attention K/V from `cross_kv`, then this graph on an empty past) and the steps
        after it."""
        if self.session is None:
            session = open_session(self.path, self.options, self.providers, reexport_hint(self.path.parent))
            self.check(session)
            self._first, self.session = FirstStep(cross_kv, session), session
        assert self._first is not None
        return self._first, self.session
