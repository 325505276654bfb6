"""The options every bench command that measures the bench's models shares (`python -m bench`, `bench.paired`): where
the models, their inputs and the venvs are, and what every engine is given."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The student, the test sources and tokenizer that make the inputs, the threads and output length every engine
    gets, the cache of models and conversions, and the pythons of the serving and optimum venvs."""
    parser.add_argument("--student", type=Path, default=Path("runs/distill/student"),
                        help="the default student (default %(default)s; made by make distill)")
    parser.add_argument("--data", type=Path, default=Path("data/bible"), help="test sources for the inputs")
    parser.add_argument("--tokenizer", type=Path, default=Path("models/teacher"),
                        help="folder whose tokenizer.json makes the input ids (default: the committed teacher's, which "
                             "the default student shares; its 8,000 ids are valid in every shape's vocabulary)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for every engine (default %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("bench/work"), help="models and conversions (cached)")
    parser.add_argument("--serve-python", type=Path, default=Path(".venv-serve/bin/python"),
                        help="python of the venv holding only what OnnxT5 needs (make bench creates it)")
    parser.add_argument("--optimum-python", type=Path, default=Path(".venv-optimum/bin/python"),
                        help="python of the optimum venv (make bench creates it)")
