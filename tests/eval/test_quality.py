"""Metric plumbing against sacrebleu and rouge-score called directly, paired bootstrap, and the quality gate."""

from __future__ import annotations

import random

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from distill.metrics import corpus_scores, paired_bootstrap, sentences_per_line
from eval.config import EvalConfig, Variant
from eval.quality import gate_checks, gate_failure

PREDICTIONS = ["The cat sat on the mat. It was happy!", "A quick brown fox jumps over the lazy dogs.",
               "Rain is expected tomorrow in the north.", "He said unto Moses: go and speak to the people.",
               "The markets rallied after the announcement."]
FIRST = ["The cat was sitting on the mat. It looked happy.", "The quick brown fox jumped over the lazy dog.",
         "Tomorrow rain is expected in the northern regions.", "And he said to Moses: go, speak unto the people.",
         "Markets rallied following the announcement."]
SECOND = ["A cat sat on a mat, happily.", None, "Rain tomorrow in the north.", "He told Moses to speak to the people.",
          None]  # examples 2 and 5 have one reference only
REFERENCES = [[f, *([s] if s else [])] for f, s in zip(FIRST, SECOND, strict=True)]


def test_bleu_and_chrf_equal_sacrebleu_with_multiple_and_missing_references():
    scores, signatures = corpus_scores(PREDICTIONS, REFERENCES)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [FIRST, SECOND]).score, abs=1e-9)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [FIRST, SECOND]).score, abs=1e-9)
    assert "nrefs:var" in signatures["bleu"]
    single, _ = corpus_scores(PREDICTIONS, [[f] for f in FIRST])
    assert single["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [FIRST]).score, abs=1e-9)
    assert single["bleu"] < scores["bleu"]  # a second reference can only add matches


def test_rouge_equals_rouge_score_best_reference_with_sentences_on_lines():
    scores, _ = corpus_scores(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    # ROUGE-Lsum compares sentence by sentence: one sentence per line, written out here by hand
    lined = {"The cat sat on the mat. It was happy!": "The cat sat on the mat.\nIt was happy!",
             "The cat was sitting on the mat. It looked happy.": "The cat was sitting on the mat.\nIt looked happy."}
    rows = [scorer.score_multi([lined.get(r, r) for r in refs], lined.get(p, p))
            for p, refs in zip(PREDICTIONS, REFERENCES, strict=True)]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = 100 * sum(row[key].fmeasure for row in rows) / len(rows)
        assert scores[key] == pytest.approx(expected, abs=1e-9), key


def test_sentences_per_line_splits_after_sentence_ends_and_keeps_line_breaks():
    assert sentences_per_line("One. Two!  Three? four\nFive") == "One.\nTwo!\nThree?\nfour\nFive"
    assert sentences_per_line("  ") == ""


def test_headline_metrics_follow_the_task():
    variants = [Variant("t", "torch", "p")]
    assert EvalConfig(variants=variants).headline() == ("bleu",)
    config = EvalConfig(variants=variants)
    config.dataset.task = "summarization"
    assert config.headline() == ("rouge2", "rougeL")


def _systems(n: int = 40) -> tuple[list[list[str]], dict[str, list[str]]]:
    rng = random.Random(0)
    words = ["the", "lord", "said", "unto", "moses", "and", "aaron", "go", "speak", "people", "israel", "bring",
             "offering", "gold", "silver", "land"]
    references = [[" ".join(rng.choice(words) for _ in range(12))] for _ in range(n)]
    good = [r[0] for r in references]
    good[::4] = [" ".join(r[0].split()[:-3]) for r in references[::4]]  # a few shortened outputs
    bad = [" ".join(rng.sample(r[0].split(), 6)) for r in references]  # half the words, shuffled
    return references, {"teacher": good, "copy": list(good), "broken": bad}


def test_paired_bootstrap_tells_identical_from_clearly_different_systems():
    references, systems = _systems()
    out = paired_bootstrap(systems, "teacher", references, samples=200, alpha=0.05)
    assert set(out) == {"copy", "broken"}
    for metric, result in out["copy"].items():
        assert (result["delta"], result["p_value"], result["significant"]) == (0.0, 1.0, False), metric
    for metric in ("bleu", "chrf", "rouge2", "rougeL"):
        assert out["broken"][metric]["delta"] < -10 and out["broken"][metric]["significant"], metric
        assert out["broken"][metric]["p_value"] < 0.05
    # the BLEU and chrF numbers are sacrebleu's own test's
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    _, table = PairedTest([("teacher", systems["teacher"]), ("broken", systems["broken"])],
                          {"bleu": BLEU(), "chrf": CHRF()}, [[r[0] for r in references]], test_type="bs",
                          n_samples=200)()
    assert out["broken"]["bleu"]["p_value"] == pytest.approx(table["BLEU"][1].p_value)
    assert out["broken"]["chrf"]["p_value"] == pytest.approx(table["chrF2"][1].p_value)
    assert out["broken"]["bleu"]["delta"] == pytest.approx(table["BLEU"][1].score - table["BLEU"][0].score)


def _gate_config(**student_onnx) -> EvalConfig:
    return EvalConfig(variants=[Variant("teacher-torch", "torch", "t"),
                                Variant("student-torch", "torch", "s", teacher="teacher-torch"),
                                Variant("student-onnx", "onnx", "o", source="student-torch", **student_onnx)])


def _scores(teacher: float, student: float, onnx: float) -> dict[str, dict[str, float]]:
    return {"teacher-torch": {"bleu": teacher}, "student-torch": {"bleu": student}, "student-onnx": {"bleu": onnx}}


def test_gate_passes_within_the_margins():
    checks = gate_checks(_gate_config(), _scores(30.0, 26.0, 25.6))  # student -4.0 (margin 5), onnx -0.4 (0.5)
    assert [(c.variant, c.against, c.relation, c.passed) for c in checks] == [
        ("student-torch", "teacher-torch", "student", True), ("student-onnx", "student-torch", "export", True)]
    assert gate_failure(checks) is None


def test_gate_fails_beyond_a_margin_naming_the_variant_and_the_drop():
    checks = gate_checks(_gate_config(), _scores(30.0, 24.5, 23.7))
    message = gate_failure(checks)
    assert "student-torch loses 5.50 BLEU against its teacher teacher-torch (30.00 -> 24.50; margin 5.00)" in message
    assert "student-onnx loses 0.80 BLEU against its source student-torch (24.50 -> 23.70; margin 0.50)" in message
    # a variant's own margin replaces the default
    assert gate_failure(gate_checks(_gate_config(margin=1.0), _scores(30.0, 29.0, 28.2))) is None
