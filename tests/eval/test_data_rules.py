"""The evaluated split follows distill.data's rules: an unusable row, an empty file or a malformed line is refused,
naming the file, the line and the column, before any variant runs."""

from __future__ import annotations

import json

import pytest

from distill.errors import DataError
from eval.config import DatasetConfig
from eval.data import load_examples


def config(folder, **fields) -> DatasetConfig:
    return DatasetConfig(**{"path": str(folder), "split": "test", "extra_references": [], **fields})


@pytest.mark.parametrize(("row", "message"), [
    ({"en": "a", "fr": None}, "line 2: column 'fr' is null"),
    ({"en": "a", "fr": ""}, "line 2: column 'fr' is empty"),
    ({"en": 3, "fr": "b"}, "line 2: column 'en' is not text but int 3"),
])
def test_an_unusable_row_is_named(tmp_path, row, message):
    rows = [{"en": "hello", "fr": "bonjour"}, row]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"test\.jsonl, {message}"):
        load_examples(config(tmp_path))


def test_an_empty_or_malformed_file_is_named(tmp_path):
    (tmp_path / "test.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"test\.jsonl is empty"):
        load_examples(config(tmp_path))
    (tmp_path / "test.jsonl").write_text('{"en": "a", "fr": "b"}\n{"en": "a", "fr": "b"\n')
    with pytest.raises(DataError, match=r"test\.jsonl, line 2: not valid JSON"):
        load_examples(config(tmp_path))


def test_empty_extra_references_are_skipped_non_text_ones_refused(tmp_path):
    rows = [{"en": "a", "fr": "b", "ref": ""}, {"en": "c", "fr": "d", "ref": "e"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(config(tmp_path, extra_references=["ref"]))
    assert examples.references == [["b"], ["d", "e"]]
    (tmp_path / "test.jsonl").write_text(json.dumps({"en": "a", "fr": "b", "ref": ["x"]}) + "\n")
    with pytest.raises(DataError, match=r"line 1: column 'ref' is not text but list"):
        load_examples(config(tmp_path, extra_references=["ref"]))
