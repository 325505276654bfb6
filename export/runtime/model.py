"""`OnnxT5`: an export folder's three graphs in onnxruntime sessions, the calls into them, and `generate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.layout import DECODER_WITH_PAST, GRAPHS, quantized_name
from export.runtime.beam import beam_search
from export.runtime.greedy import greedy_search
from export.runtime.sessions import return_freed_heap, session_options, shrink_after_run
from export.runtime.settings import Settings, resolve, settings_from_file

# The encoder runs on this many input tokens at a time at most (`OnnxT5.encode`): its activations grow with
# batch * length^2 (the attention scores), and smaller runs also ran faster (docs/architecture.md, "Runtime").
ENCODER_CHUNK_TOKENS = 2048


def _as_array(x: Any, name: str) -> np.ndarray:
    """numpy from a numpy array, a list, or a tensor-like (anything with .numpy(), e.g. return_tensors="pt")."""
    for method in ("detach", "cpu", "numpy"):
        if not isinstance(x, np.ndarray) and callable(getattr(x, method, None)):
            x = getattr(x, method)()
    arr = np.asarray(x)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        raise ValueError(f"OnnxT5.generate: {name} must be a 2-D integer array (batch, length), "
                         f"got shape {arr.shape} of {arr.dtype}.")
    return arr.astype(np.int64)


class OnnxT5:
    """Three onnxruntime sessions (encoder, first decoder step, decoder with past) and `generate`."""

    def __init__(self, folder: Path, sessions: dict[str, ort.InferenceSession], settings: Settings,
                 config: dict[str, Any]):
        self.folder = folder
        self.encoder, self.decoder, self.decoder_with_past = (sessions[g] for g in GRAPHS)
        self.settings = settings
        self.config = config
        past = [i.name for i in self.decoder_with_past.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 4
        self._self_names = [f"past_key_values.{i}.decoder.{kv}" for i in range(self.num_layers)
                            for kv in ("key", "value")]
        self._cross_names = [f"past_key_values.{i}.encoder.{kv}" for i in range(self.num_layers)
                             for kv in ("key", "value")]
        outs = [o.name for o in self.decoder.get_outputs()]
        self._first_self = [outs.index(f"present.{i}.decoder.{kv}") for i in range(self.num_layers)
                            for kv in ("key", "value")]
        self._first_cross = [outs.index(f"present.{i}.encoder.{kv}") for i in range(self.num_layers)
                             for kv in ("key", "value")]
        self._tokenizer: Any = None
        self._once = shrink_after_run()  # for the encoder and the first step, which run once per call

    @classmethod
    def from_pretrained(cls, folder: str | Path, quantized: bool = False, threads: int | None = None,
                        providers: list[Any] | None = None) -> OnnxT5:
        """Load a folder written by `python -m export`; `threads`: intra-op threads per session (None: one per core)."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"OnnxT5: {folder} is not a folder. Export one with "
                                    f"`python -m export --model MODEL --out {folder}`.")
        files = [quantized_name(g) if quantized else g for g in GRAPHS]
        missing = [f for f in files if not (folder / f).is_file()]
        if quantized and missing and all((folder / g).is_file() for g in GRAPHS):
            raise FileNotFoundError(f"OnnxT5: quantized=True, but {folder} holds no int8 graphs "
                                    f"({', '.join(missing)}). Export with `python -m export ... --int8`, or load "
                                    "with quantized=False.")
        if missing:
            raise FileNotFoundError(f"OnnxT5: {folder} lacks {', '.join(missing)}; the runtime needs the encoder, "
                                    "the first decoder step and the decoder with past. Re-export the folder with "
                                    "`python -m export`.")
        providers = providers or ["CPUExecutionProvider"]
        sessions = {g: ort.InferenceSession(str(folder / f), session_options(threads, spin=g == DECODER_WITH_PAST),
                                            providers=providers) for g, f in zip(GRAPHS, files, strict=True)}
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        settings = settings_from_file(folder / "generation_config.json")
        for key in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            if getattr(settings, key) is None:
                setattr(settings, key, config.get(key))
        return_freed_heap()
        return cls(folder, sessions, settings, config)

    @property
    def tokenizer(self) -> Any:
        """The folder's `tokenizer.json` as a `tokenizers.Tokenizer` (None when the export has none)."""
        if self._tokenizer is None and (self.folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        return self._tokenizer

    # ---- graph calls -------------------------------------------------------------------------------------------------
    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The encoder's states, run on at most ENCODER_CHUNK_TOKENS tokens at a time (whole rows, at least one).

        int8 graphs quantize activations per run: a row's scale comes from its chunk, as it comes from its batch.
        """
        rows = max(1, ENCODER_CHUNK_TOKENS // max(1, ids.shape[1]))
        if ids.shape[0] <= rows:
            return self.encoder.run(None, {"input_ids": ids, "attention_mask": mask}, self._once)[0]
        starts = range(0, ids.shape[0], rows)
        parts = [self.encoder.run(None, {"input_ids": ids[i:i + rows], "attention_mask": mask[i:i + rows]},
                                  self._once if i == starts[-1] else None)[0] for i in starts]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def first_step(self, tokens: np.ndarray, mask: np.ndarray,
                   hidden: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The first decoder step on `tokens` (N, length): the last position's logits (N, vocabulary), then the
        self-attention and the cross-attention K/V of each layer (key, value, ...)."""
        out = self.decoder.run(None, {"input_ids": tokens, "encoder_attention_mask": mask,
                                      "encoder_hidden_states": hidden}, self._once)
        return out[0][:, -1, :], [out[i] for i in self._first_self], [out[i] for i in self._first_cross]

    def step(self, tokens: np.ndarray, mask: np.ndarray, own: list[np.ndarray],
             cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One token per sequence (N, 1) on top of the cache: its logits and the self-attention K/V, one longer.

        `own` has a row per sequence; `mask` and `cross` have one per input, shared by its sequences (beams).
        """
        feed = {"input_ids": tokens, "encoder_attention_mask": mask}
        feed.update(zip(self._self_names, own, strict=True))
        feed.update(zip(self._cross_names, cross, strict=True))
        out = self.decoder_with_past.run(None, feed)
        return out[0][:, -1, :], out[1:]

    # ---- generate ----------------------------------------------------------------------------------------------------
    def generate(self, input_ids: Any, attention_mask: Any = None, **kwargs: Any) -> np.ndarray:
        """Token ids (N, length) int64, laid out as transformers' `generate` returns them for T5.

        N = batch * num_return_sequences; each row starts with the decoder start token. Greedy rows that end early
        are padded with pad_token_id after their EOS; beam search fills as transformers 5.x does (with pad_token_id
        unless it is 0, then with the first EOS id). Without `attention_mask` every position is attended to, as in
        transformers 5.x for encoder-decoders: pass the tokenizer's mask with padded batches.
        kwargs: see `Settings`; any other raises TypeError.
        """
        s = resolve(self.settings, kwargs)
        ids = _as_array(input_ids, "input_ids")
        if attention_mask is None:  # as transformers 5.x for encoder-decoders: no mask inferred from padding
            mask = np.ones_like(ids)
        else:
            mask = _as_array(attention_mask, "attention_mask")
            if mask.shape != ids.shape:
                raise ValueError(f"OnnxT5.generate: attention_mask has shape {mask.shape}, input_ids {ids.shape}.")
        vocab = self.config.get("vocab_size")
        if vocab is not None and ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"OnnxT5.generate: input_ids hold ids outside [0, {vocab}) (min {ids.min()}, max "
                             f"{ids.max()}): the tokenizer does not match this model.")
        hidden = self.encode(ids, mask)
        if s.num_beams > 1:
            return beam_search(self, hidden, mask, s)
        expand = s.num_return_sequences
        if expand > 1:
            hidden, mask = np.repeat(hidden, expand, axis=0), np.repeat(mask, expand, axis=0)
        return greedy_search(self, hidden, mask, s)
