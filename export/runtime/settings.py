"""The `generate` options OnnxT5 implements: read from generation_config.json, merged with a call's arguments, checked.

kwargs > generation_config.json > transformers' defaults, with transformers' rules for max/min lengths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np


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


def settings_from_file(path: Path) -> Settings:
    """The settings a generation_config.json gives (none when it is absent); ValueError for keys OnnxT5 ignores."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    known = {f.name for f in fields(Settings)}
    problems = [f"{key}={value!r}" for key, value in data.items() if key not in known and key not in NO_EFFECT
                and value is not None and NEUTRAL.get(key, object()) != value]
    if problems:
        raise ValueError(f"{path} sets {', '.join(problems)}, which OnnxT5 does not implement (it implements "
                         f"{', '.join(sorted(known))}). Remove those keys from the file or generate with transformers.")
    return Settings(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Resolved:
    """The settings of one `generate` call, every value decided."""

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


def resolve(base: Settings, kwargs: dict[str, Any]) -> Resolved:
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
    r = Resolved(max_length=int(max_length), min_length=int(min_length), num_beams=int(merged["num_beams"]),
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
