"""Stage a student for the Hugging Face hub, check that the staged folder works, and (with --push) upload it.

    python -m publish --model runs/distill/student --onnx runs/export/student \
        --results runs/eval/default/results.json --repo-id you/t5-bible-en-fr-6-2 [--push] [--private]
    make publish REPO_ID=you/t5-bible-en-fr-6-2 [PUSH=1] [PRIVATE=1]

The staged folder (default runs/publish/<name>, printed) is what the hub repository will hold (publish/stage.py
lists it): the student's weights and tokenizer, its provenance, its ONNX fp32 and int8 graphs under onnx/, and the
model card (publish/card.py), whose numbers come from results.json.

Nothing is uploaded that does not work: the staged folder is loaded back with transformers and with `OnnxT5` and
generates on a test sentence (the ONNX fp32 greedy tokens must equal transformers'), the evaluation must hold the
student, and the repo id must be `namespace/name`. Without --push it is a dry run that lists what would be uploaded.
The token comes from HF_TOKEN or the cached login (huggingface_hub's own lookup); it is never printed or written.
A refusal prints one `python -m publish: error: ...` line and exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.errors import cli_errors
from publish.push import push
from publish.stage import MANIFEST, stage

PROG = "python -m publish"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/distill/student"),
                        help="the student's save_pretrained folder (default %(default)s)")
    parser.add_argument("--onnx", type=Path, default=Path("runs/export/student"),
                        help="its export with --int8 (default %(default)s)")
    parser.add_argument("--results", type=Path, default=Path("runs/eval/default/results.json"),
                        help="the evaluation that measured it (default %(default)s)")
    parser.add_argument("--repo-id", required=True, help="namespace/name on the hub")
    parser.add_argument("--out", type=Path, help="the staged folder (default runs/publish/<name>); an existing "
                        "one is replaced only when it is empty or staged by an earlier run")
    parser.add_argument("--license", default="apache-2.0", help="the card's license (default %(default)s)")
    parser.add_argument("--base-model", help="the teacher's hub id for the card's base_model (default: the teacher "
                        "recorded in distill_meta.json when it is a hub id; a local teacher is described in the body)")
    parser.add_argument("--push", action="store_true", help="upload; without it, a dry run")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    """Stage, check and (with --push) upload; raises PublishError for what must not be published."""
    args = parse_args(argv)
    out = args.out or Path("runs/publish") / args.repo_id.split("/")[-1]
    folder = stage(args.model, args.onnx, args.results, args.repo_id, out, args.license, args.base_model)
    # what would be uploaded: all but the manifest
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)
    print(f"staged {folder} (loaded back with transformers and OnnxT5; ONNX fp32 tokens equal transformers'):")
    for p in files:
        print(f"  {p.relative_to(folder)}  {p.stat().st_size / 1e6:.2f} MB")
    if not args.push:
        print(f"dry run: nothing uploaded. To upload to {args.repo_id}: add --push (make publish ... PUSH=1).")
        return
    url = push(folder, args.repo_id, args.private)
    print(f"uploaded {len(files)} files to {url}")


def main(argv: list[str] | None = None) -> None:
    with cli_errors(PROG):
        run(argv)


if __name__ == "__main__":
    main()
