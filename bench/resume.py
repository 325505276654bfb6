"""`python -m bench --resume`: a stopped run taken up where it stopped.

`make bench` on every shape and configuration runs for hours, and writes its results after each model it finishes
(`"complete": false` until the end). With --resume, the models a stopped run finished are kept and the run goes on
with the next one; the model it was measuring when it stopped is measured again from its start (its cells so far were
in the worker's files, gone with the run), and the further rounds on close verdicts run over every model, kept or new.

A model is kept only where its numbers mean what this run's would: the same settings (`settings`: threads, output
length, timing rules, grid, configurations, models, inputs) on the same kind of CPU, and the model's folders still
there, with our export in them the one it measured (its `export_id`) of the source it measured (the source's
fingerprint, which a retrained student changes). Anything else is measured again, and the run says why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from export.layout import EXPORT_ID_KEY, META_FILE, source_fingerprint

RESULTS = "results.json"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a stopped run and the run resuming it must share for their numbers to stand side by side."""
    return {"threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "min_seconds": args.min_seconds, "max_repeats": args.max_repeats,
            "recheck_repeats": args.recheck_repeats, "recheck_rounds": args.recheck_rounds, "grid": args.grid,
            "prune": args.prune, "configs": [c.name for c in args.configs], "models": list(args.models),
            "data": str(args.data), "tokenizer": str(args.tokenizer), "student": str(args.student),
            "work": str(args.work)}


def _stale(name: str, model: dict[str, Any]) -> str | None:
    """Why the stopped run's `model` cannot be kept, None when it can."""
    folders = model.get("folders")
    if not folders:
        return "the stopped run did not record its folders"
    missing = [kind for kind, folder in folders.items() if not Path(folder).exists()]
    if missing:
        return f"its {', '.join(sorted(missing))} folder is gone"
    if "onnx" in folders:
        onnx = Path(folders["onnx"])
        meta = json.loads((onnx / META_FILE).read_text()) if (onnx / META_FILE).is_file() else {}
        if meta.get(EXPORT_ID_KEY) != model.get("export_id"):
            return f"{onnx} holds another export than the one measured"
        if meta.get("source_fingerprint") != source_fingerprint(model["path"]):
            return f"{model['path']} changed since {name} was measured"
    return None


def stopped_run(out: Path, current: dict[str, Any], cpu: str) -> dict[str, Any]:
    """The stopped run in `out` (its results.json), with `models` cut to the ones to keep, their folders as Paths;
    what is dropped and kept is printed. BenchError when there is no stopped run there, when it finished, or when its
    settings or CPU differ from `current` and `cpu` (then nothing of it could be kept)."""
    path = out / RESULTS
    fresh = "run without --resume to start over"
    if not path.is_file():
        raise BenchError(f"--resume: there is no {path} to resume; {fresh}.")
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BenchError(f"--resume: {path} is not a bench results file ({err}); {fresh}.") from err
    if previous.get("complete", True):
        raise BenchError(f"--resume: the run in {path} finished; nothing to resume ({fresh}).")
    before = previous.get("settings")
    if before is None:
        raise BenchError(f"--resume: {path} was written by a bench without --resume; {fresh}.")
    changed = [f"{key} {before.get(key)!r} -> {value!r}" for key, value in current.items() if before.get(key) != value]
    if changed:
        raise BenchError(f"--resume: the run in {path} was measured with other settings ({'; '.join(changed)}): "
                         f"resume it with its own options, or {fresh}.")
    if previous["environment"]["cpu"] != cpu:
        raise BenchError(f"--resume: the run in {path} ran on {previous['environment']['cpu']}, this machine is "
                         f"{cpu}; {fresh}.")
    kept = {}
    for name, model in previous["models"].items():
        reason = _stale(name, model)
        if reason:
            print(f"bench: resume: measuring {name} again: {reason}", flush=True)
            continue
        model["folders"] = {kind: Path(folder) for kind, folder in model["folders"].items()}
        kept[name] = model
        print(f"bench: resume: {name} kept from the stopped run", flush=True)
    previous["models"] = kept
    return previous
