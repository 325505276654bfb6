"""Settings of an evaluation run: one dataclass tree, read from YAML and validated once.

    python -m eval --config configs/eval/default.yaml

A YAML file under `configs/eval/` holds what differs from the defaults below (the defaults are the embedded Bible
test split, greedy decoding and a small speed grid); the variants are always listed there. An unknown key, a value of
the wrong type or an inconsistent setting is named by its dotted path (`speed.batch_sizes[1]`, `variants[2]
(student-onnx).kind`); every problem is collected and `ConfigError` is raised once with all of them.

Everything a comparison depends on (dataset, examples, task prefix, generation settings, threads) is set once here
and is the same for every variant: that is what makes the report like for like.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from distill.errors import UserError
from export.layout import QUANTIZED

# transformers fp32, torch dynamic int8 of the same weights, project's OnnxT5, and OnnxT5 with a draft model (`draft`):
# assisted decoding, whose predictions must be those of its `source` (the same export without a draft)
KINDS = ("torch", "torch-int8", "onnx", "onnx-assisted")
ONNX_KINDS = ("onnx", "onnx-assisted")
METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum")
HEADLINE = {"translation": ("bleu",), "summarization": ("rouge2", "rougeL")}  # the numbers a task is judged by


class ConfigError(UserError):
    """A configuration the run cannot use; `python -m eval` prints its message and exits with status 2."""


@dataclass
class DatasetConfig:
    path: str = "data/bible"  # local folder holding {split}.jsonl/.json/.csv/.parquet, a data file, or a hub id
    name: str | None = None  # hub config name, e.g. "3.0.0" for cnn_dailymail
    split: str = "test"
    source_column: str = "en"  # dotted names read nested columns, e.g. translation.en
    target_column: str = "fr"
    extra_references: list[str] = field(default_factory=lambda: ["fr_darby"])  # more reference columns: multi-ref
    task_prefix: str = "translate English to French: "
    task: str = "translation"  # picks the headline metrics: translation -> BLEU, summarization -> ROUGE-2, ROUGE-L
    limit: int | None = None  # the first N examples only (`--limit` overrides)
    max_source_length: int = 512  # source tokens kept (T5's pre-training length); longer inputs are truncated


@dataclass
class GenerationConfig:
    """Decoding settings, passed explicitly to every variant (so no variant falls back to its own defaults)."""

    num_beams: int = 1  # greedy, as the teacher's metrics.json
    max_new_tokens: int = 128  # the longest French test verse is 117 tokens with the 8k tokenizer
    min_new_tokens: int | None = None
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool = False
    batch_size: int = 16  # sequences per generate call in the quality pass (examples sorted by length)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `generate` (transformers and OnnxT5 accept the same names); unset ones are left out."""
        kwargs = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                  "min_new_tokens": self.min_new_tokens, "do_sample": False,
                  "no_repeat_ngram_size": self.no_repeat_ngram_size, "repetition_penalty": self.repetition_penalty,
                  "length_penalty": self.length_penalty, "early_stopping": self.early_stopping}
        return {k: v for k, v in kwargs.items() if v is not None}


@dataclass
class Variant:
    name: str
    kind: str  # one of KINDS
    path: str  # a local folder; a hub id when `hub` is true
    quantized: bool | str = False  # onnx only: true or int8 loads the *_quantized.onnx graphs, int4 the *_q4.onnx
    hub: bool = False  # `path` is a Hugging Face hub id (needs a network); otherwise the folder must exist
    source: str | None = None  # the variant this one was converted from (export, quantization): gated by export_margin
    teacher: str | None = None  # the variant this one was distilled from: gated by student_margin
    margin: float | None = None  # this variant's own gate margin, instead of the gate's default
    build: str | None = None  # the command that creates `path`, named when the folder is missing
    draft: str | None = None  # onnx-assisted only: the draft model's export folder (a student of `path`'s model)

    @property
    def quantized_kind(self) -> str | None:
        """The quantized graphs this variant loads: None (fp32), "int8" (`quantized: true` too) or "int4"."""
        if self.quantized is True:
            return "int8"
        return self.quantized or None


@dataclass
class QualityConfig:
    bootstrap_samples: int = 1000  # sacrebleu's default number of paired bootstrap resamples
    alpha: float = 0.05  # a difference with p < alpha is reported as significant


@dataclass
class GateConfig:
    """The run fails when a variant loses more than a margin (in metric points) against the variant it comes from."""

    export_margin: float = 0.5  # ONNX / int8 vs its PyTorch source: an export should not change what comes out
    # student vs teacher: Shleifer and Rush's 12->6 and 12->3 students (arXiv:2010.13002) stay within about 2 BLEU /
    # 2 ROUGE-2 of their teachers; seq2seq-distillation calls 10 ROUGE-2 points below the teacher a bug. 5 flags a
    # failed run, not a tuned one.
    student_margin: float = 5.0
    metrics: list[str] | None = None  # default: the task's headline metrics (HEADLINE)


@dataclass
class SpeedConfig:
    """The speed grid; every variant runs every cell in its own process with the same thread count."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    num_beams: list[int] = field(default_factory=lambda: [1, 4])  # fixed-length mode; natural mode uses generation's
    input_lengths: list[int] = field(default_factory=lambda: [16, 64, 256])  # source tokens, fixed-length mode
    new_tokens: int = 32  # fixed-length mode: min_new_tokens = max_new_tokens = this, EOS suppressed
    natural_batches: int = 4  # natural mode: batches of real test inputs per batch size (0: no natural mode)
    warmup: int = 2  # untimed calls before each cell (first-call allocations, onnxruntime's arena)
    repeats: int = 5  # timed calls per cell (natural mode: passes over its batches)
    threads: int | None = None  # intra-op threads for torch and onnxruntime; None: os.cpu_count(), recorded as used


@dataclass
class EvalConfig:
    variants: list[Variant]
    reference: str = "teacher-torch"  # the variant others are compared with: significance and speed-up
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def headline(self) -> tuple[str, ...]:
        return HEADLINE[self.dataset.task]

    def gate_metrics(self) -> tuple[str, ...]:
        return tuple(self.gate.metrics) if self.gate.metrics is not None else self.headline()


# ---- loading ---------------------------------------------------------------------------------------------------------
def load_config(path: str | Path) -> EvalConfig:
    """Read and validate a YAML file; raises ConfigError naming every problem."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Config file {path} is a folder; give a YAML file (e.g. configs/eval/default.yaml).")
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist (the shipped ones are in configs/eval/).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); save "
                          "it as UTF-8.") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f"line {where.line + 1}, column {where.column + 1}: " if where is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: not valid YAML ({at}{problem}); fix the file (configs/eval/ holds examples)."
                          ) from None
    return from_dict(data, source=str(path))


def from_dict(data: Any, source: str = "config") -> EvalConfig:
    problems: list[str] = []
    config = _build(EvalConfig, data, "", problems)
    if config is not None:
        problems += _check(config)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """An instance of dataclass `cls` from a mapping; problems (unknown keys, types, missing keys) are appended."""
    if not isinstance(data, dict):
        problems.append(f"{where or 'the file'}: expected a mapping of {cls.__name__} settings, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            problems.append(f"{_join(where, str(key))}: unknown key (known: {', '.join(known)})")
    values, complete = {}, True
    for f in fields(cls):
        name = _join(where, f.name)
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                problems.append(f"{name}: required")
                complete = False
            continue
        ok, values[f.name] = _convert(hints[f.name], data[f.name], name, problems)
        complete &= ok
    return cls(**values) if complete else None


def _convert(tp: Any, value: Any, name: str, problems: list[str]) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return True, None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:
            return _convert(arms[0], value, name, problems)
        for arm in arms:  # the first type the value is (bool before str: YAML's true stays true)
            ok, converted = _convert(arm, value, name, [])
            if ok:
                return True, converted
        problems.append(f"{name}: expected {' or '.join(a.__name__ for a in arms)}, got {value!r}")
        return False, None
    if is_dataclass(tp):
        built = _build(tp, value, name, problems)
        return built is not None, built
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{name}: expected a list, got {value!r}")
            return False, None
        converted = [_convert(args[0], item, f"{name}[{i}]", problems) for i, item in enumerate(value)]
        return all(ok for ok, _ in converted), [item for _, item in converted]
    accepts = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[tp]
    if not isinstance(value, accepts) or (isinstance(value, bool) and tp is not bool):  # YAML's true is not 1
        problems.append(f"{name}: expected {tp.__name__}, got {value!r}")
        return False, None
    if tp is float and not math.isfinite(value):  # a NaN margin would pass every gate: no comparison is true
        problems.append(f"{name}: expected a finite number, got {value!r}")
        return False, None
    return True, float(value) if tp is float else value


def _check(c: EvalConfig) -> list[str]:
    """Consistency rules that types cannot express."""
    problems = []

    def positive(name: str, value: int | None, minimum: int = 1) -> None:
        if value is not None and value < minimum:
            problems.append(f"{name}: must be >= {minimum}, got {value}")

    d, g, s = c.dataset, c.generation, c.speed
    if d.task not in HEADLINE:
        problems.append(f"dataset.task: {d.task!r} is not one of {', '.join(HEADLINE)}")
    positive("dataset.limit", d.limit)
    positive("dataset.max_source_length", d.max_source_length)
    positive("generation.num_beams", g.num_beams)
    positive("generation.max_new_tokens", g.max_new_tokens)
    positive("generation.min_new_tokens", g.min_new_tokens, minimum=0)
    if g.min_new_tokens is not None and g.min_new_tokens > g.max_new_tokens:
        problems.append(f"generation.min_new_tokens: {g.min_new_tokens} exceeds max_new_tokens {g.max_new_tokens}")
    positive("generation.batch_size", g.batch_size)
    if not c.variants:
        problems.append("variants: at least one variant is needed")
    names = [v.name for v in c.variants]
    for i, v in enumerate(c.variants):
        where = f"variants[{i}] ({v.name})"
        if names.count(v.name) > 1:
            problems.append(f"{where}.name: {v.name!r} is used by {names.count(v.name)} variants; names must differ")
        if v.kind not in KINDS:
            problems.append(f"{where}.kind: {v.kind!r} is not one of {', '.join(KINDS)}")
        if (v.draft is None) != (v.kind != "onnx-assisted"):
            problems.append(f"{where}.draft: an onnx-assisted variant names its draft model's export folder, and only "
                            "it does")
        if isinstance(v.quantized, str) and v.quantized not in QUANTIZED:
            problems.append(f"{where}.quantized: {v.quantized!r} is not true, false, {' or '.join(QUANTIZED)}")
        elif v.quantized and v.kind not in ONNX_KINDS:
            problems.append(f"{where}.quantized: only onnx variants have int8 graphs to load; PyTorch's dynamic "
                            "int8 is kind torch-int8")
        if v.hub and v.kind in ONNX_KINDS:
            problems.append(f"{where}.hub: an onnx variant is a local export folder (`make export` writes one)")
        for key in ("source", "teacher"):
            other = getattr(v, key)
            if other is not None and (other not in names or other == v.name):
                problems.append(f"{where}.{key}: {other!r} is not another variant (variants: {', '.join(names)})")
        if v.margin is not None and v.margin < 0:
            problems.append(f"{where}.margin: must be >= 0, got {v.margin}")
    if c.variants and c.reference not in names:
        problems.append(f"reference: {c.reference!r} is not a variant (variants: {', '.join(names)})")
    positive("quality.bootstrap_samples", c.quality.bootstrap_samples)
    if not 0 < c.quality.alpha < 1:
        problems.append(f"quality.alpha: must be in (0, 1), got {c.quality.alpha}")
    for key in ("export_margin", "student_margin"):
        if getattr(c.gate, key) < 0:
            problems.append(f"gate.{key}: must be >= 0, got {getattr(c.gate, key)}")
    for metric in c.gate.metrics or []:
        if metric not in METRICS:
            problems.append(f"gate.metrics: {metric!r} is not one of {', '.join(METRICS)}")
    for key in ("batch_sizes", "num_beams", "input_lengths"):
        values = getattr(s, key)
        if not values:
            problems.append(f"speed.{key}: at least one value is needed")
        for i, value in enumerate(values):
            positive(f"speed.{key}[{i}]", value)
    positive("speed.new_tokens", s.new_tokens)
    positive("speed.natural_batches", s.natural_batches, minimum=0)
    positive("speed.warmup", s.warmup, minimum=0)
    positive("speed.repeats", s.repeats)
    positive("speed.threads", s.threads)
    return problems


def _json_object(path: Path) -> dict[str, Any] | str:
    """The JSON object in `path`, or why it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return data if isinstance(data, dict) else f"a JSON {type(data).__name__}"


def check_paths(config: EvalConfig) -> None:
    """Every local variant folder exists and holds what its kind loads; raises ConfigError naming each missing one."""
    problems = []
    for v in config.variants:
        if v.hub:
            continue
        folder = Path(v.path).expanduser()
        how = f"build it with `{v.build}`" if v.build else "point `path` at a save_pretrained or export folder"
        if folder.exists() and not folder.is_dir():
            problems.append(f"variant {v.name}: {folder} is a file, not a folder; {how}")
        elif not folder.is_dir():
            problems.append(f"variant {v.name}: {folder} does not exist; {how}")
        elif v.kind in ONNX_KINDS:
            problems += _export_problems(v, folder, how)
            if v.draft is not None:
                draft = Path(v.draft).expanduser()
                problems += (_export_problems(v, draft, "export the student with `make export MODEL=... OUT=...`")
                             if draft.is_dir() else [f"variant {v.name}: its draft {draft} is not a folder; export "
                                                     "the student with `make export MODEL=... OUT=...`"])
        elif not (folder / "config.json").is_file():
            problems.append(f"variant {v.name}: {folder} holds no config.json (not a save_pretrained folder); {how}")
    if problems:
        raise ConfigError("Missing variants:\n" + "\n".join(f"  - {p}" for p in problems))


def _export_problems(v: Variant, folder: Path, how: str) -> list[str]:
    """What keeps `folder` from being loaded as variant `v`'s ONNX export."""
    meta = folder / "export_meta.json"  # written last by `python -m export`: the mark of a complete export
    if not meta.is_file():
        return [f"variant {v.name}: {folder} is not a finished ONNX export (no export_meta.json); {how}"]
    if not isinstance(export_meta := _json_object(meta), dict):
        return [f"variant {v.name}: {meta} is not a JSON object ({export_meta}); the export is damaged: {how}"]
    kind = v.quantized_kind
    if kind and not export_meta.get(kind):
        return [f"variant {v.name}: {folder} holds no {kind} graphs (exported without --{kind}); {how}"]
    return []
