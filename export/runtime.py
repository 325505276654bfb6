"""Run an exported T5 with onnxruntime: `generate` as transformers' does it, without torch or transformers.

    from export import OnnxT5
    model = OnnxT5.from_pretrained("runs/export/student")           # quantized=True: the int8 graphs
    tok = model.tokenizer                                           # tokenizers.Tokenizer from tokenizer.json
    tok.enable_padding(pad_id=0, pad_token="<pad>")
    batch = tok.encode_batch(["translate English to French: In the beginning", "translate English to French: Amen"])
    ids = model.generate([b.ids for b in batch], [b.attention_mask for b in batch], num_beams=4, max_new_tokens=64)
    print(tok.decode_batch(ids.tolist(), skip_special_tokens=True))
    OnnxT5.from_model("t5-small", onnx_path="runs/export/t5-small")  # exports on first use (that needs torch)

Imports only numpy, onnxruntime and (for `.tokenizer`) tokenizers. Greedy and beam search follow transformers 5.x
`generate` step by step (same processors, order, stopping rules and output layout), so on the same weights they return
the same tokens; sampling draws from the same distributions with numpy's generator (`seed=`), not torch's.
The encoder runs once; the first decoder step returns the cross-attention keys/values, which every later step reuses;
each later step feeds one token and the self-attention cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ENCODER, DECODER, DECODER_WITH_PAST = "encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"
GRAPHS = (ENCODER, DECODER, DECODER_WITH_PAST)
ENCODER_CHUNK_TOKENS = 2048  # the encoder runs on this many input tokens at a time at most (`OnnxT5._encode`)
CROSS_KV_ROWS = "decoder_with_past_cross_kv_rows"  # export_meta.json: "input" (shared by the beams) or absent
NEG = np.float32(-1.0e9)  # transformers' beam search marks impossible candidates with -1e9, in float32


def quantized_name(graph: str) -> str:
    return graph.replace(".onnx", "_quantized.onnx")


# ---- generation settings -------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """The `generate` options OnnxT5 implements; None: from generation_config.json, else transformers' default."""

    max_new_tokens: int | None = None
    max_length: int | None = None  # decoder length including the start token (transformers' meaning)
    min_new_tokens: int | None = None
    min_length: int | None = None
    num_beams: int | None = None
    num_return_sequences: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None  # True, False or "never"
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    seed: int | None = None  # numpy generator seed for sampling; None draws fresh entropy
    decoder_start_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None


# transformers' global defaults (GenerationConfig._get_default_generation_params in 5.x) for the settings above
DEFAULTS = {"min_length": 0, "num_beams": 1, "num_return_sequences": 1, "length_penalty": 1.0, "early_stopping": False,
            "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0}
DEFAULT_MAX_NEW_TOKENS = 20  # transformers: with no max_length anywhere, 20 new tokens
# generation_config.json keys that do not change which tokens come out
NO_EFFECT = {"transformers_version", "_from_model_config", "bos_token_id", "use_cache", "cache_implementation",
             "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
             "task_specific_params"}
# other transformers settings, accepted in generation_config.json only at their neutral value
NEUTRAL = {"typical_p": 1.0, "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "num_beam_groups": 1,
           "diversity_penalty": 0.0, "remove_invalid_values": False, "renormalize_logits": False,
           "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "low_memory": False}


def _settings_from_file(path: Path) -> Settings:
    data = json.loads(path.read_text()) if path.is_file() else {}
    known = {f.name for f in fields(Settings)}
    problems = [f"{key}={value!r}" for key, value in data.items() if key not in known and key not in NO_EFFECT
                and value is not None and NEUTRAL.get(key, object()) != value]
    if problems:
        raise ValueError(f"{path} sets {', '.join(problems)}, which OnnxT5 does not implement (it implements "
                         f"{', '.join(sorted(known))}). Remove those keys from the file or generate with transformers.")
    return Settings(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class _Resolved:
    max_length: int
    min_length: int
    num_beams: int
    num_return_sequences: int
    length_penalty: float
    early_stopping: bool | str
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    seed: int | None
    start: int
    eos: np.ndarray  # (n_eos,) int64, possibly empty
    pad: int | None


def _resolve(base: Settings, kwargs: dict[str, Any]) -> _Resolved:
    """kwargs > generation_config.json > transformers' defaults, with transformers' max/min length rules."""
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"OnnxT5.generate got unsupported argument(s) {unknown}; it implements {sorted(known)}.")
    merged = {f.name: getattr(base, f.name) for f in fields(Settings)}
    merged.update({k: v for k, v in kwargs.items() if v is not None})
    for key, value in DEFAULTS.items():
        if merged[key] is None:
            merged[key] = value
    # max_new_tokens wins over max_length; both count the decoder start token as transformers does (prompt length 1)
    if merged["max_new_tokens"] is not None:
        max_length = merged["max_new_tokens"] + 1
    else:
        max_length = merged["max_length"] if merged["max_length"] is not None else DEFAULT_MAX_NEW_TOKENS + 1
    min_length = merged["min_new_tokens"] + 1 if merged["min_new_tokens"] is not None else merged["min_length"]
    eos = merged["eos_token_id"]
    eos = np.asarray([] if eos is None else [eos] if isinstance(eos, int) else eos, dtype=np.int64)
    pad = merged["pad_token_id"]
    if pad is None and eos.size:
        pad = int(eos[0])  # transformers does the same (with a warning)
    r = _Resolved(max_length=int(max_length), min_length=int(min_length), num_beams=int(merged["num_beams"]),
                  num_return_sequences=int(merged["num_return_sequences"]),
                  length_penalty=float(merged["length_penalty"]), early_stopping=merged["early_stopping"],
                  do_sample=bool(merged["do_sample"]), temperature=float(merged["temperature"]),
                  top_k=int(merged["top_k"]), top_p=float(merged["top_p"]),
                  repetition_penalty=float(merged["repetition_penalty"]),
                  no_repeat_ngram_size=int(merged["no_repeat_ngram_size"]), seed=merged["seed"],
                  start=int(merged["decoder_start_token_id"] if merged["decoder_start_token_id"] is not None
                            else (pad or 0)), eos=eos, pad=pad)
    problems = []
    if r.max_length < 2:
        problems.append(f"max_new_tokens must be >= 1 (max_length {r.max_length} counts the start token)")
    if r.num_beams < 1:
        problems.append(f"num_beams must be >= 1, got {r.num_beams}")
    if r.num_return_sequences < 1:
        problems.append(f"num_return_sequences must be >= 1, got {r.num_return_sequences}")
    if r.num_beams == 1 and not r.do_sample and r.num_return_sequences > 1:
        problems.append("greedy decoding returns one sequence per input: num_return_sequences > 1 needs num_beams > 1 "
                        "or do_sample=True")
    if r.num_beams > 1 and r.num_return_sequences > r.num_beams:
        problems.append(f"num_return_sequences ({r.num_return_sequences}) must be <= num_beams ({r.num_beams})")
    if r.early_stopping not in (True, False, "never"):
        problems.append(f"early_stopping must be True, False or 'never', got {r.early_stopping!r}")
    if r.do_sample and not r.temperature > 0:
        problems.append(f"temperature must be > 0, got {r.temperature}")
    if r.do_sample and not 0 < r.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {r.top_p}")
    if r.top_k < 0 or r.no_repeat_ngram_size < 0 or r.repetition_penalty <= 0:
        problems.append("top_k and no_repeat_ngram_size must be >= 0 and repetition_penalty > 0")
    if problems:
        raise ValueError("OnnxT5.generate: " + "; ".join(problems) + ".")
    return r


# ---- logits processors (transformers' order; scores (N, V) float32, sequences (N, cur_len) int64) -------------------
def _process(scores: np.ndarray, seqs: np.ndarray, s: _Resolved, beam: bool) -> np.ndarray:
    cur_len = seqs.shape[1]
    if s.repetition_penalty != 1.0:
        seen = np.take_along_axis(scores, seqs, axis=1)
        seen = np.where(seen < 0, seen * np.float32(s.repetition_penalty), seen / np.float32(s.repetition_penalty))
        np.put_along_axis(scores, seqs, seen.astype(np.float32), axis=1)
    n = s.no_repeat_ngram_size
    if n > 0 and cur_len >= n:
        windows = np.lib.stride_tricks.sliding_window_view(seqs, n, axis=1)  # (N, cur_len - n + 1, n)
        prefix = seqs[:, cur_len + 1 - n:]
        matches = np.all(windows[..., :-1] == prefix[:, None, :], axis=-1)
        rows, cols = np.nonzero(matches)
        banned = windows[rows, cols, -1]
        keep = banned < scores.shape[1]
        scores[rows[keep], banned[keep]] = -np.inf
    if s.eos.size and cur_len < s.min_length:
        scores[:, s.eos[s.eos < scores.shape[1]]] = -np.inf
    if s.do_sample:
        min_keep = s.eos.size + 1 if beam else 1
        if s.temperature != 1.0:
            scores = scores / np.float32(s.temperature)
        if s.top_k != 0:
            k = min(max(s.top_k, min_keep), scores.shape[1])
            kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k][:, None]
            scores = np.where(scores < kth, np.float32(-np.inf), scores)
        if s.top_p < 1.0:
            order = np.argsort(scores, axis=1, kind="stable")  # ascending
            sorted_scores = np.take_along_axis(scores, order, axis=1)
            cum = np.cumsum(_softmax(sorted_scores), axis=1)
            remove = cum <= (1 - s.top_p)
            remove[:, -min_keep:] = False
            mask = np.zeros_like(remove)
            np.put_along_axis(mask, order, remove, axis=1)
            scores = np.where(mask, np.float32(-np.inf), scores)
    return scores


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return z / np.sum(z, axis=-1, keepdims=True)


def _log_softmax_(x: np.ndarray) -> np.ndarray:
    """log-softmax of float32 `x` over its last axis, written into `x` (the same float32 operations, in the same order,
    as computing it into new arrays: one temporary instead of three per step)."""
    x -= np.max(x, axis=-1, keepdims=True)
    x -= np.log(np.sum(np.exp(x), axis=-1, keepdims=True))
    return x


def _topk(x: np.ndarray, k: int, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Largest k along the last axis of a 2-D array, in descending order (ties: lowest index first).

    Beam search calls this on batch x (beams * vocabulary) scores every step, where a full sort (50 ms at batch 8,
    beam 4, 32k vocabulary) and even a partition (6 ms) cost more than the int8 decoder step. So the rows are cut into
    blocks of `block` and only the blocks whose maximum reaches the k-th largest block maximum are searched: every one
    of the k largest values lies in such a block (the k-th largest value is at least the k-th largest block maximum).
    """
    rows, n = x.shape
    if k * block * 4 > n:
        idx = np.argsort(-x, axis=-1, kind="stable")[:, :k]
        return np.take_along_axis(x, idx, axis=-1), idx
    full = n - n % block
    block_max = x[:, :full].reshape(rows, -1, block).max(axis=-1)
    if full < n:
        block_max = np.concatenate([block_max, x[:, full:].max(axis=-1, keepdims=True)], axis=1)
    nb = block_max.shape[1]
    cutoff = np.partition(block_max, nb - k, axis=-1)[:, nb - k]
    offsets = np.arange(block)
    idx = np.empty((rows, k), dtype=np.int64)
    for row in range(rows):
        blocks = np.flatnonzero(block_max[row] >= cutoff[row])
        candidates = (blocks[:, None] * block + offsets).ravel()  # ascending: stable sorts keep ties in index order
        candidates = candidates[candidates < n]
        values = x[row, candidates]
        if candidates.size > k:
            kth = np.partition(values, candidates.size - k)[candidates.size - k]
            keep = values >= kth
            candidates, values = candidates[keep], values[keep]
        idx[row] = candidates[np.argsort(-values, kind="stable")[:k]]
    return np.take_along_axis(x, idx, axis=-1), idx


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


def _return_freed_heap() -> None:
    """Hand the heap that loading freed back to the OS (glibc's malloc_trim; elsewhere nothing happens).

    Parsing the graphs allocates their weights once more than the sessions keep; glibc holds on to the freed pages:
    t5-small 6-2 int8, 220-241 MiB resident after loading, 177 MiB after the trim (measured in one process each).
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---- the model -----------------------------------------------------------------------------------------------------
class OnnxT5:
    """Three onnxruntime sessions (encoder, first decoder step, decoder with past) and `generate`."""

    def __init__(self, folder: Path, sessions: dict[str, ort.InferenceSession], settings: Settings,
                 config: dict[str, Any], cross_per_input: bool = False):
        self.folder = folder
        # exports since 2026-11-26: the decoder with past reads one cross-attention K/V row per input, shared by its
        # beams; older exports need them repeated per beam
        self.cross_per_input = cross_per_input
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
        self._tokenizer = None
        # The encoder and the first step run once per call, on the whole input: their arenas would keep the largest
        # batch's activations for the process's lifetime (t5-small 6-2 int8, batch 32 x 256 tokens: 300 MB, README
        # "ONNX export"). Shrinking after those runs hands that back; the per-step graph keeps its arena.
        self._once = ort.RunOptions()
        self._once.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    @staticmethod
    def session_options(threads: int | None = None, spin: bool = True) -> ort.SessionOptions:
        """The options every session gets; chosen for one-request-at-a-time decoding on CPU.

        `spin`: whether the session's worker threads spin-wait for work after a run. Each session has its own pool,
        so a pool left spinning after the encoder took a core from the first decoder step: only the decoder with
        past, which runs back to back, spins (t5-small shape, 2 cores, greedy: 256 -> 195 ms fp32, 127 -> 76 ms
        int8; README, "ONNX export").
        """
        options = ort.SessionOptions()
        # ENABLE_ALL: layer-norm, GELU and MatMul fusions on top of constant folding; what the export is validated with
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # T5's graphs are one chain: no parallel branches
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one thread per physical core
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return options

    @classmethod
    def from_pretrained(cls, folder: str | Path, quantized: bool = False, threads: int | None = None,
                        providers: list | None = None) -> OnnxT5:
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
        sessions = {g: ort.InferenceSession(str(folder / f), cls.session_options(threads, spin=g == DECODER_WITH_PAST),
                                            providers=providers) for g, f in zip(GRAPHS, files, strict=True)}
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        settings = _settings_from_file(folder / "generation_config.json")
        for key in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            if getattr(settings, key) is None:
                setattr(settings, key, config.get(key))
        meta_file = folder / "export_meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        _return_freed_heap()
        return cls(folder, sessions, settings, config, cross_per_input=meta.get(CROSS_KV_ROWS) == "input")

    @classmethod
    def from_model(cls, name_or_dir: str | Path, onnx_path: str | Path, quantized: bool = False,
                   threads: int | None = None, providers: list | None = None) -> OnnxT5:
        """The export of `name_or_dir` (folder or hub id) in `onnx_path`, made there first if it is not there yet.

        An existing export is reused when it was made from the same source (and, for a local folder, the same
        weight files); otherwise it is re-exported. Exporting imports torch and transformers, loading does not.
        """
        onnx_path = Path(onnx_path).expanduser()
        meta_file = onnx_path / "export_meta.json"
        need_int8 = quantized and not (onnx_path / quantized_name(ENCODER)).is_file()
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("source") != source_id(name_or_dir):
                raise ValueError(f"OnnxT5.from_model: {onnx_path} holds an export of {meta.get('source')}, not of "
                                 f"{source_id(name_or_dir)}. Give another onnx_path, or remove that folder.")
            if meta.get("source_fingerprint") == source_fingerprint(name_or_dir) and not need_int8:
                return cls.from_pretrained(onnx_path, quantized, threads, providers)
        from export.onnx import export  # torch and transformers, only now

        export(str(name_or_dir), onnx_path, int8=quantized or (onnx_path / quantized_name(ENCODER)).is_file())
        return cls.from_pretrained(onnx_path, quantized, threads, providers)

    @property
    def tokenizer(self):
        """The folder's `tokenizer.json` as a `tokenizers.Tokenizer` (None when the export has none)."""
        if self._tokenizer is None and (self.folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        return self._tokenizer

    # ---- graph calls -------------------------------------------------------------------------------------------------
    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The encoder's states, run on at most ENCODER_CHUNK_TOKENS tokens at a time (whole rows, at least one).

        Its activations grow with batch * length^2 (attention scores): one run on 32 x 256 tokens took 330 MB
        (t5-small 6-2 int8), which chunks of 2,048 tokens cut to about a quarter, and it ran faster (907 -> 710-790
        ms). int8 graphs quantize activations per run: a row's scale comes from its chunk, as it comes from its batch.
        """
        rows = max(1, ENCODER_CHUNK_TOKENS // max(1, ids.shape[1]))
        if ids.shape[0] <= rows:
            return self.encoder.run(None, {"input_ids": ids, "attention_mask": mask}, self._once)[0]
        starts = range(0, ids.shape[0], rows)
        parts = [self.encoder.run(None, {"input_ids": ids[i:i + rows], "attention_mask": mask[i:i + rows]},
                                  self._once if i == starts[-1] else None)[0] for i in starts]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _first_step(self, tokens: np.ndarray, mask: np.ndarray, hidden: np.ndarray):
        out = self.decoder.run(None, {"input_ids": tokens, "encoder_attention_mask": mask,
                                      "encoder_hidden_states": hidden}, self._once)
        return out[0][:, -1, :], [out[i] for i in self._first_self], [out[i] for i in self._first_cross]

    def _step(self, tokens: np.ndarray, mask: np.ndarray, own: list[np.ndarray], cross: list[np.ndarray]):
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
        s = _resolve(self.settings, kwargs)
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
        hidden = self._encode(ids, mask)
        if s.num_beams > 1:
            return self._beam_search(hidden, mask, s)
        expand = s.num_return_sequences
        if expand > 1:
            hidden, mask = np.repeat(hidden, expand, axis=0), np.repeat(mask, expand, axis=0)
        return self._sample(hidden, mask, s)

    def _sample(self, hidden: np.ndarray, mask: np.ndarray, s: _Resolved) -> np.ndarray:
        """Greedy search, or multinomial sampling with do_sample (transformers' `_sample`)."""
        n = hidden.shape[0]
        rng = np.random.default_rng(s.seed)
        seqs = np.full((n, s.max_length), s.pad, dtype=np.int64)  # filled column by column: no copy per step
        seqs[:, 0] = s.start
        cur_len = 1
        unfinished = np.ones(n, dtype=bool)
        logits, own, cross = self._first_step(seqs[:, :1], mask, hidden)
        while True:
            # onnxruntime returns fresh arrays each step: the logits may be processed in place
            scores = _process(logits.astype(np.float32, copy=False), seqs[:, :cur_len], s, beam=False)
            if s.do_sample:
                probs = _softmax(scores.astype(np.float64))
                next_tokens = np.array([rng.choice(probs.shape[1], p=p) for p in probs], dtype=np.int64)
            else:
                next_tokens = np.argmax(scores, axis=-1)
            if s.eos.size:
                next_tokens = np.where(unfinished, next_tokens, s.pad)
            seqs[:, cur_len] = next_tokens
            cur_len += 1
            unfinished &= ~np.isin(next_tokens, s.eos)
            if cur_len >= s.max_length or not unfinished.any():
                return np.ascontiguousarray(seqs[:, :cur_len])
            logits, own = self._step(next_tokens[:, None], mask, own, cross)

    def _beam_search(self, hidden: np.ndarray, mask: np.ndarray, s: _Resolved) -> np.ndarray:
        """transformers 5.x `_beam_search` (vectorized form), step for step; arrays are (batch, beams, ...)."""
        batch, beams, max_length = hidden.shape[0], s.num_beams, s.max_length
        rng = np.random.default_rng(s.seed)
        keep = max(2, 1 + s.eos.size) * beams  # candidates kept per step, so that `beams` unfinished ones remain
        top_beam_mask = np.arange(keep) < beams
        fill = (s.pad or int(s.eos[0])) if s.eos.size else -1  # transformers 5.x: `pad or eos[0]`: EOS when pad is 0
        running = np.full((batch, beams, max_length), fill, dtype=np.int64)
        running[:, :, 0] = s.start
        sequences = running.copy()
        running_scores = np.zeros((batch, beams), dtype=np.float32)
        running_scores[:, 1:] = NEG  # only the first beam's continuations count at the first step
        beam_scores = np.full((batch, beams), NEG, dtype=np.float32)
        finished = np.zeros((batch, beams), dtype=bool)
        improvable = np.ones((batch, 1), dtype=bool)  # the early-stop heuristic is not yet satisfied
        running_idx = np.full((batch, beams, max_length - 1), -1, dtype=np.int64)
        beam_idx_out = running_idx.copy()
        offsets = np.arange(batch)[:, None] * beams

        logits, own, cross = self._first_step(np.full((batch, 1), s.start, dtype=np.int64), mask, hidden)
        logits, own = np.repeat(logits, beams, axis=0), [np.repeat(t, beams, axis=0) for t in own]
        if not self.cross_per_input:  # an older export: the encoder side repeated for each beam
            cross, mask = [np.repeat(t, beams, axis=0) for t in cross], np.repeat(mask, beams, axis=0)
        cur_len = 1
        while True:
            flat = running[:, :, :cur_len].reshape(batch * beams, cur_len)
            logits = logits.astype(np.float32, copy=False)
            if not logits.flags.writeable:
                logits = logits.copy()
            log_probs = _process(_log_softmax_(logits), flat, s, beam=True)  # logits: fresh each step, ours to change
            vocab = log_probs.shape[-1]
            log_probs = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)

            # top-k continuations over all beams (sampled without replacement with do_sample)
            if s.do_sample:
                probs = _softmax(log_probs.astype(np.float64))
                top_idx = np.stack([rng.choice(p.size, size=keep, replace=False, p=p) for p in probs])
                top_lp = np.take_along_axis(log_probs, top_idx, axis=1)
                order = np.argsort(-top_lp, axis=1, kind="stable")
                top_lp, top_idx = np.take_along_axis(top_lp, order, 1), np.take_along_axis(top_idx, order, 1)
            else:
                top_lp, top_idx = _topk(log_probs, keep)
            from_beam = top_idx // vocab
            top_seqs = np.take_along_axis(running, from_beam[:, :, None], axis=1)
            top_seqs[:, :, cur_len] = top_idx % vocab
            top_running_idx = np.take_along_axis(running_idx, from_beam[:, :, None], axis=1)
            top_running_idx[:, :, cur_len - 1] = from_beam + offsets

            # which candidates stop: max length reached, or EOS
            hits = np.isin(top_seqs[:, :, cur_len], s.eos) | (cur_len + 1 >= max_length)

            # the best `beams` unfinished candidates run on
            top_running_lp = (top_lp + hits.astype(np.float32) * NEG).astype(np.float32)
            _, nxt = _topk(top_running_lp, beams)
            running = np.take_along_axis(top_seqs, nxt[:, :, None], axis=1)
            running_scores = np.take_along_axis(top_running_lp, nxt, axis=1)
            running_idx = np.take_along_axis(top_running_idx, nxt[:, :, None], axis=1)

            # finished candidates among the top `beams` join the finished set if they beat it
            just_finished = hits & top_beam_mask[None, :]
            final_lp = (top_lp / np.float32((cur_len + 1 - 1) ** s.length_penalty)).astype(np.float32)
            full = np.all(finished, axis=-1, keepdims=True) & (s.early_stopping is True)
            final_lp = final_lp + full.astype(np.float32) * NEG
            final_lp = final_lp + (~improvable).astype(np.float32) * NEG
            final_lp = (final_lp + (~just_finished).astype(np.float32) * NEG).astype(np.float32)
            merged_scores = np.concatenate([beam_scores, final_lp], axis=1)
            _, best = _topk(merged_scores, beams)
            sequences = np.take_along_axis(np.concatenate([sequences, top_seqs], axis=1), best[:, :, None], axis=1)
            beam_scores = np.take_along_axis(merged_scores, best, axis=1)
            beam_idx_out = np.take_along_axis(np.concatenate([beam_idx_out, top_running_idx], axis=1),
                                              best[:, :, None], axis=1)
            finished = np.take_along_axis(np.concatenate([finished, just_finished], axis=1), best, axis=1)

            cur_len += 1
            # early-stop heuristic: can a running beam still beat the worst finished one?
            never = s.early_stopping == "never" and s.length_penalty > 0.0  # then assume the longest possible beam
            best_len = max_length - 1 if never else cur_len - 1
            best_possible = running_scores[:, :1] / np.float32(best_len ** s.length_penalty)
            worst = np.where(finished, np.min(beam_scores, axis=1, keepdims=True), NEG)
            improvable = improvable & np.any(best_possible > worst, axis=-1, keepdims=True)
            open_beam = not (np.all(finished) and s.early_stopping is True)
            if not (np.any(improvable) and open_beam and not np.all(hits)):
                break
            order = running_idx[:, :, cur_len - 2].reshape(-1)  # the beam each running sequence continues
            if not np.array_equal(order, np.arange(order.size)):  # every beam continuing itself: nothing to move
                own = [t[order] for t in own]
            logits, own = self._step(running[:, :, cur_len - 1].reshape(-1, 1), mask, own, cross)

        n_ret = s.num_return_sequences
        sequences = sequences[:, :n_ret].reshape(batch * n_ret, max_length)
        generated = int(np.max(np.sum(beam_idx_out[:, :n_ret].reshape(batch * n_ret, -1) != -1, axis=1)))
        return sequences[:, :1 + generated]


def source_id(name_or_dir: str | Path) -> str:
    """How an export records its source: the resolved path of a local folder, else the hub id as given."""
    local = Path(name_or_dir).expanduser()
    return str(local.resolve()) if local.is_dir() else str(name_or_dir)


def source_fingerprint(name_or_dir: str | Path) -> dict[str, list[int]] | None:
    """Size and modification time of a local folder's weight and config files (None for a hub id)."""
    local = Path(name_or_dir).expanduser()
    if not local.is_dir():
        return None
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(local.iterdir())
            if p.suffix in (".safetensors", ".json") and p.is_file()}

