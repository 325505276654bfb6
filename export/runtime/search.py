"""Greedy search inside onnxruntime: the export's search graph (`export.search_graph`), one session call per
`generate`.

`OnnxT5.generate` hands it the calls of one input row whose tokens it gives exactly as `greedy_search` does: greedy
(no sampling, one sequence per input), no repetition penalty or n-gram ban (the op's own would be another
implementation to trust), one EOS id, and the token ids the graph holds. Any other call runs the Python loop. One
row only: on two threads the graph was slower than the loop at batch 8 and 32 on the default student
(docs/results.md). It runs for small decoders only (`model.SEARCH_MAX_STEP_BYTES`), on the model's threads, whose
pool spins within its run only; the encoder before it runs on the caller's thread alone for short inputs
(`model.SEARCH_ENCODER_WORK`), on a session with the search graph's options for longer ones. The sessions open at the
first call they serve, so that a process that never decodes one row greedily does not hold the weights twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.layout import NO_TOKEN, SEARCH_HIDDEN, SEARCH_TOKENS_KEY
from export.runtime.folder import open_session, reexport_hint
from export.runtime.sessions import session_options
from export.runtime.settings import Resolved

INT32_MAX = np.iinfo(np.int32).max  # the op's ids and lengths are int32


class InGraphSearch:
    """The search graph at `path`, opened when first needed with `options` and `providers`; `check(session)` is run
    on it then (the folder's export id). `encoder`: the folder's encoder graph and the longest input (tokens) that
    `encode` runs on the caller's thread alone; longer inputs run it with `options`, whose pool spins within the run
    only, as the search graph's does. Each encoder session opens at the first input it takes."""

    def __init__(self, path: Path, options: ort.SessionOptions, providers: list[Any], check: Any,
                 encoder: tuple[Path, int] | None = None):
        self.path, self.options, self.providers, self.check = path, options, providers, check
        self.encoder_path: Path | None = encoder[0] if encoder else None
        self.encoder_tokens = encoder[1] if encoder else 0
        self.session: ort.InferenceSession | None = None
        self.encoder: ort.InferenceSession | None = None  # on one thread, for inputs up to encoder_tokens
        self.long_encoder: ort.InferenceSession | None = None  # with `options`, for longer ones
        self.tokens: tuple[int, int] | None = None  # (start, eos) the op holds

    def open(self) -> ort.InferenceSession:
        if self.session is None:
            session = open_session(self.path, self.options, self.providers, reexport_hint(self.path.parent))
            self.check(session)
            held = session.get_modelmeta().custom_metadata_map.get(SEARCH_TOKENS_KEY, "")
            try:
                start, eos = (int(t) for t in held.split(","))
            except ValueError:
                raise ValueError(f"OnnxT5: {self.path} records no token ids ({SEARCH_TOKENS_KEY} {held!r} in its "
                                 "ONNX metadata): it was not written by `python -m export`; re-export.") from None
            self.session, self.tokens = session, (start, eos)
        return self.session

    def serves(self, s: Resolved) -> bool:
        """Whether this call's tokens come out of the graph exactly as out of `greedy_search`."""
        if (s.num_beams != 1 or s.do_sample or s.num_return_sequences != 1 or s.repetition_penalty != 1.0
                or s.no_repeat_ngram_size != 0 or s.eos.size != 1
                or s.max_length > INT32_MAX):
            return False
        self.open()
        return self.tokens == (s.start, int(s.eos[0]))

    def encode(self, ids: np.ndarray, mask: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """The encoder states of one row: on the caller's thread up to `encoder_tokens` tokens, else with the search
        graph's options."""
        if self.encoder_path is None:
            raise ValueError("InGraphSearch.encode: made without an encoder graph; run the model's encoder.")
        if ids.shape[1] <= self.encoder_tokens:
            if self.encoder is None:
                self.encoder = open_session(self.encoder_path, session_options(1), self.providers,
                                            reexport_hint(self.path.parent))
            session = self.encoder
        else:
            if self.long_encoder is None:
                self.long_encoder = open_session(self.encoder_path, self.options, self.providers,
                                                 reexport_hint(self.path.parent))
            session = self.long_encoder
        return session.run(None, {"input_ids": ids, "attention_mask": mask}, run_options)[0]

    def generate(self, ids: np.ndarray, mask: np.ndarray, hidden: np.ndarray, s: Resolved) -> np.ndarray:
        """(1, length) ids, mask and encoder states -> (1, width) int64 tokens, as `greedy_search` returns them: the
        start token, then the new tokens up to and with the EOS, or max_length tokens in all."""
        one = np.ones(1, dtype=np.int32)
        feed = {"input_ids": ids.astype(np.int32), "max_length": np.array([s.max_length], dtype=np.int32),
                "min_length": np.array([s.min_length], dtype=np.int32), "num_beams": one,
                "num_return_sequences": one, "length_penalty": np.ones(1, dtype=np.float32),
                "repetition_penalty": np.ones(1, dtype=np.float32), "attention_mask": mask.astype(np.int32),
                SEARCH_HIDDEN: hidden}
        row = self.open().run(["sequences"], feed)[0][0, 0].astype(np.int64)  # (N, num_return_sequences, L)
        # a row that ended comes without its EOS, then NO_TOKEN (`export.search_graph`): the EOS goes back in
        end = np.flatnonzero(row == NO_TOKEN)
        if end.size:
            row = np.append(row[:end[0]], s.eos[0])
        return row[None, :]
