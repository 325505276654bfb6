"""The evaluation config: shipped YAML files load, and every mistake is named by its dotted key, all at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.config import HEADLINE, ConfigError, EvalConfig, Variant, check_paths, from_dict, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "eval").glob("*.yaml"))
TWO = [{"name": "teacher-torch", "kind": "torch", "path": "models/teacher"},
       {"name": "student-onnx", "kind": "onnx", "path": "runs/export/student", "source": "teacher-torch"}]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.reference in [v.name for v in config.variants]
    assert config.gate_metrics() == HEADLINE[config.dataset.task]


def test_default_config_is_the_issues_comparison():
    config = load_config(Path(__file__).parents[2] / "configs" / "eval" / "default.yaml")
    kinds = {v.name: (v.kind, v.quantized, v.source, v.teacher) for v in config.variants}
    assert kinds == {"teacher-torch": ("torch", False, None, None),
                     "student-torch": ("torch", False, None, "teacher-torch"),
                     "student-onnx": ("onnx", False, "student-torch", None),
                     "student-onnx-int8": ("onnx", True, "student-torch", None),
                     "teacher-onnx-int8": ("onnx", True, "teacher-torch", None),
                     "student-torch-int8": ("torch-int8", False, "student-torch", None)}
    d = config.dataset
    assert (d.path, d.split, d.source_column, d.target_column, d.extra_references, d.task_prefix) == (
        "data/bible", "test", "en", "fr", ["fr_darby"], "translate English to French: ")
    assert config.gate.export_margin == 0.5


def test_int4_config_compares_three_precisions_of_one_export_per_model():
    config = load_config(Path(__file__).parents[2] / "configs" / "eval" / "int4.yaml")
    kinds = {v.name: (v.quantized_kind, v.path, v.source) for v in config.variants if v.kind == "onnx"}
    for model in ("teacher", "student"):
        folder = f"runs/export/{model}-int4"
        assert {name: kinds[name] for name in kinds if name.startswith(model)} == {
            f"{model}-onnx": (None, folder, f"{model}-torch"), f"{model}-onnx-int8": ("int8", folder, f"{model}-torch"),
            f"{model}-onnx-int4": ("int4", folder, f"{model}-torch")}
        assert all("--int8 --int4" in (v.build or "") for v in config.variants if v.path == folder)


def test_quantized_takes_true_or_a_kind():
    variants = [{"name": n, "kind": "onnx", "path": "x", "quantized": q}
                for n, q in (("a", True), ("b", "int4"), ("c", "int8"), ("d", False))]
    assert [v.quantized_kind for v in from_dict({"variants": variants, "reference": "a"}).variants] == \
        ["int8", "int4", "int8", None]
    with pytest.raises(ConfigError, match=r"variants\[0\] \(a\).quantized: 'q4' is not true, false, int8 or int4"):
        from_dict({"variants": [{**variants[0], "quantized": "q4"}], "reference": "a"})
    with pytest.raises(ConfigError, match=r"variants\[0\].quantized: expected bool or str, got 4"):
        from_dict({"variants": [{**variants[0], "quantized": 4}], "reference": "a"})


def test_unknown_keys_and_wrong_types_are_all_named_in_one_error():
    with pytest.raises(ConfigError) as err:
        from_dict({"variants": [{**TWO[0], "quantised": True}, TWO[1]], "speed": {"batch_size": [1], "repeats": "5"},
                   "dataset": {"colums": "en"}, "generation": {"num_beams": 1.5}})
    message = str(err.value)
    assert "5 problem(s)" in message
    for expected in ("variants[0].quantised: unknown key", "speed.batch_size: unknown key",
                     "dataset.colums: unknown key", "speed.repeats: expected int, got '5'",
                     "generation.num_beams: expected int, got 1.5"):
        assert expected in message


def test_inconsistent_variants_are_named():
    bad = [{"name": "a", "kind": "tflite", "path": "x"},
           {"name": "b", "kind": "torch", "path": "y", "quantized": True, "teacher": "nope"}]
    with pytest.raises(ConfigError) as err:
        from_dict({"variants": bad, "reference": "teacher", "gate": {"metrics": ["bleu4"]}})
    message = str(err.value)
    for expected in ("variants[0] (a).kind: 'tflite' is not one of torch, torch-int8, onnx",
                     "variants[1] (b).quantized: only onnx variants have int8 graphs",
                     "variants[1] (b).teacher: 'nope' is not another variant",
                     "reference: 'teacher' is not a variant (variants: a, b)", "gate.metrics: 'bleu4' is not one of"):
        assert expected in message
    with pytest.raises(ConfigError, match=r"variants\[1\].path: required"):
        from_dict({"variants": [TWO[0], {"name": "c", "kind": "onnx"}]})


def test_missing_variant_paths_name_the_path_and_the_command_that_builds_it(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    fp32_only = tmp_path / "export"
    fp32_only.mkdir()
    (fp32_only / "export_meta.json").write_text(json.dumps({"int8": None}))
    config = EvalConfig(variants=[
        Variant("teacher-torch", "torch", str(teacher)),
        Variant("student-torch", "torch", str(tmp_path / "student"), build="make distill"),
        Variant("student-onnx-int8", "onnx", str(fp32_only), quantized=True,
                build="make export MODEL=runs/distill/student OUT=runs/export/student"),
        Variant("student-onnx-int4", "onnx", str(fp32_only), quantized="int4"),
        Variant("half-export", "onnx", str(teacher)),
        Variant("hub-model", "torch", "org/not-here", hub=True)])
    with pytest.raises(ConfigError) as err:
        check_paths(config)
    message = str(err.value)
    assert f"variant student-torch: {tmp_path / 'student'} does not exist; build it with `make distill`" in message
    assert (f"variant student-onnx-int8: {fp32_only} holds no int8 graphs (exported without --int8); build it with "
            "`make export MODEL=runs/distill/student OUT=runs/export/student`") in message
    assert f"variant student-onnx-int4: {fp32_only} holds no int4 graphs (exported without --int4)" in message
    assert f"variant half-export: {teacher} is not a finished ONNX export" in message
    assert "teacher-torch" not in message and "hub-model" not in message
