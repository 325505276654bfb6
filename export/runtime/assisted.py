"""Assisted (speculative) decoding: a draft model proposes tokens, the model verifies them all in one decoder call.

Each round, the draft (a student of the model) proposes k tokens one at a time on its own cache; the model then runs
once on its pending token and the k drafts (the with-past graph takes several new tokens, causal among themselves)
and so has its logits at all k + 1 positions. Greedy keeps the drafts up to the first one that differs from the
model's own choice, plus the model's token at that position (or a bonus token when all k agree): the model's own
greedy output, with about k + 1 tokens per model call when the draft agrees. Sampling uses speculative sampling's
rule (`export.runtime.acceptance`), whose tokens follow the model's distribution exactly.

The logits processors (minimum length, no-repeat n-grams, repetition penalty, warpers) see at every position the
prefix that position would have, drafts included: an accepted draft is the prefix the model would have had.

A batch shares one cache length: a round keeps, for every row, the number of tokens that its least successful
unfinished row keeps (rows ending with EOS in the round do not count). Every kept token is still the model's: the
other rows keep a prefix of what they accepted. For sampling that truncation depends only on the other rows' draws,
so each row's tokens still follow the model's distribution. Rolling the caches back is slicing their length axis
(views; nothing kept is copied), and the draft, whose cache lacks the last accepted token when all k were accepted,
feeds two tokens at its next call.

The draft length of each round comes from `export.runtime.draft_length` ("cost" by default). A round of length 0 is
the model alone; the draft's cache then falls behind and feeds every token it lacks at its next call.

Rows the model has finished get pad_token_id, as in greedy search. Beam search with an assistant is not supported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.runtime.acceptance import sample_rows, speculative_choice
from export.runtime.columns import first_width, widened
from export.runtime.draft_length import SCHEDULES, DraftLength
from export.runtime.folder import reexport_hint
from export.runtime.processors import is_eos, process_logits, softmax
from export.runtime.settings import Resolved

DRAFT_OPTIONS = ("num_assistant_tokens", "num_assistant_tokens_schedule")  # generate's, transformers' names
PHASES = ("encoder", "draft", "verify", "accept", "rollback")


@dataclass
class AssistedStats:
    """Counts and times of assisted `generate` calls (`OnnxT5.assisted_stats` holds the last call's).

    Per row: `drafted` draft tokens proposed to unfinished rows, `accepted` of them equal to (greedy) or accepted by
    (sampling) the model before its first rejection, `rejected` drafts cut short by a rejection, `tokens` kept,
    `row_calls` model calls an unfinished row took part in. `lengths`: rounds per draft length (the schedule's, cut
    where max_length ends the call; 0 is a round of the model alone). `seconds`: where the time went;
    `total_seconds` - their sum is the loop's own Python.
    """

    rounds: int = 0
    model_calls: int = 0
    draft_calls: int = 0
    encoder_runs: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    tokens: int = 0
    row_calls: int = 0
    lengths: dict[int, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    total_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (nan before any draft)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def token_acceptance(self) -> float:
        """Accepted / (accepted + rejected): the estimate of Leviathan et al.'s per-token acceptance a, the chance that
        a draft token is accepted once those before it were (nan before any draft)."""
        tested = self.accepted + self.rejected
        return self.accepted / tested if tested else float("nan")

    @property
    def mean_draft_length(self) -> float:
        """The mean draft length of a round (nan before any round)."""
        rounds = sum(self.lengths.values())
        return sum(k * n for k, n in self.lengths.items()) / rounds if rounds else float("nan")

    @property
    def tokens_per_call(self) -> float:
        """Tokens a row gains per model call (1.0 is the model alone)."""
        return self.tokens / self.row_calls if self.row_calls else float("nan")

    def add(self, other: AssistedStats) -> None:
        """Add `other`'s counts and times to these (totals over several calls)."""
        for name in ("rounds", "model_calls", "draft_calls", "encoder_runs", "drafted", "accepted", "rejected",
                     "tokens", "row_calls", "total_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, rounds in other.lengths.items():
            self.lengths[k] = self.lengths.get(k, 0) + rounds
        for phase, seconds in other.seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


def _special_ids(model: Any) -> tuple[Any, ...]:
    s = model.settings
    eos = s.eos_token_id
    return s.decoder_start_token_id, sorted(eos) if isinstance(eos, list) else eos, s.pad_token_id


def _same_tokenizer(a: Path, b: Path) -> bool:
    """Both folders' tokenizer.json have the same bytes (True when either has none: nothing to compare)."""
    fa, fb = a / "tokenizer.json", b / "tokenizer.json"
    if not (fa.is_file() and fb.is_file()):
        return True
    return fa.stat().st_size == fb.stat().st_size and fa.read_bytes() == fb.read_bytes()


@dataclass(frozen=True)
class Draft:
    """The assistant of one `generate` call, checked against its model."""

    model: Any  # OnnxT5
    start: int  # the first draft length
    schedule: str
    shares_encoder: bool  # the same encoder weights and precision as the model's: its encoder states are reused

    @classmethod
    def checked(cls, model: Any, assistant: Any, s: Resolved, start: Any, schedule: Any) -> Draft:
        """The assistant, after checking that it can draft for `model` with settings `s`; TypeError or ValueError
        naming the problem and the fix."""
        where = "OnnxT5.generate(assistant=...)"
        if not isinstance(assistant, type(model)):
            raise TypeError(f"{where}: the assistant must be an OnnxT5 (OnnxT5.from_pretrained(student_export)), got "
                            f"{type(assistant).__name__}.")
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or not 1 <= start <= 1024:
            raise ValueError(f"{where}: num_assistant_tokens must be an integer from 1 to 1024, got {start!r}.")
        if schedule not in SCHEDULES:
            raise ValueError(f"{where}: num_assistant_tokens_schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{schedule!r}.")
        if s.num_beams > 1:
            raise ValueError(f"{where}: beam search with an assistant is not supported (num_beams={s.num_beams}); "
                             "use num_beams=1 (greedy, or do_sample=True), or generate without assistant=.")
        for role, m in (("model", model), ("assistant", assistant)):
            if not m.multi_token_steps:
                fix = m.meta.fix() if m.meta else reexport_hint(m.folder)
                raise ValueError(f"{where}: the {role} {m.folder} was exported when the decoder with past took one "
                                 f"token per call; verifying a draft needs several. It works as before without an "
                                 f"assistant; for assisted decoding {fix}.")
        if assistant.vocab_size != model.vocab_size:
            raise ValueError(f"{where}: the assistant's vocabulary has {assistant.vocab_size} tokens, the model's "
                             f"{model.vocab_size}: a draft model must share its model's tokenizer (distill a student "
                             "from this model: python -m distill.student).")
        if _special_ids(assistant) != _special_ids(model):
            names = "(decoder_start_token_id, eos_token_id, pad_token_id)"
            raise ValueError(f"{where}: the assistant's special tokens {names} {_special_ids(assistant)} differ from "
                             f"the model's {_special_ids(model)}; they must be the same tokenizer's.")
        if not _same_tokenizer(model.folder, assistant.folder):
            raise ValueError(f"{where}: {assistant.folder / 'tokenizer.json'} differs from "
                             f"{model.folder / 'tokenizer.json'}: a draft model must use its model's tokenizer.")
        shares = (model.meta is not None and assistant.meta is not None and model.meta.encoder_digest is not None
                  and model.meta.encoder_digest == assistant.meta.encoder_digest
                  and model.quantized == assistant.quantized)
        return cls(assistant, int(start), schedule, shares)


@dataclass
class _Cache:
    """One model's decoder cache: K/V per layer (None before the first call) and the positions it holds."""

    own: list[np.ndarray] | None = None
    cross: list[np.ndarray] | None = None
    length: int = 0

    def advance(self, model: Any, seqs: np.ndarray, mask: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """Feed the tokens of `seqs` (N, length) the cache lacks; their logits (N, new tokens, vocabulary)."""
        tokens = seqs[:, self.length:]
        if self.own is None:
            logits, self.own, self.cross = model.first_steps(tokens, mask, hidden)
        else:
            logits, self.own = model.steps(tokens, mask, self.own, self.cross)
        self.length = seqs.shape[1]
        return logits

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions (views of the arrays: nothing is copied)."""
        if self.own is not None and length < self.length:
            self.own = [a[:, :, :length] for a in self.own]
            self.length = length


def assisted_search(model: Any, draft: Draft, ids: np.ndarray, mask: np.ndarray, s: Resolved,
                    stats: AssistedStats) -> np.ndarray:
    """`model`'s greedy (or sampled, with `s.do_sample`) output on `ids`, drafted by `draft`; `stats` is filled in.

    The same layout as `greedy_search`: one row per input (times num_return_sequences when sampling), rows padded with
    pad_token_id after their EOS.
    """
    began = time.perf_counter()
    clock = began

    def lap(phase: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        seconds, clock = now - clock, now
        stats.seconds[phase] += seconds
        return seconds

    hidden = model.encode(ids, mask)
    draft_hidden = hidden if draft.shares_encoder else draft.model.encode(ids, mask)
    stats.encoder_runs += 1 if draft.shares_encoder else 2
    if s.num_return_sequences > 1:
        hidden, draft_hidden, mask = (np.repeat(a, s.num_return_sequences, axis=0) for a in (hidden, draft_hidden,
                                                                                            mask))
    lap("encoder")
    n = hidden.shape[0]
    rng = np.random.default_rng(s.seed)
    fill = 0 if s.pad is None else s.pad
    seqs = np.full((n, first_width(s.max_length)), fill, dtype=np.int64)
    seqs[:, 0] = s.start
    cur = 1
    unfinished = np.ones(n, dtype=bool)
    mine, theirs = _Cache(), _Cache()
    schedule = DraftLength(draft.schedule, draft.start)
    while True:
        stats.rounds += 1
        # the model's call adds up to k + 1 tokens: never more than max_length allows
        kk = min(schedule.next(), s.max_length - cur - 1)
        stats.lengths[kk] = stats.lengths.get(kk, 0) + 1
        if seqs.shape[1] < cur + kk + 1:
            seqs = widened(seqs, min(s.max_length, max(2 * seqs.shape[1], cur + kk + 1)), fill)
        q = np.empty((n, kk, model.vocab_size)) if s.do_sample else None
        drafted, done = 0, ~unfinished
        while drafted < kk and not done.all():  # no draft beyond an EOS in every row
            logits = theirs.advance(draft.model, seqs[:, :cur + drafted], mask, draft_hidden)[:, -1]
            stats.draft_calls += 1
            scores = process_logits(logits.astype(np.float32), seqs[:, :cur + drafted], s, beam=False)
            if q is not None:
                q[:, drafted] = softmax(scores.astype(np.float64))
                tokens = sample_rows(q[:, drafted], rng)
            else:
                tokens = np.argmax(scores, axis=-1)
            seqs[:, cur + drafted] = tokens
            done = done | is_eos(tokens, s.eos)
            drafted += 1
        draft_seconds = lap("draft")

        # a draft cache that missed model-alone rounds (k = 0) catches up in its next call: `advance` feeds them all
        logits = mine.advance(model, seqs[:, :cur + drafted], mask, hidden)[:, -(drafted + 1):]
        stats.model_calls += 1
        verify_seconds = lap("verify")

        out = np.empty((n, drafted + 1), dtype=np.int64)
        count = np.full(n, drafted + 1)  # tokens each row would keep: its accepted drafts and the model's token
        alive = unfinished.copy()
        for j in range(drafted + 1):
            scores = process_logits(logits[:, j].astype(np.float32), seqs[:, :cur + j], s, beam=False)
            if q is not None:
                p = softmax(scores.astype(np.float64))
                if j < drafted:
                    ok, out[:, j] = speculative_choice(p, q[:, j], seqs[:, cur + j], rng)
                else:
                    ok, out[:, j] = np.zeros(n, dtype=bool), sample_rows(p, rng)
            else:
                out[:, j] = np.argmax(scores, axis=-1)
                ok = out[:, j] == seqs[:, cur + j] if j < drafted else np.zeros(n, dtype=bool)
            count[alive & ~ok] = j + 1
            alive &= ok
            if not alive.any():
                break
        # EOS within what a row keeps ends it; the batch keeps what its least successful unfinished row keeps
        ended = is_eos(out, s.eos) & (np.arange(drafted + 1)[None, :] < count[:, None])
        ends = unfinished & ended.any(axis=1)
        first_eos = np.where(ends, np.argmax(ended, axis=1), drafted + 1)
        going = unfinished & ~ends
        m = int(count[going].min()) if going.any() else int(first_eos[ends].max()) + 1
        kept = out[:, :m]
        if s.eos.size:  # then pad is set (`resolve`): rows after their EOS, and rows already finished, get pad
            kept = np.where(~unfinished[:, None] | (np.arange(m)[None, :] > first_eos[:, None]), fill, kept)
        seqs[:, cur:cur + m] = kept
        stats.drafted += drafted * int(unfinished.sum())
        stats.accepted += int(np.minimum(count - 1, drafted)[unfinished].sum())
        stats.rejected += int((count - 1 < drafted)[unfinished].sum())
        stats.tokens += int(np.minimum(first_eos + 1, m)[unfinished].sum())
        stats.row_calls += int(unfinished.sum())
        unfinished &= ~(ends & (first_eos < m))
        cur += m
        verify_seconds += lap("accept")
        if cur >= s.max_length or not unfinished.any():
            stats.total_seconds += time.perf_counter() - began
            return np.ascontiguousarray(seqs[:, :cur])
        schedule.update(drafted, m - 1, draft_seconds, verify_seconds)  # rows still going kept m - 1 drafts
        # each cache keeps the accepted tokens but the last, which the next call feeds
        mine.truncate(cur - 1)
        theirs.truncate(cur - 1)
        lap("rollback")
