"""Fixtures of the publish tests: those shared with the other harness tests live in tests/eval_fixtures.py; the
student and its export are made once per session for test_publish.py and test_publish_errors.py."""

import json
import shutil

import pytest
from eval_fixtures import one_torch_thread, synthetic_results, tiny_t5_dir  # noqa: F401


@pytest.fixture(scope="session")
def student_and_export(tmp_path_factory, tiny_t5_dir):  # noqa: F811 (the fixture imported above)
    """A student folder (the tiny T5 with a distill_meta.json) and its fp32 + int8 + int4 export."""
    from export.exporter import export

    root = tmp_path_factory.mktemp("publish")
    student = root / "student"
    shutil.copytree(tiny_t5_dir, student)
    meta = {"teacher": "models/teacher", "layers_copied": {"encoder": [0, 1], "decoder": [0, 1]},
            "teacher_layers": {"encoder": 2, "decoder": 2}, "student_layers": {"encoder": 2, "decoder": 2},
            "recipe": {"alpha_mlm": 1.0, "alpha_ce": 0.0, "alpha_hid": 0.0, "temperature": 2.0,
                       "freeze_embeddings": True, "freeze_encoder": True},
            "training": {"best_checkpoint": "/secret/machine/path/best.ckpt", "best_score": 34.78,
                         "monitor": "val_bleu", "global_step": 1500,
                         "command": "python -m distill fit --config configs/distill/sft.yaml --ckpt_path last"}}
    (student / "distill_meta.json").write_text(json.dumps(meta))
    onnx = export(str(student), root / "onnx", int8=True, int4=True)
    return student, onnx


@pytest.fixture
def inputs(tmp_path, student_and_export, synthetic_results):  # noqa: F811 (the fixture imported above)
    """Student, export and a results.json whose student variants point at them."""
    student, onnx = student_and_export
    variants = synthetic_results["variants"]
    variants["student-torch"]["path"] = str(student)
    variants["student-onnx"]["path"] = str(onnx)
    variants["student-onnx-int8"] = {**variants["student-onnx"], "quantized": True,
                                     "quality": {**variants["student-onnx"]["quality"], "bleu": 26.5}}
    variants["student-onnx-int4"] = {**variants["student-onnx"], "quantized": "int4",
                                     "quality": {**variants["student-onnx"]["quality"], "bleu": 25.5}}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(synthetic_results))
    return {"student": student, "onnx": onnx, "results": results}
