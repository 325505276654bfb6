"""The onnx-assisted variant kind: an export with a draft model's export, whose predictions are its source's."""

from __future__ import annotations

import shutil

import pytest

from eval.config import ConfigError, from_dict
from eval.quality import gate_checks


def _config(variants: list[dict]) -> dict:
    return {"reference": "teacher-onnx", "variants": variants}


def test_an_assisted_variant_names_its_draft_and_is_gated_on_identical_predictions():
    teacher = {"name": "teacher-onnx", "kind": "onnx", "path": "runs/export/teacher"}
    with pytest.raises(ConfigError, match=r"variants\[1\] \(pair\)\.draft: an onnx-assisted variant names"):
        from_dict(_config([teacher, {"name": "pair", "kind": "onnx-assisted", "path": "runs/export/teacher"}]))
    with pytest.raises(ConfigError, match=r"variants\[0\] \(teacher-onnx\)\.draft"):
        from_dict(_config([{**teacher, "draft": "runs/export/student"}]))
    pair = {"name": "pair", "kind": "onnx-assisted", "path": "runs/export/teacher", "draft": "runs/export/student",
            "source": "teacher-onnx"}
    config = from_dict(_config([teacher, pair, {**pair, "name": "pair-int8", "quantized": True}]))
    scores = {name: {"bleu": 30.0} for name in ("teacher-onnx", "pair", "pair-int8")}
    checks = [c for c in gate_checks(config, scores, {"pair": 0.8, "pair-int8": 0.8}) if c.relation == "assisted"]
    fp32, int8 = checks
    assert not fp32.passed and "predicts 80.00 % of the examples as its source teacher-onnx does" in fp32.describe()
    assert int8.passed  # int8 verification may round differently: recorded, not gated


def test_assisted_engine_predicts_what_the_model_alone_does(tmp_path, tiny_t5_dir, dataset_dir):
    from transformers import T5ForConditionalGeneration

    from distill.data import DataConfig, load_split
    from distill.student import make_student
    from eval.config import GenerationConfig
    from eval.engines import load_engine
    from eval.worker import encode, predict
    from export.exporter import export

    student, _ = make_student(T5ForConditionalGeneration.from_pretrained(tiny_t5_dir), decoder_layers=1)
    student.save_pretrained(tmp_path / "student")
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"):
        if (tiny_t5_dir / file).is_file():
            shutil.copy(tiny_t5_dir / file, tmp_path / "student" / file)
    teacher_onnx = export(str(tiny_t5_dir), tmp_path / "teacher-onnx")
    student_onnx = export(str(tmp_path / "student"), tmp_path / "student-onnx")
    alone = load_engine("onnx", str(teacher_onnx))
    pair = load_engine("onnx-assisted", str(teacher_onnx), draft=str(student_onnx))
    rows = load_split(DataConfig(path=str(dataset_dir)), "test").select(range(12))
    sources = encode(alone.tokenizer, ["translate English to French: " + r["en"] for r in rows], 64)
    generation = GenerationConfig(max_new_tokens=12, batch_size=4)
    assert predict(pair, sources, generation) == predict(alone, sources, generation)
    # the size counts what serves: the graphs OnnxT5 loaded and their weights' data files (the search and
    # shared-cache graphs read the decoder's), the draft's too
    from pathlib import Path

    assert {Path(f).name for f in alone.files} == {f"{graph}.onnx{data}" for data in ("", "_data")
                                                   for graph in ("encoder_model", "decoder_cross_kv_model",
                                                                 "decoder_with_past_model")
                                                   } | {"search_model.onnx", "decoder_shared_cache_model.onnx"}
    assert alone.size_bytes == sum(Path(f).stat().st_size for f in alone.files)
    assert pair.size_bytes == alone.size_bytes + sum(Path(f).stat().st_size for f in pair.files
                                                      if Path(f).is_relative_to(student_onnx))
    assert pair.model.assisted_stats.drafted > 0 and pair.size_bytes > alone.size_bytes
