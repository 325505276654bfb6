"""Quality of each variant's predictions: corpus metrics, paired bootstrap against the reference variant, the gate.

Metrics, all in 0-100:
- `bleu`, `chrf`: sacrebleu's corpus BLEU (13a tokenization, exp smoothing) and chrF, on detokenized text, against
  every reference of each example (multi-reference when the dataset config names extra reference columns; an example
  whose extra reference is empty simply has fewer). Signatures are recorded.
- `rouge1`, `rouge2`, `rougeL`, `rougeLsum`: rouge-score F-measures with Porter stemming, the best reference per
  example (`score_multi`), averaged over examples. ROUGE-Lsum works on sentences one per line: texts are split after
  `.`, `!` or `?` (existing line breaks kept) by `sentences_per_line`, since rouge-score's own splitter needs nltk's
  punkt data. rouge-score's tokenizer keeps only [a-z0-9], so ROUGE on French text is a rough number.
The headline metrics follow the task (config.HEADLINE): translation BLEU; summarization ROUGE-2 and ROUGE-L.

Significance: sacrebleu's paired bootstrap resampling (`sacrebleu.significance.PairedTest`, test_type "bs", the test
`sacrebleu --paired-bs` runs) of each variant against the reference variant, for BLEU and chrF; the same procedure
(same resamples: seed 12345, sacrebleu's default; same p-value) on per-example scores for ROUGE, whose corpus score is
a mean. sacrebleu counts resampled differences strictly larger than the observed one, which gives p = 1/(n+1) for a
system identical to the baseline; identical predictions are therefore reported as p = 1, and a difference is called
significant only when it is not zero and p < alpha.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from eval.config import EvalConfig

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


# ---- the quality gate ------------------------------------------------------------------------------------------------
@dataclass
class GateCheck:
    variant: str
    against: str
    relation: str  # "export": converted/quantized from `against`; "student": distilled from `against`
    metric: str
    score: float
    against_score: float
    margin: float

    @property
    def drop(self) -> float:
        return self.against_score - self.score

    @property
    def passed(self) -> bool:
        return self.drop <= self.margin

    def to_dict(self) -> dict:
        return {**asdict(self), "drop": self.drop, "passed": self.passed}

    def describe(self) -> str:
        return (f"{self.variant} loses {self.drop:.2f} {NAMES[self.metric]} against its "
                f"{'teacher' if self.relation == 'student' else 'source'} {self.against} ({self.against_score:.2f} -> "
                f"{self.score:.2f}; margin {self.margin:.2f})")


def gate_checks(config: EvalConfig, scores: dict[str, dict[str, float]]) -> list[GateCheck]:
    """One check per gated variant and gate metric: a variant with `source` against it (export_margin), a variant
    with `teacher` against it (student_margin); a variant's own `margin` replaces either default."""
    checks = []
    for v in config.variants:
        for relation, against, default in (("export", v.source, config.gate.export_margin),
                                           ("student", v.teacher, config.gate.student_margin)):
            if against is None:
                continue
            margin = v.margin if v.margin is not None else default
            checks += [GateCheck(v.name, against, relation, metric, scores[v.name][metric], scores[against][metric],
                                 margin) for metric in config.gate_metrics()]
    return checks


def gate_failure(checks: list[GateCheck]) -> str | None:
    """The message that fails the run, naming each variant beyond its margin; None when every check passed."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        return None
    return "Quality gate failed:\n" + "\n".join(f"  - {c.describe()}" for c in failed)
