"""Summarization on real summaries: ACLSum abstracts and their three-sentence summaries (aclsum 0.1.2 fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from distill.metrics import corpus_scores, paired_bootstrap, sentences_per_line
from eval.config import DatasetConfig
from eval.data import load_examples

FIXTURE = Path(__file__).parent / "fixtures" / "aclsum"


def lead(text: str, n: int) -> str:
    """The first n sentences of an abstract (sentences end with ' .' in ACLSum's tokenized text)."""
    parts = [s.strip() for s in text.split(" . ") if s.strip()]
    return " . ".join(parts[:n]) + " ."


@pytest.fixture(scope="module")
def examples():
    config = DatasetConfig(path=str(FIXTURE), split="test", source_column="abstract", target_column="summary",
                           extra_references=[], task_prefix="summarize: ", task="summarization")
    return load_examples(config)


def test_summaries_load_with_prefix_and_multi_line_references(examples):
    assert len(examples) == 12
    assert all(s.startswith("summarize: ") for s in examples.sources)
    assert all(len(r) == 1 and r[0].count("\n") == 2 for r in examples.references)


def test_rouge_on_real_summaries_equals_rouge_score(examples):
    predictions = [lead(s.removeprefix("summarize: "), 2) for s in examples.sources]
    scores, _ = corpus_scores(predictions, examples.references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(sentences_per_line(r[0]), sentences_per_line(p))
              for p, r in zip(predictions, examples.references, strict=True)]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = 100 * sum(d[key].fmeasure for d in direct) / len(direct)
        assert scores[key] == pytest.approx(expected, abs=1e-9), key
    assert 5 < scores["rouge2"] < scores["rouge1"] < 60  # a lead baseline overlaps its paper's summary, partly


def test_bootstrap_on_real_summaries_orders_systems(examples):
    lead3 = [lead(s.removeprefix("summarize: "), 3) for s in examples.sources]
    titles = [line.split('"title": "')[1].split('"')[0] for line in (FIXTURE / "test.jsonl").read_text().splitlines()]
    result = paired_bootstrap({"lead3": lead3, "title": titles, "same": list(lead3)}, "lead3", examples.references,
                              samples=200)
    assert result["title"]["rougeL"]["delta"] < 0 and result["title"]["rouge2"]["delta"] < 0
    assert not result["same"]["rouge2"]["significant"] and result["same"]["rouge2"]["delta"] == 0
