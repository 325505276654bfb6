"""The `generate` options OnnxT5 implements: read from generation_config.json, merged with a call's arguments, checked.

kwargs > generation_config.json > transformers' defaults, with transformers' rules for max/min lengths. Every value is
checked here, once, before anything runs: a call's arguments by `resolve`, a generation_config.json by
`settings_from_file` and then `resolve` with no arguments (so a bad file fails at load, not at every call).
"""

from __future__ import annotations

import json
import math
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

# integer options and their smallest value; every integer must also stay below INT_LIMIT
INT_MIN = {"max_new_tokens": 1, "max_length": 2, "min_new_tokens": 0, "min_length": 0, "num_beams": 1,
           "num_return_sequences": 1, "top_k": 0, "no_repeat_ngram_size": 0, "seed": 0}
INT_LIMIT = 2**62  # lengths and ids become int64 arrays and sums of them: a bound with room to spare
TOKEN_IDS = ("decoder_start_token_id", "pad_token_id")  # and eos_token_id, an id or a list of ids
FLOATS = ("length_penalty", "temperature", "top_p", "repetition_penalty")
# temperature and repetition_penalty divide float32 scores: below this, logits of a few tens overflow to infinity
SMALLEST_DIVISOR = 1e-30
TOO_SMALL = "smaller ones overflow the float32 scores"


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; ValueError naming the file when it is not one."""
    if path.is_dir():
        raise ValueError(f"OnnxT5: {path} is a folder, not a JSON file; {what}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"OnnxT5: {path} is not valid JSON ({e}); {what}.") from None
    except OSError as e:
        raise ValueError(f"OnnxT5: {path} cannot be read ({e.strerror}); {what}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"OnnxT5: {path} holds a JSON {type(data).__name__}, not an object; {what}.")
    return data


def settings_from_file(path: Path) -> Settings:
    """The settings a generation_config.json gives (none when it is absent).

    ValueError naming the file for bad JSON, keys OnnxT5 ignores, or values `generate` would refuse (checked here
    value by value; `resolve` then checks how they combine).
    """
    if not path.exists():
        return Settings()
    data = read_json_object(path, "fix it, or delete it to use transformers' defaults")
    known = {f.name for f in fields(Settings)}
    problems = [f"{key}={value!r}" for key, value in data.items() if key not in known and key not in NO_EFFECT
                and value is not None and NEUTRAL.get(key, object()) != value]
    if problems:
        raise ValueError(f"OnnxT5: {path} sets {', '.join(problems)}, which OnnxT5 does not implement (it implements "
                         f"{', '.join(sorted(known))}). Remove those keys from the file or generate with transformers.")
    values = {k: v for k, v in data.items() if k in known}
    bad = value_problems(values, vocab=None)
    if bad:
        raise ValueError(f"OnnxT5: {path}: {'; '.join(bad)}. Correct or remove these keys.")
    return Settings(**values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:  # a Python int beyond float's range
        return False


def _eos_list(eos: Any) -> list[Any] | None:
    """eos_token_id as a list of its ids (None when it is neither an id nor a flat list of them)."""
    if _is_int(eos):
        return [eos]
    if isinstance(eos, np.ndarray) and eos.ndim == 1 and np.issubdtype(eos.dtype, np.integer):
        return eos.tolist()
    if isinstance(eos, list | tuple) and all(_is_int(e) for e in eos):
        return list(eos)
    return None


def value_problems(values: dict[str, Any], vocab: int | None) -> list[str]:
    """What is wrong with each set (not None) value on its own: its type, its range, token ids within `vocab`."""
    problems = []
    for key, v in values.items():
        if v is None:
            continue
        if key in INT_MIN or key in TOKEN_IDS:
            lowest = INT_MIN.get(key, 0)
            if not _is_int(v):
                problems.append(f"{key} must be an integer, got {v!r} ({type(v).__name__})")
            elif key in TOKEN_IDS and vocab is not None and not 0 <= v < vocab:
                problems.append(f"{key} must be a token id in [0, {vocab}) (the model's vocabulary), got {v}")
            elif not lowest <= v < INT_LIMIT:
                problems.append(f"{key} must be >= {lowest}" + (" and < 2**62" if v >= INT_LIMIT else "")
                                + f", got {v}" + (" (it counts the decoder start token: max_length=2 is one new "
                                                  "token)" if key == "max_length" else ""))
        elif key == "eos_token_id":
            ids = _eos_list(v)
            if ids is None:
                problems.append(f"eos_token_id must be a token id or a list of token ids, got {v!r}")
            elif any(not 0 <= e < (vocab if vocab is not None else INT_LIMIT) for e in ids):
                where = f"in [0, {vocab}) (the model's vocabulary)" if vocab is not None else ">= 0"
                problems.append(f"eos_token_id ids must be {where}, got {v!r}")
        elif key in FLOATS:
            if not _is_real(v):
                problems.append(f"{key} must be a number, got {v!r} ({type(v).__name__})")
            elif not _finite(v):
                problems.append(f"{key} must be finite, got {v}")
            elif key == "temperature" and not v >= SMALLEST_DIVISOR:
                problems.append(f"temperature must be > 0 (at least {SMALLEST_DIVISOR:g}: {TOO_SMALL}), got {v} "
                                "(for the most likely tokens, leave it unset and use do_sample=False)")
            elif key == "top_p" and not 0 < v <= 1:
                problems.append(f"top_p must be in (0, 1], got {v}")
            elif key == "repetition_penalty" and not v >= SMALLEST_DIVISOR:
                problems.append(f"repetition_penalty must be > 0 (at least {SMALLEST_DIVISOR:g}: {TOO_SMALL}; 1.0: "
                                f"none), got {v}")
        elif key == "do_sample" and not isinstance(v, bool | np.bool_):
            problems.append(f"do_sample must be True or False, got {v!r}")
        elif key == "early_stopping" and not (isinstance(v, bool | np.bool_) or (isinstance(v, str) and v == "never")):
            problems.append(f"early_stopping must be True, False or 'never', got {v!r}")
    return problems


# beam scores are float32 log-probabilities divided by length ** length_penalty: that factor must stay well inside
# float32's range (about 1e38), or every score becomes 0 or infinite and the beams are ranked by nothing
LENGTH_FACTOR_LIMIT = 1e30


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


def resolve(base: Settings, kwargs: dict[str, Any], vocab: int | None = None,
            caller: str = "OnnxT5.generate") -> Resolved:
    """kwargs > generation_config.json > transformers' defaults, with transformers' max/min length rules.

    Every value is checked (type, range, token ids within `vocab`), then how they combine; TypeError for an unknown
    argument, ValueError for anything else, each message starting with `caller`.
    """
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"{caller}: unsupported argument(s) {unknown}; it implements {sorted(known)}.")
    merged = {f.name: getattr(base, f.name) for f in fields(Settings)}
    merged.update({k: v for k, v in kwargs.items() if v is not None})
    problems = value_problems(merged, vocab)
    if problems:
        wrong_type = all(" must be an integer" in p or " must be a number" in p or " must be True or False" in p
                         for p in problems)
        raise (TypeError if wrong_type else ValueError)(f"{caller}: " + "; ".join(problems) + ".")
    for key, value in DEFAULTS.items():
        if merged[key] is None:
            merged[key] = value
    # max_new_tokens wins over max_length; both count the decoder start token as transformers does (prompt length 1)
    if merged["max_new_tokens"] is not None:
        max_length, max_name = merged["max_new_tokens"] + 1, f"max_new_tokens={merged['max_new_tokens']}"
    elif merged["max_length"] is not None:
        max_length, max_name = merged["max_length"], f"max_length={merged['max_length']}"
    else:
        max_length, max_name = DEFAULT_MAX_NEW_TOKENS + 1, f"max_new_tokens={DEFAULT_MAX_NEW_TOKENS} (the default)"
    if merged["min_new_tokens"] is not None:
        min_length, min_name = merged["min_new_tokens"] + 1, f"min_new_tokens={merged['min_new_tokens']}"
    else:
        min_length, min_name = merged["min_length"], f"min_length={merged['min_length']}"
    eos = np.asarray(_eos_list(merged["eos_token_id"]) or [], dtype=np.int64)
    pad = merged["pad_token_id"]
    if pad is None and eos.size:
        pad = int(eos[0])  # transformers does the same (with a warning)
    start = merged["decoder_start_token_id"] if merged["decoder_start_token_id"] is not None else (pad or 0)
    early = merged["early_stopping"]
    r = Resolved(max_length=int(max_length), min_length=int(min_length), num_beams=int(merged["num_beams"]),
                 num_return_sequences=int(merged["num_return_sequences"]),
                 length_penalty=float(merged["length_penalty"]),
                 early_stopping=early if isinstance(early, str) else bool(early),
                 do_sample=bool(merged["do_sample"]), temperature=float(merged["temperature"]),
                 top_k=int(merged["top_k"]), top_p=float(merged["top_p"]),
                 repetition_penalty=float(merged["repetition_penalty"]),
                 no_repeat_ngram_size=int(merged["no_repeat_ngram_size"]),
                 seed=None if merged["seed"] is None else int(merged["seed"]), start=int(start), eos=eos,
                 pad=None if pad is None else int(pad))
    if r.min_length > r.max_length:
        mixed = min_name.startswith("min_new_tokens") != max_name.startswith("max_new_tokens")
        problems.append(f"{min_name} must be <= {max_name}" + (" (max_length and min_length count the decoder start "
                                                              "token, max_new_tokens and min_new_tokens do not)"
                                                              if mixed else ""))
    if r.num_beams == 1 and not r.do_sample and r.num_return_sequences > 1:
        problems.append("greedy decoding returns one sequence per input: num_return_sequences > 1 needs num_beams > 1 "
                        "or do_sample=True")
    if r.num_beams > 1 and r.num_return_sequences > r.num_beams:
        problems.append(f"num_return_sequences ({r.num_return_sequences}) must be <= num_beams ({r.num_beams})")
    if r.num_beams > 1:
        problems += _beam_problems(r, vocab, max_name)
    if problems:
        raise ValueError(f"{caller}: " + "; ".join(problems) + ".")
    return r


def _beam_problems(r: Resolved, vocab: int | None, max_name: str) -> list[str]:
    """Beam search settings that decode nothing meaningful: a length penalty beyond float32 at the longest length,
    or (beam sampling) a top_k that leaves fewer candidates than are drawn per step without replacement."""
    problems = []
    longest = r.max_length - 1
    if longest > 1 and abs(r.length_penalty) * math.log(longest) > math.log(LENGTH_FACTOR_LIMIT):
        bound = math.log(LENGTH_FACTOR_LIMIT) / math.log(longest)
        problems.append(f"length_penalty={r.length_penalty:g} with {max_name}: beam scores are divided by length ** "
                        f"length_penalty, {longest} ** {r.length_penalty:g} is beyond float32's range; keep "
                        f"|length_penalty| <= {bound:.3g} at this length (usual values are 0.6 to 2)")
    keep = max(2, 1 + r.eos.size) * r.num_beams
    if vocab is not None:
        keep = min(keep, r.num_beams * vocab)
    if r.do_sample and r.top_k != 0 and max(r.top_k, r.eos.size + 1) < keep:
        problems.append(f"beam sampling draws {keep} candidates per step without replacement (max(2, 1 + number of "
                        f"EOS ids) x num_beams), but top_k={r.top_k} leaves fewer: use top_k >= {keep}, top_k=0, or "
                        "fewer beams")
    return problems
