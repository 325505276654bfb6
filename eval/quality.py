"""The quality gate: a variant fails when it loses more than a margin against the variant it comes from.

An export (ONNX, int8) is held to `gate.export_margin` against its PyTorch `source`, a student to
`gate.student_margin` against its `teacher`; a variant's own `margin` replaces either default. The metrics are the
task's headline ones unless `gate.metrics` names others; the scores come from `distill.metrics.corpus_scores`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

from distill.metrics import NAMES
from eval.config import EvalConfig

IDENTICAL = "identical"  # the gate metric of an assisted variant: % of predictions identical to its source's


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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop, "passed": self.passed}

    def describe(self) -> str:
        if self.metric == IDENTICAL:
            return (f"{self.variant} predicts {self.score:.2f} % of the examples as its source {self.against} does; "
                    "assisted decoding must return its model's own output")
        return (f"{self.variant} loses {self.drop:.2f} {NAMES[self.metric]} against its "
                f"{'teacher' if self.relation == 'student' else 'source'} {self.against} ({self.against_score:.2f} -> "
                f"{self.score:.2f}; margin {self.margin:.2f})")


def gate_checks(config: EvalConfig, scores: dict[str, dict[str, float]],
                identical: dict[str, float] | None = None) -> list[GateCheck]:
    """One check per gated variant and gate metric: a variant with `source` against it (export_margin), a variant
    with `teacher` against it (student_margin); a variant's own `margin` replaces either default. An fp32
    onnx-assisted variant must also predict exactly what its source does (`identical`: the share of identical
    predictions per assisted variant); int8 is recorded, not gated, as dynamic quantization scales activations per
    call and a k-token verification may round differently from k one-token steps."""
    checks = []
    by_name = {v.name: v for v in config.variants}
    for name, share in (identical or {}).items():
        v = by_name[name]
        checks.append(GateCheck(name, cast(str, v.source), "assisted", IDENTICAL, 100.0 * share, 100.0,
                                100.0 if v.quantized else 0.0))
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
