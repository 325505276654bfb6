"""Speculative decoding measured: the draft's acceptance, the pair against the teacher alone and against transformers,
and what a round costs at the sizes users bring.

    python -m bench.speculative acceptance --teacher runs/export/teacher --student runs/export/student [--int8]
    python -m bench.speculative compare --teacher runs/export/teacher --student runs/export/student \\
        --teacher-model models/teacher --student-model runs/distill/student [--batches 1,8]
    python -m bench.speculative cost [--shape base|small|tiny] [--work runs/bench-spec]

acceptance: accepted / drafted tokens, the per-token acceptance a (accepted / (accepted + rejected), the a of Leviathan
    et al.'s expression), tokens per teacher call and the schedule's draft lengths over the test split (greedy,
    natural length), and whether the pair's output is the teacher's.
compare: at each batch size, greedy, natural length: the teacher's OnnxT5 int8 alone, the pair in OnnxT5 int8 and fp32,
    transformers' assisted generation (`assistant_model=`) on the torch pair (batch 1: transformers' assisted
    generation takes one sequence), the ratios side by side, the acceptance beside every pair, the agreement with the
    teacher alone, and where a round's time goes (draft steps, the k-token verification, acceptance, rollback, Python).
cost: a t5-base-shaped teacher (12+12, random weights) and its 12-2 student, exported: a draft step, a k-token
    verification, and the speed-up Leviathan et al.'s expression implies at acceptance 0.6 / 0.8 / 0.9.
acceptance and compare take `--schedule cost|heuristic|constant` (num_assistant_tokens_schedule; default the runtime's).
Every timing is a ratio measured in one run: run it on a quiet machine. `--limit N` runs on the first N examples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import cli_errors
from export import OnnxT5
from export.runtime.assisted import AssistedStats
from export.runtime.draft_length import SCHEDULES, expected_tokens

PREFIX = "translate English to French: "
MAX_NEW_TOKENS = 128  # eval's default: the longest French test verse is 117 tokens
ALPHAS = (0.6, 0.8, 0.9)
MAX_DRAFT = 8


def _sources(model: OnnxT5, data: Path, split: str, limit: int | None) -> list[list[int]]:
    """The split's source texts as token ids (the teacher's tokenizer, the task prefix, EOS last)."""
    from distill.data import DataConfig, load_split

    rows = load_split(DataConfig(path=str(data)), split)
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"{model.folder} holds no tokenizer.json; export the teacher with its tokenizer.")
    tokenizer.no_padding()
    return [e.ids for e in tokenizer.encode_batch([PREFIX + r["en"] for r in rows])]


def _batches(sources: list[list[int]], size: int, pad: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive batches in test order, right-padded."""
    out = []
    for i in range(0, len(sources), size):
        rows = sources[i:i + size]
        width = max(map(len, rows))
        ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, :len(row)], mask[r, :len(row)] = row, 1
        out.append((ids, mask))
    return out


def _rows(out: np.ndarray) -> list[list[int]]:
    return [list(map(int, row)) for row in out]


def _run(generate: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[list[int]]]:
    """Seconds for every batch once, and the outputs (each row without trailing padding)."""
    outputs = []
    start = time.perf_counter()
    for ids, mask in batches:
        outputs += _rows(generate(ids, mask))
    return time.perf_counter() - start, [_strip(row) for row in outputs]


def _strip(row: list[int]) -> list[int]:
    while len(row) > 1 and row[-1] == 0:
        row = row[:-1]
    return row


def _assisted(teacher: OnnxT5, student: OnnxT5, batches: list[tuple[np.ndarray, np.ndarray]],
              kwargs: dict[str, Any]) -> tuple[float, list[list[int]], AssistedStats]:
    total = AssistedStats()

    def generate(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = teacher.generate(ids, mask, assistant=student, **kwargs)
        assert teacher.assisted_stats is not None
        total.add(teacher.assisted_stats)
        return out

    seconds, outputs = _run(generate, batches)
    return seconds, outputs, total


def _agreement(got: list[list[int]], want: list[list[int]]) -> float:
    return float(np.mean([a == b for a, b in zip(got, want, strict=True)]))


def _lengths(stats: AssistedStats) -> str:
    """The schedule's draft lengths: their mean and rounds per length (0: the teacher alone)."""
    rounds = ", ".join(f"{k}: {n}" for k, n in sorted(stats.lengths.items()))
    return f"mean draft length {stats.mean_draft_length:.2f} (rounds per length: {rounds})"


def _breakdown(stats: AssistedStats) -> str:
    phases = {**stats.seconds, "python": stats.total_seconds - sum(stats.seconds.values())}
    per_round = ", ".join(f"{name} {1000 * sec / max(1, stats.rounds):.2f}" for name, sec in phases.items())
    return (f"per round (ms): {per_round}; {stats.draft_calls / max(1, stats.rounds):.2f} draft steps and "
            f"{stats.model_calls / max(1, stats.rounds):.2f} verification per round; {_lengths(stats)}")


def _drafting(args: argparse.Namespace) -> dict[str, Any]:
    """generate's draft options from the command line (none: the runtime's default schedule)."""
    return {"num_assistant_tokens_schedule": args.schedule} if args.schedule else {}


def acceptance(args: argparse.Namespace) -> dict[str, Any]:
    teacher = OnnxT5.from_pretrained(args.teacher, quantized=args.int8, threads=args.threads)
    student = OnnxT5.from_pretrained(args.student, quantized=args.int8, threads=args.threads)
    sources = _sources(teacher, args.data, args.split, args.limit)
    batches = _batches(sources, args.batch, teacher.settings.pad_token_id or 0)
    kwargs = {"max_new_tokens": args.max_new_tokens, "num_beams": 1, "do_sample": False}
    _, alone = _run(lambda ids, mask: teacher.generate(ids, mask, **kwargs), batches)
    _, pair, stats = _assisted(teacher, student, batches, {**kwargs, **_drafting(args)})
    result = {"examples": len(sources), "batch": args.batch, "int8": args.int8, "schedule": args.schedule,
              "acceptance_rate": stats.acceptance_rate, "token_acceptance": stats.token_acceptance,
              "tokens_per_teacher_call": stats.tokens_per_call, "drafted": stats.drafted, "accepted": stats.accepted,
              "rejected": stats.rejected, "draft_lengths": dict(sorted(stats.lengths.items())),
              "mean_draft_length": stats.mean_draft_length, "identical_to_teacher": _agreement(pair, alone),
              "encoder_runs_per_batch": stats.encoder_runs / max(1, len(batches))}
    print(f"{args.student} drafting for {args.teacher} ({'int8' if args.int8 else 'fp32'}, batch {args.batch}, "
          f"{len(sources)} examples): acceptance {stats.acceptance_rate:.3f} ({stats.accepted}/{stats.drafted}), "
          f"per token {stats.token_acceptance:.3f} ({stats.accepted}/{stats.accepted + stats.rejected}), "
          f"{stats.tokens_per_call:.2f} tokens per teacher call, identical to the teacher alone "
          f"{100 * result['identical_to_teacher']:.1f} %; {_lengths(stats)}")
    return result


def _torch_assisted(teacher_dir: Path, student_dir: Path, batches: list[tuple[np.ndarray, np.ndarray]],
                    max_new_tokens: int, threads: int | None) -> tuple[float, list[list[int]]]:
    import torch

    from distill.models import load_t5

    if threads:
        torch.set_num_threads(threads)
    teacher, student = load_t5(str(teacher_dir)).eval(), load_t5(str(student_dir)).eval()

    def generate(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return teacher.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                    assistant_model=student, do_sample=False, num_beams=1,
                                    max_new_tokens=max_new_tokens).numpy()

    return _run(generate, batches)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {"max_new_tokens": args.max_new_tokens, "num_beams": 1, "do_sample": False}
    models = {q: (OnnxT5.from_pretrained(args.teacher, quantized=q, threads=args.threads),
                  OnnxT5.from_pretrained(args.student, quantized=q, threads=args.threads)) for q in (True, False)}
    sources = _sources(models[False][0], args.data, args.split, args.limit)
    results: dict[str, Any] = {"examples": len(sources), "batches": {}}
    for size in args.batches:
        batches = _batches(sources, size, models[False][0].settings.pad_token_id or 0)
        rows: dict[str, dict[str, Any]] = {}
        fp32_alone = _run(lambda ids, mask: models[False][0].generate(ids, mask, **kwargs), batches)[1]
        t_int8, int8_alone = _run(lambda ids, mask: models[True][0].generate(ids, mask, **kwargs), batches)
        rows["teacher int8 alone"] = {"seconds": t_int8, "identical_to_teacher": 1.0}
        for q, name in ((True, "pair int8"), (False, "pair fp32")):
            seconds, out, stats = _assisted(*models[q], batches, {**kwargs, **_drafting(args)})
            rows[name] = {"seconds": seconds, "acceptance_rate": stats.acceptance_rate,
                          "token_acceptance": stats.token_acceptance, "mean_draft_length": stats.mean_draft_length,
                          "draft_lengths": dict(sorted(stats.lengths.items())),
                          "tokens_per_teacher_call": stats.tokens_per_call,
                          "identical_to_teacher": _agreement(out, int8_alone if q else fp32_alone),
                          "breakdown": _breakdown(stats)}
        if args.teacher_model and args.student_model and size == 1:
            seconds, out = _torch_assisted(args.teacher_model, args.student_model, batches, args.max_new_tokens,
                                           args.threads)
            rows["transformers assisted (torch fp32)"] = {"seconds": seconds,
                                                          "identical_to_teacher": _agreement(out, fp32_alone)}
        results["batches"][size] = rows
        print(f"\nbatch {size}, greedy, natural length, {len(sources)} examples")
        base = rows["teacher int8 alone"]["seconds"]
        for name, row in rows.items():
            extra = (f"  acceptance {row['acceptance_rate']:.3f} (per token {row['token_acceptance']:.3f}), "
                     f"{row['tokens_per_teacher_call']:.2f} tokens/call, {row['mean_draft_length']:.2f} drafts/round"
                     if "acceptance_rate" in row else "")
            print(f"  {name:38s} {row['seconds']:8.2f} s  {base / row['seconds']:5.2f}x the teacher int8 alone  "
                  f"identical {100 * row['identical_to_teacher']:5.1f} %{extra}")
        torch_row = rows.get("transformers assisted (torch fp32)")
        if torch_row:
            print(f"  pair int8 vs transformers assisted: {torch_row['seconds'] / rows['pair int8']['seconds']:.2f}x")
        for name in ("pair int8", "pair fp32"):
            print(f"  {name}: {rows[name]['breakdown']}")
    return results


def _make_pair(shape: dict[str, Any], work: Path, int8: bool) -> tuple[Path, Path]:
    """The random teacher of `shape` and its 2-decoder-layer student, exported under `work` (reused when there)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from distill.student import make_student
    from export.exporter import export
    from export.layout import META_FILE

    folders = work / "teacher-onnx", work / "student-onnx"
    if all((f / META_FILE).is_file() for f in folders):
        return folders
    torch.manual_seed(0)
    teacher = T5ForConditionalGeneration(T5Config(**shape)).eval()
    student, _ = make_student(teacher, decoder_layers=2)
    for model, name, out in ((teacher, "teacher", folders[0]), (student, "student", folders[1])):
        model.save_pretrained(work / name)
        export(str(work / name), out, int8=int8, require_tokenizer=False)
    return folders


def _median_ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def cost(args: argparse.Namespace) -> dict[str, Any]:
    from bench.shapes import T5_BASE, T5_SMALL, T5_TINY

    shape = {"base": T5_BASE, "small": T5_SMALL, "tiny": T5_TINY}[args.shape]
    teacher_dir, student_dir = _make_pair(shape, args.work / args.shape, args.int8)
    teacher = OnnxT5.from_pretrained(teacher_dir, quantized=args.int8, threads=args.threads)
    student = OnnxT5.from_pretrained(student_dir, quantized=args.int8, threads=args.threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, shape["vocab_size"], (1, args.input_length))
    mask = np.ones_like(ids)
    hidden = teacher.encode(ids, mask)
    past = rng.integers(2, shape["vocab_size"], (1, args.past_length))

    def calls(model: OnnxT5, new: int) -> Any:
        _, own, cross = model.first_steps(past, mask, hidden)
        tokens = rng.integers(2, shape["vocab_size"], (1, new))
        return lambda: model.steps(tokens, mask, own, cross)

    draft_ms = _median_ms(calls(student, 1), args.repeats)
    verify_ms = {k: _median_ms(calls(teacher, k + 1), args.repeats) for k in range(0, MAX_DRAFT + 1)}
    step_ms = verify_ms[0]  # one token: the teacher's own step
    c = draft_ms / step_ms
    print(f"{args.shape}-shaped teacher ({shape['num_decoder_layers']} decoder layers, "
          f"{'int8' if args.int8 else 'fp32'}) and its 2-layer student, batch 1, past {args.past_length}: "
          f"draft step {draft_ms:.2f} ms, teacher step {step_ms:.2f} ms (c = {c:.3f})")
    print("  verification of k drafts (k + 1 tokens): " + ", ".join(f"k={k} {ms:.2f} ms"
                                                                  for k, ms in verify_ms.items() if k))
    rows = []
    for alpha in ALPHAS:
        # Leviathan et al. (2023), eq. 1: E[tokens per round] / (cost of a round in teacher steps), verification
        # costed as one teacher step; beside it the same with the measured k-token verification
        best = max(range(1, MAX_DRAFT + 1), key=lambda g: expected_tokens(alpha, g) / (g * c + 1))
        paper = expected_tokens(alpha, best) / (best * c + 1)
        measured = max((expected_tokens(alpha, g) * step_ms / (g * draft_ms + verify_ms[g]), g)
                       for g in range(1, MAX_DRAFT + 1))
        rows.append({"alpha": alpha, "gamma": best, "speedup_formula": paper, "speedup_measured_verify": measured[0],
                     "gamma_measured_verify": measured[1]})
        print(f"  acceptance {alpha}: {paper:.2f}x (Leviathan et al., best k {best}); {measured[0]:.2f}x with the "
              f"measured verification cost (best k {measured[1]})")
    return {"shape": args.shape, "draft_step_ms": draft_ms, "teacher_step_ms": step_ms, "verify_ms": verify_ms,
            "c": c, "speedups": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.speculative", description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("acceptance", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--teacher", type=Path, required=True, help="the teacher's export folder")
        p.add_argument("--student", type=Path, required=True, help="the draft student's export folder")
        p.add_argument("--data", type=Path, default=Path("data/bible"))
        p.add_argument("--split", default="test")
        p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
        p.add_argument("--schedule", choices=SCHEDULES, default=None,
                       help="the draft length schedule (num_assistant_tokens_schedule; default: the runtime's)")
    acc = sub.choices["acceptance"]
    acc.add_argument("--int8", action="store_true", help="the int8 graphs of both")
    acc.add_argument("--batch", type=int, default=1)
    cmp_ = sub.choices["compare"]
    cmp_.add_argument("--teacher-model", type=Path, help="the teacher's save_pretrained folder (transformers' run)")
    cmp_.add_argument("--student-model", type=Path, help="the student's save_pretrained folder")
    cmp_.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    cst = sub.add_parser("cost")
    cst.add_argument("--shape", choices=("base", "small", "tiny"), default="base")
    cst.add_argument("--work", type=Path, default=Path("runs/bench-spec"), help="where the random pair is exported")
    cst.add_argument("--int8", action="store_true")
    cst.add_argument("--input-length", type=int, default=64)
    cst.add_argument("--past-length", type=int, default=32)
    cst.add_argument("--repeats", type=int, default=20)
    for p in sub.choices.values():
        p.add_argument("--limit", type=int, default=None, help="the first N examples only")
        p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: cores)")
        p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with cli_errors("python -m bench.speculative"):
        result = {"acceptance": acceptance, "compare": compare, "cost": cost}[args.command](args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
