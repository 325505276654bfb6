"""Corpus metrics and their significance: the one implementation that training validation, `distill.score` and
the evaluation harness share. All scores are in 0-100.

- `bleu`, `chrf`: sacrebleu's corpus BLEU (13a tokenization, exp smoothing) and chrF, on detokenized text, against
  every reference of each example (multi-reference when there are several; an example whose extra reference is empty
  simply has fewer). Signatures are recorded.
- `rouge1`, `rouge2`, `rougeL`, `rougeLsum`: rouge-score F-measures with Porter stemming, the best reference per
  example (`score_multi`), averaged over examples. ROUGE-Lsum works on sentences one per line: texts are split after
  `.`, `!` or `?` (existing line breaks kept) by `sentences_per_line`, since rouge-score's own splitter needs nltk's
  punkt data. rouge-score's tokenizer keeps only [a-z0-9], so ROUGE on French text is a rough number.

Significance: sacrebleu's paired bootstrap resampling (`sacrebleu.significance.PairedTest`, test_type "bs", the test
`sacrebleu --paired-bs` runs) of each system against a baseline, for BLEU and chrF; the same procedure (same
resamples: seed 12345, sacrebleu's default; same p-value) on per-example scores for ROUGE, whose corpus score is a
mean. sacrebleu counts resampled differences strictly larger than the observed one, which gives p = 1/(n+1) for a
system identical to the baseline; identical predictions are therefore reported as p = 1, and a difference is called
significant only when it is not zero and p < alpha.
"""

from __future__ import annotations

import re

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SACREBLEU = ("bleu", "chrf")
NAMES = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
         "rougeLsum": "ROUGE-Lsum"}
SEED = 12345  # sacrebleu's default SACREBLEU_SEED: the ROUGE resamples are the ones its BLEU test draws


def reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position; None where an example has fewer references."""
    n_refs = max(len(r) for r in references)
    return [[r[k] if k < len(r) else None for r in references] for k in range(n_refs)]


def _sacrebleu_metrics() -> dict:
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU(), "chrf": CHRF()}


def sentences_per_line(text: str) -> str:
    """One sentence per line (what ROUGE-Lsum expects): split after . ! ? followed by white space."""
    lines = (s.strip() for line in text.splitlines() for s in re.split(r"(?<=[.!?])\s+", line))
    return "\n".join(s for s in lines if s)


def rouge_per_example(predictions: list[str], references: list[list[str]]) -> dict[str, np.ndarray]:
    """Per-example F-measures (0-100) of each ROUGE type against the best-matching reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = [scorer.score_multi([sentences_per_line(r) for r in refs], sentences_per_line(pred))
            for pred, refs in zip(predictions, references, strict=True)]
    return {t: np.array([100 * row[t].fmeasure for row in rows], dtype=np.float64) for t in ROUGE_TYPES}


def corpus_scores(predictions: list[str], references: list[list[str]], rouge: dict[str, np.ndarray] | None = None
                  ) -> tuple[dict[str, float], dict[str, str]]:
    """Every metric of the module docstring, and sacrebleu's signature of BLEU and chrF.

    rouge: `rouge_per_example(predictions, references)` when the caller has it already (it is the slow part).
    """
    streams = reference_streams(references)
    scores, signatures = {}, {}
    for key, metric in _sacrebleu_metrics().items():
        scores[key] = metric.corpus_score(predictions, streams).score
        signatures[key] = str(metric.get_signature())
    rouge = rouge if rouge is not None else rouge_per_example(predictions, references)
    scores.update({t: float(v.mean()) for t, v in rouge.items()})
    return scores, signatures


# ---- significance ----------------------------------------------------------------------------------------------------
def paired_bootstrap(systems: dict[str, list[str]], reference: str, references: list[list[str]],
                     samples: int = 1000, alpha: float = 0.05, rouge: dict[str, dict[str, np.ndarray]] | None = None
                     ) -> dict[str, dict[str, dict]]:
    """{variant: {metric: {delta, p_value, significant, mean, ci}}} for every system but `reference`.

    delta = variant score - reference score (points); mean and ci: the variant's bootstrap mean and 95 % half-width.
    rouge: {system: `rouge_per_example(...)`} when the caller has them already.
    """
    from sacrebleu.significance import PairedTest, estimate_ci

    others = [name for name in systems if name != reference]
    if not others:
        return {}
    named = [(reference, systems[reference])] + [(name, systems[name]) for name in others]
    metrics = _sacrebleu_metrics()
    _, table = PairedTest(named, metrics, reference_streams(references), test_type="bs", n_samples=samples)()
    columns = [c for c in table if c != "System"]  # sacrebleu's names ("BLEU", "chrF2"), in the order given
    base_scores = {key: table[col][0].score for key, col in zip(metrics, columns, strict=True)}
    out: dict[str, dict[str, dict]] = {name: {} for name in others}
    for key, col in zip(metrics, columns, strict=True):
        for row, name in enumerate(others, start=1):
            result = table[col][row]
            out[name][key] = {"delta": result.score - base_scores[key], "p_value": result.p_value,
                              "mean": result.mean, "ci": result.ci}

    rouge = rouge or {}
    rouge = {name: rouge[name] if name in rouge else rouge_per_example(systems[name], references)
             for name in [reference, *others]}
    n = len(references)
    idx = np.random.default_rng(SEED).choice(n, size=(samples, n), replace=True)
    for name in others:
        for key in ROUGE_TYPES:
            system, base = rouge[name][key], rouge[reference][key]
            observed = abs(system.mean() - base.mean())
            resampled_system = system[idx].mean(axis=1)
            diffs = np.abs(resampled_system - base[idx].mean(axis=1))
            p = (np.sum(diffs - diffs.mean() > observed) + 1) / (samples + 1)  # sacrebleu's _compute_p_value
            mean, ci = estimate_ci(resampled_system)
            out[name][key] = {"delta": float(system.mean() - base.mean()), "p_value": float(p), "mean": float(mean),
                              "ci": float(ci)}

    for name in others:
        identical = systems[name] == systems[reference]
        for result in out[name].values():
            if identical:
                result["p_value"] = 1.0
            result["significant"] = bool(result["delta"] != 0 and result["p_value"] < alpha)
            for k in ("delta", "p_value", "mean", "ci"):
                result[k] = None if result[k] is None else float(result[k])
    return out


def score(predictions: list[str], references: list[list[str]], metric: str) -> dict[str, float]:
    """The metrics training validation logs: {bleu, chrf} for metric "bleu", {rouge1, rouge2, rougeL} for "rouge"."""
    if metric == "bleu":
        streams = reference_streams(references)
        return {key: m.corpus_score(predictions, streams).score for key, m in _sacrebleu_metrics().items()}
    rouge = rouge_per_example(predictions, references)
    return {key: float(rouge[key].mean()) if len(predictions) else 0.0 for key in ("rouge1", "rouge2", "rougeL")}
