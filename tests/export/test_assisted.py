"""Assisted decoding: a draft model proposes, the model verifies several tokens per call, and the output is the
model's own (greedy token for token; sampling in distribution, by a chi-square test)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export import OnnxT5
from export.runtime.acceptance import sample_rows, speculative_choice
from export.runtime.draft_length import SCHEDULES, DraftLength

LENGTHS = [9, 6, 3, 8, 1]
GREEDY = {
    "plain": {"max_new_tokens": 12},
    "min-new-tokens": {"max_new_tokens": 12, "min_new_tokens": 6},
    "no-repeat-penalty": {"max_new_tokens": 10, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
    "max-inside-draft": {"max_new_tokens": 3, "num_assistant_tokens": 7},
    "long-drafts": {"max_new_tokens": 16, "num_assistant_tokens": 9},
}
# draft lengths forced round by round: model-alone rounds (0) between drafts, so the draft's cache catches up
FORCED = (2, 0, 0, 3, 0, 1, 5, 0)


def _forced_lengths(monkeypatch, pattern):
    """Every round's draft length from `pattern`, cycling, whatever the schedule."""
    monkeypatch.setattr(DraftLength, "next", lambda self: pattern[self.rounds % len(pattern)])


def _perturbed_export(root: Path, teacher_dir: Path, scale: float, prefixes: tuple[str, ...], seed: int) -> Path:
    """A draft made from the teacher's weights plus noise on the parameters under `prefixes`, exported."""
    from transformers import T5ForConditionalGeneration

    from export.exporter import export

    model = T5ForConditionalGeneration.from_pretrained(teacher_dir).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(prefixes):
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    model.save_pretrained(root / "model")
    return export(str(root / "model"), root / "onnx", require_tokenizer=False)


@pytest.fixture(scope="session")
def drafts(tmp_path_factory, export_of):
    """name -> (teacher OnnxT5, draft OnnxT5, whether the draft's encoder is the teacher's). Tied: every weight
    perturbed (its own encoder); untied: a 1-decoder-layer student of the teacher (the teacher's encoder)."""
    from distill.student import make_student
    from export.exporter import export
    from tests.export.conftest import one_torch_thread

    pairs = {}
    with one_torch_thread():
        tied = export_of("t5-relu-tied")
        pairs["tied"] = (tied, _perturbed_export(tmp_path_factory.mktemp("draft-tied"), tied.model_dir, 0.02,
                                                 ("shared", "encoder", "decoder"), seed=3), False)
        untied = export_of("t5v1.1-gated-untied")
        root = tmp_path_factory.mktemp("draft-untied")
        student, _ = make_student(untied.model, decoder_layers=1)
        student.save_pretrained(root / "model")
        pairs["untied"] = (untied, export(str(root / "model"), root / "onnx", require_tokenizer=False), True)
    return {name: (OnnxT5.from_pretrained(t.onnx_dir), OnnxT5.from_pretrained(d), shared)
            for name, (t, d, shared) in pairs.items()}


@pytest.mark.parametrize("kwargs", list(GREEDY.values()), ids=list(GREEDY))
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pair", ["tied", "untied"])
def test_assisted_greedy_is_the_models_own_output(drafts, batch, pair, schedule, kwargs):
    model, draft, shared = drafts[pair]
    ids, mask = batch(LENGTHS)
    plain = {k: v for k, v in kwargs.items() if not k.startswith("num_assistant")}
    want = model.generate(ids, mask, **plain)
    got = model.generate(ids, mask, assistant=draft, **kwargs, num_assistant_tokens_schedule=schedule)
    np.testing.assert_array_equal(got, want)
    stats = model.assisted_stats
    assert stats.encoder_runs == (1 if shared else 2)
    assert stats.drafted > 0 and stats.model_calls == stats.rounds == sum(stats.lengths.values())
    if kwargs["max_new_tokens"] > 3 and "min_new_tokens" not in kwargs:  # some rows end early (EOS in a draft)
        assert (want[:, 1:-1] == 1).any()


@pytest.mark.parametrize("pair", ["tied", "untied"])
def test_model_alone_rounds_between_drafts_keep_the_models_own_output(drafts, batch, monkeypatch, pair):
    model, draft, _ = drafts[pair]
    ids, mask = batch(LENGTHS, seed=2)
    kwargs = {"max_new_tokens": 16, "no_repeat_ngram_size": 3}
    want = model.generate(ids, mask, **kwargs)
    _forced_lengths(monkeypatch, FORCED)
    np.testing.assert_array_equal(model.generate(ids, mask, assistant=draft, **kwargs), want)
    stats = model.assisted_stats
    assert stats.lengths[0] >= 2 and stats.lengths[3] >= 1 and stats.accepted > 0
    assert stats.draft_calls <= sum(k * n for k, n in stats.lengths.items())  # no draft step in a model-alone round
    # the model drafting for itself: every draft is accepted only if the draft's cache caught up with every token
    np.testing.assert_array_equal(model.generate(ids, mask, assistant=model, **kwargs), want)
    stats = model.assisted_stats
    assert stats.lengths[0] >= 2 and stats.drafted > 0 and stats.rejected == 0


def test_the_default_schedule_is_cost_but_for_seeded_sampling(drafts, batch, monkeypatch):
    model, draft, _ = drafts["tied"]
    ids, mask = batch(LENGTHS)
    used = []
    init = DraftLength.__init__
    monkeypatch.setattr(DraftLength, "__init__", lambda self, schedule, start: (used.append(schedule),
                                                                                 init(self, schedule, start))[1])
    model.generate(ids, mask, assistant=draft, max_new_tokens=4)
    model.generate(ids, mask, assistant=draft, max_new_tokens=4, do_sample=True)
    model.generate(ids, mask, assistant=draft, max_new_tokens=4, do_sample=True, seed=1)
    assert used == ["cost", "cost", "heuristic"]


def test_rows_accept_different_lengths_and_drafts_pay_off(drafts, batch):
    """The close draft gets most tokens accepted (several tokens per model call), row by row differently; each row
    alone and the rows batched give the same tokens."""
    model, draft, _ = drafts["tied"]
    ids, mask = batch(LENGTHS, seed=4)
    kwargs = {"max_new_tokens": 16, "min_new_tokens": 16}
    drafting = {**kwargs, "num_assistant_tokens_schedule": "heuristic"}  # drafts every round, whatever they cost
    together = model.generate(ids, mask, assistant=draft, **drafting)
    rates, per_call = [], []
    for row in range(len(LENGTHS)):
        alone = model.generate(ids[row:row + 1, :LENGTHS[row]], mask[row:row + 1, :LENGTHS[row]], assistant=draft,
                               **drafting)
        np.testing.assert_array_equal(alone, together[row:row + 1])
        rates.append(model.assisted_stats.acceptance_rate)
        per_call.append(model.assisted_stats.tokens_per_call)
    assert len(set(rates)) > 1 and min(rates) < 1.0 and np.mean(per_call) > 1.5
    np.testing.assert_array_equal(together, model.generate(ids, mask, **kwargs))


def test_several_new_tokens_per_call_equal_one_at_a_time(drafts, batch):
    model, _, _ = drafts["untied"]
    ids, mask = batch(LENGTHS)
    hidden = model.encode(ids, mask)
    tokens = np.random.default_rng(0).integers(2, model.vocab_size, (len(LENGTHS), 6))
    _, own, cross = model.first_steps(tokens[:, :2], mask, hidden)
    together, grown = model.steps(tokens[:, 2:], mask, own, cross)
    for j in range(2, 6):
        logits, own = model.step(tokens[:, j:j + 1], mask, own, cross)
        np.testing.assert_allclose(together[:, j - 2], logits, atol=1e-4)
    for a, b in zip(grown, own, strict=True):  # K/V up to about 5: a few float32 roundings apart at most
        np.testing.assert_allclose(a, b, atol=3e-5)


def _one_token_copy(folder: Path, out: Path) -> Path:
    """A copy of an export whose decoder with past takes exactly one token, as exports made before it did (and before
    the merged decoder)."""
    import onnx

    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("decoder_model_merged*"))
    path = out / "decoder_with_past_model.onnx"
    proto = onnx.load(str(path))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = 1
    onnx.save(proto, str(path))
    meta = json.loads((out / "export_meta.json").read_text())
    data = path.read_bytes()
    meta["files"][path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (out / "export_meta.json").write_text(json.dumps(meta))
    return out


def test_one_token_exports_decode_as_before_and_refuse_an_assistant(drafts, tmp_path, batch):
    model, draft, _ = drafts["tied"]
    old = OnnxT5.from_pretrained(_one_token_copy(model.folder, tmp_path / "old"))
    assert not old.multi_token_steps and model.multi_token_steps
    ids, mask = batch(LENGTHS)
    np.testing.assert_array_equal(old.generate(ids, mask, num_beams=3, max_new_tokens=6),
                                  model.generate(ids, mask, num_beams=3, max_new_tokens=6))
    for teacher, assistant in ((old, draft), (model, old)):
        with pytest.raises(ValueError, match=r"one token per call.*python -m export --model .* --out"):
            teacher.generate(ids, mask, assistant=assistant)


def test_assistant_is_checked(drafts, batch, monkeypatch):
    model, draft, _ = drafts["tied"]
    ids, mask = batch(LENGTHS)
    with pytest.raises(TypeError, match="must be an OnnxT5"):
        model.generate(ids, mask, assistant="runs/export/student")
    with pytest.raises(ValueError, match="beam search with an assistant is not supported"):
        model.generate(ids, mask, assistant=draft, num_beams=2)
    with pytest.raises(ValueError, match="num_assistant_tokens must be"):
        model.generate(ids, mask, assistant=draft, num_assistant_tokens=0)
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule"):
        model.generate(ids, mask, assistant=draft, num_assistant_tokens_schedule="fast")
    monkeypatch.setattr(draft.settings, "eos_token_id", 2)
    with pytest.raises(ValueError, match="special tokens"):
        model.generate(ids, mask, assistant=draft)
    monkeypatch.setattr(draft, "vocab_size", model.vocab_size + 1)
    with pytest.raises(ValueError, match="vocabulary has"):
        model.generate(ids, mask, assistant=draft)


# ---- sampling ----------------------------------------------------------------------------------------------------
def _chi2_exceeds(counts: np.ndarray, probs: np.ndarray) -> bool:
    """Whether `counts` are too far from `probs` (expected count >= 5 per cell, the rest pooled) at p < 0.001
    (Wilson-Hilferty's approximation of the chi-square quantile; no scipy in the project)."""
    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    stat = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
    df = int(keep.sum()) - 1
    critical = df * (1 - 2 / (9 * df) + 3.09 * np.sqrt(2 / (9 * df))) ** 3
    return stat > critical


def test_speculative_choice_draws_from_the_models_distribution():
    rng = np.random.default_rng(0)
    vocab, n = 7, 60_000
    p, q = rng.dirichlet(np.ones(vocab)), rng.dirichlet(np.ones(vocab) * 0.5)
    drafts = sample_rows(np.tile(q, (n, 1)), rng)
    accepted, tokens = speculative_choice(np.tile(p, (n, 1)), np.tile(q, (n, 1)), drafts, rng)
    assert not _chi2_exceeds(np.bincount(tokens, minlength=vocab), p)
    assert _chi2_exceeds(np.bincount(drafts, minlength=vocab), p)  # the test can tell q from p
    np.testing.assert_allclose(accepted.mean(), np.minimum(p, q).sum(), atol=0.01)


@pytest.mark.parametrize("schedule", [*SCHEDULES, "model-alone-first"])
def test_speculative_sampling_follows_the_models_distribution(drafts, monkeypatch, schedule):
    """First and second tokens of many seeded calls against the model's own probabilities of each pair.
    model-alone-first: the first token from the model alone, the second from a draft whose cache caught up."""
    model, draft, _ = drafts["tied"]
    ids = np.array([[5, 9, 13, 2, 7, 1]])
    mask = np.ones_like(ids)
    start, eos, vocab = 0, 1, model.vocab_size
    kwargs = {"do_sample": True, "max_new_tokens": 2, "temperature": 1.5, "num_return_sequences": 4}
    if schedule == "model-alone-first":
        _forced_lengths(monkeypatch, (0, 1))
        kwargs["max_new_tokens"] = 3  # a round drafts only where a token is left after the model's own
    else:
        kwargs["num_assistant_tokens_schedule"] = schedule
    hidden = model.encode(ids, mask)
    first = model.first_steps(np.array([[start]]), mask, hidden)[0][0, -1] / 1.5
    p1 = np.exp(first - first.max()) / np.exp(first - first.max()).sum()
    pairs = np.stack([np.full(vocab, start), np.arange(vocab)], axis=1)
    second = model.first_steps(pairs, np.repeat(mask, vocab, 0), np.repeat(hidden, vocab, 0))[0][:, -1] / 1.5
    p2 = np.exp(second - second.max(1, keepdims=True))
    p2 /= p2.sum(1, keepdims=True)
    joint = p1[:, None] * p2
    joint[eos] = 0
    joint[eos, 0] = p1[eos]  # a row that ends at once is padded
    counts = np.zeros((vocab, vocab))
    drafted = accepted = 0
    for seed in range(250):
        out = model.generate(ids, mask, assistant=draft, seed=seed, **kwargs)
        np.add.at(counts, (out[:, 1], out[:, 2]), 1)
        drafted, accepted = drafted + model.assisted_stats.drafted, accepted + model.assisted_stats.accepted
    assert 0.2 < accepted / drafted < 0.98  # both acceptance and the residual draw are exercised
    assert not _chi2_exceeds(counts.ravel(), joint.ravel())
    assert not _chi2_exceeds(counts.sum(1), p1)
