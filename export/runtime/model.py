"""`OnnxT5`: an export folder's three graphs in onnxruntime sessions, the calls into them, and `generate`."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.layout import (
    CROSS_KV,
    DECODER,
    DECODER_MERGED,
    DECODER_WITH_PAST,
    DTYPES,
    ENCODER,
    GRAPHS,
    ONE_ROW,
    ONE_ROW_SHARED,
    QUANTIZED,
    SEARCH,
    SHARED_CACHE,
    SHARED_CACHE_INPUTS,
    dtype_name,
    graph_files,
    quantized_name,
)
from export.runtime.assisted import DRAFT_OPTIONS, AssistedStats, Draft, assisted_search
from export.runtime.beam import beam_search
from export.runtime.binding import BoundSteps, device_of
from export.runtime.deferred import DeferredSession
from export.runtime.draft_length import DRAFT_START, default_schedule
from export.runtime.first_step import FirstStep
from export.runtime.folder import (
    ExportMeta,
    check_config,
    check_export_ids,
    check_graphs,
    check_sizes,
    open_session,
    read_meta,
    reexport_hint,
    verify_checksums,
)
from export.runtime.greedy import greedy_search
from export.runtime.inputs import checked_inputs
from export.runtime.log_softmax import LogSoftmax
from export.runtime.merged import Branch
from export.runtime.one_row import OneRow
from export.runtime.search import InGraphSearch
from export.runtime.sessions import Spin, return_freed_heap, session_options, shrink_after_run
from export.runtime.settings import Settings, read_json_object, resolve, settings_from_file
from export.runtime.shared_cache import SharedCache, SharedCacheSteps

# The encoder runs on this many input tokens at a time at most (`OnnxT5.encode`): its activations grow with
# batch * length^2 (the attention scores), and smaller runs also ran faster (docs/architecture.md, "Runtime").
ENCODER_CHUNK_TOKENS = 2048
# The search graph (`export.search_graph`) serves only decoders whose with-past graph holds at most this many bytes.
# Its pool spins within its run only ("in_run"), so that it takes no core from the next call's sessions; so it beat
# the loop on the default student's decoder (3-18 MB). On t5-small's int8 decoders (40-55 MB) it matched the one-row
# loop (`export.one_row`'s 8-bit blocks) with 16 and 64 input tokens and led only with 256, through its encoder's
# pool, while holding the decoder's weights a second time (docs/results.md, "Pools that spin within their run").
SEARCH_MAX_STEP_BYTES = 20 * 2**20
# Before the search graph, an input whose tokens times the encoder's weight bytes come to at most this runs the encoder
# on the caller's thread alone (a session of its own); a longer one on the search graph's threads, spinning within
# the run. On the default student's one-row greedy calls the one-thread encoder was the faster up to 32-64 input
# tokens on its int8 encoder (4 MB) and below 32 on its fp32 one (16 MB) (docs/results.md, "Pools that spin within
# their run").
SEARCH_ENCODER_WORK = 250 * 10**6
# One-row calls of the int8 graphs step on the one-row graph (`export.one_row`) only where the int8 with-past graph
# holds more than this many bytes: its block kernel gains in reading the weights, and a step of the default student's
# decoder (9 MB) is its nodes' fixed costs, where the one-row graph took 1.04x the int8 graph's time; t5-small's
# (55 MB) took 0.86x, t5-base's 0.94x, mt5-small's 0.85x (docs/results.md, "The one-row int8 graph").
ONE_ROW_MIN_STEP_BYTES = 20 * 2**20
MAX_THREADS = 1024  # each session starts this many OS threads; far more fail inside onnxruntime (std::bad_alloc)


def _bytes(folder: Path, graph: str) -> int:
    """The bytes of `graph` in `folder` with its external data."""
    return sum((folder / f).stat().st_size for f in graph_files(folder, graph))


def _id_check(folder: Path, meta: ExportMeta | None, graph: str, name: str) -> Any:
    """The check a session opened later (the search graph's, the one-row graph's) runs on it: that `name` carries the
    folder's export id; none for a folder loaded without export_meta.json (`from_staged`)."""
    if meta is None:
        return lambda session: None
    return lambda session: check_export_ids(folder, meta, {graph: session}, {graph: name})


def encoder_rows(length: int) -> int:
    """How many input rows of `length` tokens one encoder run takes (ENCODER_CHUNK_TOKENS, at least one row)."""
    return max(1, ENCODER_CHUNK_TOKENS // max(1, length))


def check_providers(providers: Any) -> list[Any]:
    """The execution providers to ask for (default: CPU). A name onnxruntime does not know is refused; one it knows
    but this build lacks (CUDA without onnxruntime-gpu) is dropped with a RuntimeWarning, the CPU provider last."""
    if providers is None or (isinstance(providers, list | tuple) and not providers):
        return ["CPUExecutionProvider"]
    if not isinstance(providers, list | tuple):
        raise TypeError(f"OnnxT5.from_pretrained: providers must be a list, e.g. ['CPUExecutionProvider'], got "
                        f"{providers!r}.")
    names = [p[0] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], dict) else p for p in providers]
    available = ort.get_available_providers()
    unknown = [n for n in names if n not in ort.get_all_providers()]
    if unknown:
        raise ValueError(f"OnnxT5.from_pretrained: providers {unknown} are not available in this onnxruntime "
                         f"(available: {', '.join(available)}); install the onnxruntime build that has them, or "
                         "leave providers unset for the CPU.")
    missing = [n for n in names if n not in available]
    if missing:
        warnings.warn(f"OnnxT5: {', '.join(missing)} not available in this onnxruntime build (available: "
                      f"{', '.join(available)}): running on the CPU provider instead. For CUDA, install "
                      "onnxruntime-gpu in place of onnxruntime, with the CUDA and cuDNN versions it names.",
                      RuntimeWarning, stacklevel=4)
    kept = [p for p, n in zip(providers, names, strict=True) if n in available]
    return kept if "CPUExecutionProvider" in [n for n in names if n in available] else [*kept, "CPUExecutionProvider"]


def warn_if_fallen_back(session: ort.InferenceSession, providers: list[Any]) -> None:
    """onnxruntime drops a provider it has but cannot start (CUDA without its libraries) with only a log line."""
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    dropped = [n for n in names if n not in session.get_providers()]
    if dropped:
        warnings.warn(f"OnnxT5: onnxruntime could not start {', '.join(dropped)} (see its log above; for CUDA, the "
                      "CUDA and cuDNN libraries onnxruntime-gpu needs must be on the library path): running on "
                      f"{', '.join(session.get_providers())}.", RuntimeWarning, stacklevel=4)


def quantized_kind(quantized: Any, caller: str = "OnnxT5.from_pretrained") -> str | None:
    """`quantized=` as the kind of graphs it loads: None (fp32), "int8" (True, as before 4-bit graphs existed) or
    "int4"; TypeError naming the accepted values otherwise."""
    if isinstance(quantized, bool | np.bool_):
        return "int8" if quantized else None
    if isinstance(quantized, str) and quantized in QUANTIZED:
        return quantized
    raise TypeError(f"{caller}: quantized must be True or False (int8 graphs), or one of "
                    f"{', '.join(map(repr, QUANTIZED))}, got {quantized!r}.")


def _requantize_hint(folder: Path, kind: str) -> str:
    """The export command that adds `kind` graphs to `folder` (keeping the int8 ones it has: an export without --int8
    over them is refused)."""
    flags = [f"--{k}" for k in QUANTIZED if k == kind or (folder / quantized_name(ENCODER, k)).is_file()]
    return f"Export with `python -m export --model MODEL --out {folder} {' '.join(flags)}`"


def _kind_of(files: dict[str, str]) -> str | None:
    """The quantized kind ("int8", "int4") of the graph files loaded, None for fp32 (or fp16, bf16)."""
    return next((k for k in QUANTIZED if files[ENCODER] == quantized_name(ENCODER, k)), None)


def _graph_of_kind(folder: Path, files: dict[str, str], wanted: bool, graph: str, option: str) -> str | None:
    """`graph`'s file of the loaded graphs' kind, where `wanted` (the bool `option` of `from_pretrained`), the folder
    has it and the decoder serves from the with-past and cross-attention K/V graphs (the CPU, no IO binding)."""
    if not isinstance(wanted, bool | np.bool_):
        raise TypeError(f"OnnxT5.from_pretrained: {option} must be True or False, got {wanted!r}.")
    if not wanted or CROSS_KV not in files:
        return None
    kind = _kind_of(files)
    name = quantized_name(graph, kind) if kind else graph
    return name if (folder / name).is_file() else None


def _weights_once_ok(providers: Any, io_binding: bool | None) -> bool:
    """Whether the decoder may serve from the layouts that hold each weight once (the cross-attention K/V graph and
    the with-past graph, or the merged graph): the CPU alone and no IO binding (which binds the two graphs'
    sessions)."""
    names = [p[0] if isinstance(p, tuple) else p for p in (providers or [])]
    return io_binding is not True and all(name == "CPUExecutionProvider" for name in names)


class OnnxT5:
    """onnxruntime sessions (the encoder; the decoder with past, and the first step from it and the cross-attention
    K/V graph, from the merged decoder, or from its own graph) and `generate`."""

    def __init__(self, folder: Path, sessions: dict[str, ort.InferenceSession], settings: Settings,
                 config: dict[str, Any], meta: ExportMeta | None = None, quantized: bool | str = False,
                 files: dict[str, str] | None = None):
        self.folder = folder
        kind = quantized_kind(quantized, "OnnxT5")
        self.files = files or {g: quantized_name(g, kind) if kind else g for g in sessions}  # graph -> file loaded
        self.encoder = sessions[ENCODER]
        self.decoder: Any
        self.decoder_with_past: Any
        if CROSS_KV in sessions:  # each decoder weight once: the with-past graph serves the first step too
            self.decoder_with_past = sessions[DECODER_WITH_PAST]
            self.decoder = FirstStep(sessions[CROSS_KV], self.decoder_with_past)
        elif DECODER_MERGED in sessions:  # an export without the cross-attention graph: the merged one's branches
            self.decoder, self.decoder_with_past = (Branch(sessions[DECODER_MERGED], c) for c in (False, True))
        else:  # an export without either
            self.decoder, self.decoder_with_past = sessions[DECODER], sessions[DECODER_WITH_PAST]
        self.settings = settings
        self.config = config
        self.meta = meta
        self.quantized: bool | str = kind or False  # the graphs loaded: False (fp32, fp16, bf16), "int8" or "int4"
        logits = self.decoder.get_outputs()[0].shape
        vocab = meta.model["vocab_size"] if meta else config.get("vocab_size", logits[-1])
        if not isinstance(vocab, int):
            raise ValueError(f"OnnxT5: {folder} gives no vocabulary size (config.json's vocab_size).")
        self.vocab_size = vocab
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
        self.assisted_stats: AssistedStats | None = None  # the last assisted `generate` call's counts and times
        self._once = shrink_after_run()  # for the encoder and the first step, which run once per call
        self.dtype = "fp32"  # set by `_load` from the files it loaded
        self.bound: BoundSteps | None = None  # the IO-binding steps, when loaded with io_binding (`bind`)
        self._log_softmax: LogSoftmax | None = None  # beam search's, made by the first one
        self.search: InGraphSearch | None = None  # greedy search in one graph, when the folder has it (`_load`)
        self.one_row: OneRow | None = None  # the int8 graphs' one-row steps, when the folder has their graph
        # the same on the one-row graph with its cache kept in place, when the folder has that graph (then one_row
        # is None: a call steps on one of the two)
        self.one_row_shared: SharedCache | None = None
        self.shared: SharedCache | None = None  # the search steps on a cache kept in place, when the folder has it

    def bind(self, providers: list[Any]) -> None:
        """Run `generate` through IO binding: the cache and the encoder output stay on the providers' device."""
        device = device_of(providers)
        once = shrink_after_run(f"cpu:0;gpu:{device.id}" if device.kind == "cuda" else "cpu:0")
        self.bound = BoundSteps((self.encoder, self.decoder, self.decoder_with_past),
                                (self._self_names, self._cross_names, self._first_self, self._first_cross), device,
                                providers, once, encoder_rows, self.encode)

    @classmethod
    def from_pretrained(cls, folder: str | Path, quantized: bool | str = False, threads: int | None = None,
                        providers: list[Any] | None = None, verify: bool = False, io_binding: bool | None = None,
                        dtype: str = "fp32", search_graph: bool = True, one_row_graph: bool = True,
                        shared_cache: bool = True) -> OnnxT5:
        """Load a folder written by `python -m export`; `threads`: intra-op threads per session (None: one per core).

        `providers`: onnxruntime execution providers, e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"].
        `io_binding`: keep the K/V cache and the encoder output in the provider's memory between steps (None: on for
        a device provider such as CUDA, off on the CPU, where it measured no faster). `dtype`: "fp16" or "bf16"
        loads the graphs `python -m export --dtype` wrote (`*_fp16.onnx`). `quantized`: True or "int8" loads the int8
        graphs (`python -m export --int8`, `*_quantized.onnx`), "int4" the 4-bit ones (`--int4`, `*_q4.onnx`).
        `search_graph`: let one-row greedy calls on a small decoder run their decoding loop inside onnxruntime, on
        the folder's search graph (`export.search_graph`; on the CPU, on one thread; `InGraphSearch` and
        SEARCH_MAX_STEP_BYTES say which calls), the same tokens; False: always the Python loop. `one_row_graph`:
        with the int8 graphs, let calls that decode one sequence step on the folder's one-row graph (8-bit blocks,
        faster at one row on the CPU; `export.one_row`), opened at the first such call; False: every call on the int8
        with-past graph. `shared_cache`: let greedy and beam search step on the folder's shared-cache graphs (the
        self-attention cache appended in place, and beams followed by an index instead of copies;
        `export.shared_cache`), the one-row calls on the one-row graph's, on the CPU without IO binding; the
        shared-cache graph then opens at load and the with-past graph at its first run (`DeferredSession`: only
        assisted decoding and `steps` called directly run it), so the decoder's weights are held once; False: on the
        with-past graph (and the one-row graph) as exported.

        The folder is checked against its export_meta.json first: each graph's size, the export id it carries and its
        shapes (`verify=True` also compares every file's sha256, as `verify()` does). generation_config.json is
        checked with `generate`'s rules. Every problem is a FileNotFoundError or ValueError naming the file and the
        fix.
        """
        if not isinstance(verify, bool | np.bool_):
            raise TypeError(f"OnnxT5.from_pretrained: verify must be True or False, got {verify!r}.")
        folder, files = cls._graph_files(folder, quantized, threads, dtype, _weights_once_ok(providers, io_binding))
        meta = read_meta(folder)
        search = cls._search_file(folder, files, search_graph)
        one_row = cls._one_row_file(folder, files, one_row_graph)
        shared = cls._shared_file(folder, files, shared_cache)
        one_row_shared = cls._one_row_shared_file(folder, one_row, shared)
        names = [name for graph in files.values() for name in graph_files(folder, graph)]  # with external data
        names += ([search] if search else []) + (graph_files(folder, one_row) if one_row else [])
        names += [name for name in (shared, one_row_shared) if name]
        check_sizes(folder, meta, names)
        if verify:
            verify_checksums(folder, meta, names)
        return cls._load(folder, files, threads, providers, meta, io_binding, search, one_row, shared, one_row_shared)

    @classmethod
    def from_staged(cls, folder: str | Path, quantized: bool | str = False, threads: int | None = None,
                    providers: list[Any] | None = None, io_binding: bool | None = None,
                    dtype: str = "fp32", search_graph: bool = True, one_row_graph: bool = True,
                    shared_cache: bool = True) -> OnnxT5:
        """Load graphs without export_meta.json's checks: for the exporter, which runs the graphs it has just written
        (its int8 and int4 checks) before it writes export_meta.json. Anything else loads with `from_pretrained`."""
        folder, files = cls._graph_files(folder, quantized, threads, dtype, _weights_once_ok(providers, io_binding))
        one_row, shared = cls._one_row_file(folder, files, one_row_graph), cls._shared_file(folder, files, shared_cache)
        return cls._load(folder, files, threads, providers, None, io_binding,
                         cls._search_file(folder, files, search_graph), one_row, shared,
                         cls._one_row_shared_file(folder, one_row, shared))

    @staticmethod
    def _search_file(folder: Path, files: dict[str, str], wanted: bool) -> str | None:
        """The search graph of the loaded graphs' kind, where the folder has it and the decoder serves from the
        with-past graph and the cross-attention K/V graph (the CPU, no IO binding), which the search graph holds."""
        return _graph_of_kind(folder, files, wanted, SEARCH, "search_graph")

    @staticmethod
    def _one_row_file(folder: Path, files: dict[str, str], wanted: bool) -> str | None:
        """The one-row graph, where the folder has it, the int8 graphs are loaded and the first step comes from the
        cross-attention K/V graph (the CPU, no IO binding), which the one-row steps start from too."""
        if not isinstance(wanted, bool | np.bool_):
            raise TypeError(f"OnnxT5.from_pretrained: one_row_graph must be True or False, got {wanted!r}.")
        if not wanted or CROSS_KV not in files or _kind_of(files) != "int8":
            return None
        return ONE_ROW if (folder / ONE_ROW).is_file() else None

    @staticmethod
    def _shared_file(folder: Path, files: dict[str, str], wanted: bool) -> str | None:
        """The shared-cache graph of the loaded graphs' kind, where the folder has it and the decoder serves from the
        with-past graph and the cross-attention K/V graph (the CPU, no IO binding)."""
        return _graph_of_kind(folder, files, wanted, SHARED_CACHE, "shared_cache")

    @staticmethod
    def _one_row_shared_file(folder: Path, one_row: str | None, shared: str | None) -> str | None:
        """The one-row graph with its cache kept in place, where the one-row graph and the shared-cache graphs are
        used and the folder has it."""
        return ONE_ROW_SHARED if one_row and shared and (folder / ONE_ROW_SHARED).is_file() else None

    @staticmethod
    def _graph_files(folder: str | Path, quantized: bool | str, threads: int | None,
                     dtype: str = "fp32", weights_once: bool = True) -> tuple[Path, dict[str, str]]:
        """The folder and the file of each graph (GRAPHS -> file name); FileNotFoundError naming what is missing."""
        if not isinstance(folder, str | os.PathLike):
            raise TypeError(f"OnnxT5.from_pretrained: folder must be a path, got {folder!r}.")
        if not str(folder).strip():
            raise ValueError("OnnxT5.from_pretrained: folder is an empty string; give the export folder "
                             "(`python -m export --model MODEL --out FOLDER` writes one).")
        kind = quantized_kind(quantized)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int | np.integer)
                                    or not 1 <= threads <= MAX_THREADS):
            raise ValueError(f"OnnxT5.from_pretrained: threads must be an integer from 1 to {MAX_THREADS}, or None "
                             f"(one per core), got {threads!r}.")
        if dtype not in DTYPES:
            raise ValueError(f"OnnxT5.from_pretrained: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        if kind and dtype != "fp32":
            raise ValueError(f"OnnxT5.from_pretrained: quantized={quantized!r} loads the {kind} graphs, made from the "
                             f"fp32 ones; dtype={dtype!r} cannot go with it: choose one.")
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"OnnxT5: {folder} is not a folder. Export one with "
                                    f"`python -m export --model MODEL --out {folder}`.")
        files = {g: quantized_name(g, kind) if kind else dtype_name(g, dtype) for g in GRAPHS}
        # On the CPU, the decoder's weights once, for both steps: the with-past graph and the first step's
        # cross-attention K/V graph (`export.cross_kv`), fp32, int8 or int4 alike. An export without that graph
        # serves fp32 from the merged decoder (`export.merge`), whose branches lose onnxruntime's int8 MatMul
        # fusions (about 3x slower, docs/results.md). Not with IO binding, which binds the two graphs' sessions.
        cross = quantized_name(CROSS_KV, kind) if kind else dtype_name(CROSS_KV, dtype)
        if weights_once and dtype == "fp32" and (folder / cross).is_file():
            files = {ENCODER: files[ENCODER], CROSS_KV: cross, DECODER_WITH_PAST: files[DECODER_WITH_PAST]}
        elif weights_once and not kind and dtype == "fp32" and (folder / DECODER_MERGED).is_file():
            files = {ENCODER: files[ENCODER], DECODER_MERGED: DECODER_MERGED}
        missing = [f for f in files.values() if not (folder / f).is_file()]
        if kind and missing and all((folder / g).is_file() for g in GRAPHS):
            raise FileNotFoundError(f"OnnxT5: quantized={quantized!r}, but {folder} holds no {kind} graphs "
                                    f"({', '.join(missing)}). {_requantize_hint(folder, kind)}, or load with "
                                    "quantized=False.")
        if dtype != "fp32" and missing and all((folder / g).is_file() for g in GRAPHS):
            raise FileNotFoundError(f"OnnxT5: dtype={dtype!r}, but {folder} holds no {dtype} graphs "
                                    f"({', '.join(missing)}). Export with `python -m export ... --dtype {dtype}`, or "
                                    "load the fp32 graphs (dtype='fp32').")
        if missing:
            raise FileNotFoundError(f"OnnxT5: {folder} lacks {', '.join(missing)}; the runtime needs the encoder, "
                                    "the first decoder step and the decoder with past. Re-export the folder with "
                                    f"`python -m export --model MODEL --out {folder}`.")
        return folder, files

    @classmethod
    def _load(cls, folder: Path, files: dict[str, str], threads: int | None, providers: list[Any] | None,
              meta: ExportMeta | None, io_binding: bool | None = None, search: str | None = None,
              one_row: str | None = None, shared: str | None = None, one_row_shared: str | None = None) -> OnnxT5:
        if io_binding is not None and not isinstance(io_binding, bool | np.bool_):
            raise TypeError(f"OnnxT5.from_pretrained: io_binding must be True, False or None (on for a device "
                            f"provider such as CUDA), got {io_binding!r}.")
        fix = meta.fix() if meta else reexport_hint(folder)
        config_file = folder / "config.json"
        config = read_json_object(config_file, fix) if config_file.exists() else {}
        settings = settings_from_file(folder / "generation_config.json")
        for key in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            if getattr(settings, key) is None:
                setattr(settings, key, config.get(key))
        providers = check_providers(providers)
        # where the searches step on the shared-cache graph, it opens now in the with-past graph's place (checked as
        # it), and the with-past graph at its first run (`DeferredSession`): one session of the decoder's weights
        opened = {g: shared if shared and g == DECODER_WITH_PAST else f for g, f in files.items()}
        # the per-step graphs' pools spin on between their back-to-back runs, and into the next call's first
        # milliseconds: there the encoder's and first step's pools, spinning too, took longer than sleeping ones
        # (docs/results.md, "Pools that spin within their run")
        spins: dict[str, Spin] = {ENCODER: "never", DECODER: "never", CROSS_KV: "never"}
        sessions: dict[str, Any] = {g: open_session(folder / f, session_options(threads, spins.get(g, "always")),
                                                    providers, fix) for g, f in opened.items()}
        warn_if_fallen_back(sessions[ENCODER], providers)
        if meta:
            check_graphs(folder, meta, sessions, opened, in_place=bool(shared))
            check_config(folder, config, meta)
        in_place = sessions[DECODER_WITH_PAST] if shared else None
        if in_place is not None:
            def open_with_past(name: str = files[DECODER_WITH_PAST]) -> ort.InferenceSession:
                session = open_session(folder / name, session_options(threads), providers, fix)
                _id_check(folder, meta, DECODER_WITH_PAST, name)(session)
                return session

            sessions[DECODER_WITH_PAST] = DeferredSession(open_with_past, in_place, SHARED_CACHE_INPUTS)
        kind = _kind_of(files) or False
        model = cls(folder, sessions, settings, config, meta, quantized=kind, files=files)
        model.dtype = next((d for d in DTYPES if files[ENCODER] == dtype_name(ENCODER, d)), "fp32")  # int8/4: fp32
        running = sessions[ENCODER].get_providers()  # what onnxruntime started, with the options that were asked
        active = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in running]
        if io_binding or (io_binding is None and device_of(active).kind != "cpu"):
            model.bind(active)
        elif one_row and _bytes(folder, files[DECODER_WITH_PAST]) > ONE_ROW_MIN_STEP_BYTES:
            if one_row_shared:
                model.one_row_shared = SharedCache(folder / one_row_shared, session_options(threads), providers,
                                                   _id_check(folder, meta, ONE_ROW_SHARED, one_row_shared))
            else:
                model.one_row = OneRow(folder / one_row, session_options(threads), providers,
                                       _id_check(folder, meta, ONE_ROW, one_row))
        if model.bound is None and shared:  # (the CPU without IO binding: `_shared_file`)
            model.shared = SharedCache(folder / shared, session_options(threads), providers,
                                       _id_check(folder, meta, SHARED_CACHE, shared), in_place)
        if model.bound is None and search and _bytes(folder, files[DECODER_WITH_PAST]) <= SEARCH_MAX_STEP_BYTES:
            # its pool spins only within its run (SEARCH_MAX_STEP_BYTES); short inputs' encoder on the caller's thread
            tokens = SEARCH_ENCODER_WORK // _bytes(folder, files[ENCODER])
            model.search = InGraphSearch(folder / search, session_options(threads, spin="in_run"), providers,
                                         _id_check(folder, meta, SEARCH, search),
                                         (folder / files[ENCODER], tokens) if threads != 1 else None)
        # the defaults alone must make a valid call: a bad generation_config.json fails here, not at every generate
        try:
            resolve(settings, {}, model.vocab_size, caller=f"OnnxT5: {folder}: generation_config.json and "
                                                           "config.json's token ids give")
        except (TypeError, ValueError) as e:
            raise ValueError(f"{e} Correct those files; {fix}.") from None
        return_freed_heap()
        return model

    def verify(self) -> list[str]:
        """Compare the sha256 of every file export_meta.json lists (and the folder holds) with what the export wrote.

        Returns the names checked; ValueError naming each file that differs.
        """
        if self.meta is None:
            raise ValueError(f"OnnxT5.verify: {self.folder} was loaded without export_meta.json (from_staged); "
                             "load it with OnnxT5.from_pretrained.")
        return verify_checksums(self.folder, self.meta, self.served_files())

    @property
    def one_row_graph(self) -> Path | None:
        """The graph one-row calls step on, where it is not the with-past graph (`one_row`, `one_row_shared`)."""
        steps = self.one_row_shared or self.one_row
        return steps.path if steps is not None else None

    def served_files(self) -> list[str]:
        """The names of the files this model serves from, or will at the first call that needs them: its graphs with
        their external data, the search, one-row and shared-cache graphs where it uses them."""
        names = [name for graph in self.files.values() for name in graph_files(self.folder, graph)]
        if self.one_row is not None:
            names += graph_files(self.folder, ONE_ROW)
        if self.one_row_shared is not None:  # its weights are the one-row graph's data file
            names += [name for name in graph_files(self.folder, ONE_ROW) if name != ONE_ROW]
        names += [steps.path.name for steps in (self.search, self.shared, self.one_row_shared) if steps is not None]
        return names

    @property
    def tokenizer(self) -> Any:
        """The folder's `tokenizer.json` as a `tokenizers.Tokenizer` (None when the export has none)."""
        path = self.folder / "tokenizer.json"
        if self._tokenizer is None and path.exists():
            if not path.is_file():
                raise ValueError(f"OnnxT5: {path} is not a file; copy the export's tokenizer.json back, or "
                                 "re-export the folder.")
            from tokenizers import Tokenizer

            try:
                self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception for a file it cannot parse)
                raise ValueError(f"OnnxT5: {self.folder / 'tokenizer.json'} cannot be read ({e}); copy the "
                                 "export's tokenizer.json back, or re-export the folder.") from None
        return self._tokenizer

    # ---- graph calls -------------------------------------------------------------------------------------------------
    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The encoder's states, run on at most ENCODER_CHUNK_TOKENS tokens at a time (whole rows, at least one).

        int8 graphs quantize activations per run: a row's scale comes from its chunk, as it comes from its batch.
        """
        rows = encoder_rows(ids.shape[1])
        if ids.shape[0] <= rows:
            return self.encoder.run(None, {"input_ids": ids, "attention_mask": mask}, self._once)[0]
        starts = range(0, ids.shape[0], rows)
        parts = [self.encoder.run(None, {"input_ids": ids[i:i + rows], "attention_mask": mask[i:i + rows]},
                                  self._once if i == starts[-1] else None)[0] for i in starts]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def first_steps(self, tokens: np.ndarray, mask: np.ndarray,
                    hidden: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The first decoder call on `tokens` (N, length): the logits of every position (N, length, vocabulary),
        then the self-attention and the cross-attention K/V of each layer (key, value, ...)."""
        out = self.decoder.run(None, {"input_ids": tokens, "encoder_attention_mask": mask,
                                      "encoder_hidden_states": hidden}, self._once)
        return out[0], [out[i] for i in self._first_self], [out[i] for i in self._first_cross]

    def first_step(self, tokens: np.ndarray, mask: np.ndarray,
                   hidden: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """`first_steps` with the last position's logits only (N, vocabulary)."""
        logits, own, cross = self.first_steps(tokens, mask, hidden)
        return logits[:, -1, :], own, cross

    @property
    def multi_token_steps(self) -> bool:
        """Whether the decoder with past takes several new tokens per call (exports before it took exactly one).
        Opens a deferred with-past graph: only the graph itself knows its input's length (the shared-cache graph that
        answers for it before takes one token or several by its own export)."""
        graph = self.decoder_with_past
        session = graph.session if isinstance(graph, DeferredSession) else graph
        return session.get_inputs()[0].shape[1] != 1

    def steps(self, tokens: np.ndarray, mask: np.ndarray, own: list[np.ndarray],
              cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """New tokens per sequence (N, n) on top of the cache: the logits of each (N, n, vocabulary) and the
        self-attention K/V, n longer. n > 1 needs `multi_token_steps`.

        `own` has a row per sequence; `mask` and `cross` have one per input, shared by its sequences (beams).
        """
        feed = {"input_ids": tokens, "encoder_attention_mask": mask}
        feed.update(zip(self._self_names, own, strict=True))
        feed.update(zip(self._cross_names, cross, strict=True))
        out = self.decoder_with_past.run(None, feed)
        return out[0], out[1:]

    def step(self, tokens: np.ndarray, mask: np.ndarray, own: list[np.ndarray],
             cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One token per sequence (N, 1) on top of the cache: its logits (N, vocabulary) and the self-attention K/V,
        one longer (`steps` with one token)."""
        logits, own = self.steps(tokens, mask, own, cross)
        return logits[:, -1, :], own

    def _stepped_on(self, first: Any, with_past: ort.InferenceSession) -> OnnxT5:
        """This model with `first` and `with_past` serving its first step and the steps after it (the one-row
        graph's); its other sessions shared."""
        view = copy.copy(self)
        view.decoder, view.decoder_with_past = first, with_past
        return view

    def take_rows(self, tensors: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
        """Each tensor with row `rows[i]` as its row i (beam search's reorder of the self-attention cache)."""
        return [t[rows] for t in tensors]

    # ---- generate ----------------------------------------------------------------------------------------------------
    def generate(self, input_ids: Any, attention_mask: Any = None, assistant: Any = None, **kwargs: Any) -> np.ndarray:
        """Token ids (N, length) int64, laid out as transformers' `generate` returns them for T5.

        `assistant`: another OnnxT5 (a student of this model) that drafts tokens this model verifies several at a
        time (`export/runtime/assisted.py`): greedy returns this model's own tokens, sampling draws from this model's
        distribution. `num_assistant_tokens` is the first draft length, `num_assistant_tokens_schedule` "cost" (the
        length with the most expected tokens per second, from the acceptance and times measured so far; 0, the model
        alone, when drafting does not pay), "heuristic" (+2 after a fully accepted draft, -1 otherwise) or "constant",
        as transformers' names (`export/runtime/draft_length.py`); the default is "cost", "heuristic" for sampling
        with a seed (its draws then repeat). `assisted_stats` then holds the call's counts (drafted, accepted, calls,
        draft lengths) and where its time went.

        N = batch * num_return_sequences; each row starts with the decoder start token. Greedy rows that end early
        are padded with pad_token_id after their EOS; beam search fills as transformers 5.x does (with pad_token_id
        unless it is 0, then with the first EOS id). Without `attention_mask` every position is attended to, as in
        transformers 5.x for encoder-decoders: pass the tokenizer's mask with padded batches.
        kwargs: see `Settings`; any other raises TypeError.
        """
        drafting = {key: kwargs.pop(key) for key in DRAFT_OPTIONS if key in kwargs}
        if drafting and assistant is None:
            raise TypeError(f"OnnxT5.generate: {', '.join(drafting)} without assistant=: pass the draft model.")
        s = resolve(self.settings, kwargs, self.vocab_size)
        ids, mask = checked_inputs(input_ids, attention_mask, self.vocab_size)
        if assistant is not None:
            draft = Draft.checked(self, assistant, s, drafting.get("num_assistant_tokens", DRAFT_START),
                                  drafting.get("num_assistant_tokens_schedule", default_schedule(s.do_sample, s.seed)))
            self.assisted_stats = AssistedStats()
            return assisted_search(self, draft, ids, mask, s, self.assisted_stats)
        if self.search is not None and ids.shape[0] == 1 and self.search.serves(s):
            own = self.search.encoder_path is not None  # else a one-thread model's own encoder
            return self.search.generate(ids, mask, self.search.encode(ids, mask, self._once) if own
                                        else self.encode(ids, mask), s)
        steps = self.bound or self  # IO binding: hidden states and K/V stay OrtValues on the provider's device
        hidden = steps.encode(ids, mask)
        if ids.shape[0] == 1 and s.num_beams == 1 and s.num_return_sequences == 1:
            if self.one_row_shared is not None:
                return greedy_search(self._in_place(self.one_row_shared, 1, s.max_length), hidden, mask, s)
            if self.one_row is not None:
                return greedy_search(self._stepped_on(*self.one_row.sessions(self.decoder.cross_kv)), hidden, mask, s)
        if s.num_beams > 1:
            if self._log_softmax is None:
                self._log_softmax = LogSoftmax()
            if self.shared is not None:  # the cache appended in place, beams by an index (set without IO binding)
                return beam_search(self._in_place(self.shared, s.num_beams, s.max_length), hidden, mask, s,
                                   self._log_softmax)
            return beam_search(steps, hidden, mask, s, self._log_softmax)
        if s.num_return_sequences > 1:
            rows = np.repeat(np.arange(mask.shape[0]), s.num_return_sequences)
            hidden, mask = steps.take_rows([hidden], rows)[0], mask[rows]
        if self.shared is not None:
            return greedy_search(self._in_place(self.shared, 1, s.max_length), hidden, mask, s)
        return greedy_search(steps, hidden, mask, s)

    def _in_place(self, graph: SharedCache, beams: int, max_length: int) -> SharedCacheSteps:
        """One call's steps on the shared-cache `graph`, `beams` rows per input (1 for greedy)."""
        return graph.steps(lambda states: self.decoder.cross_attention(states, self._once), self.vocab_size, beams,
                           max_length)
