"""Bad inputs a new user tries on `python -m publish`: results and provenance of another shape are named."""

from __future__ import annotations

import json
import shutil

import pytest

from publish.__main__ import run
from publish.errors import PublishError


def _argv(inputs, out):
    return ["--model", str(inputs["student"]), "--onnx", str(inputs["onnx"]), "--results", str(inputs["results"]),
            "--repo-id", "someone/tiny", "--out", str(out)]


@pytest.mark.parametrize("results, message", [
    ({"variants": [1, 2]}, r"is not an evaluation's results: it lacks variants \(dict\), dataset \(dict\)"),
    ({"variants": {"s": 5}}, r"it lacks dataset \(dict\)"),
])
def test_results_of_another_shape_are_named(tmp_path, inputs, results, message):
    inputs["results"].write_text(json.dumps(results))
    with pytest.raises(PublishError, match=message + r".*Give the results\.json that `python -m eval` wrote"):
        run(_argv(inputs, tmp_path / "staged"))
    assert not (tmp_path / "staged").exists()


def test_a_variant_without_a_path_is_named(tmp_path, inputs):
    results = json.loads(inputs["results"].read_text())
    results["variants"]["student-torch"]["path"] = 5
    inputs["results"].write_text(json.dumps(results))
    with pytest.raises(PublishError, match=r"variant 'student-torch' is not a mapping with a kind and a path"):
        run(_argv(inputs, tmp_path / "staged"))


def test_a_provenance_without_the_layers_copied_is_named_and_nothing_is_staged(tmp_path, inputs):
    student = tmp_path / "student"
    shutil.copytree(inputs["student"], student)
    (student / "distill_meta.json").write_text(json.dumps({"teacher": "models/teacher"}))
    results = json.loads(inputs["results"].read_text())
    results["variants"]["student-torch"]["path"] = str(student)
    inputs["results"].write_text(json.dumps(results))
    inputs["student"] = student
    with pytest.raises(PublishError, match=r"the model card cannot be built from .*distill_meta\.json: KeyError: "
                                           r"'layers_copied'"):
        run(_argv(inputs, tmp_path / "staged"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "student"]
