"""`python -m export.labels`: the teacher's pseudo-labels decoded by OnnxT5 are transformers' labels."""

from __future__ import annotations

import pytest

from distill.data import DataConfig, load_split
from distill.pseudo import make_pseudo_labels
from export.labels import main, onnx_engine

SETTINGS = {"num_beams": 2, "max_new_tokens": 5, "chunk": 4, "limit": 8}


def test_onnx_labels_are_torch_labels_and_the_teacher_is_exported_only_when_a_label_is_missing(
        tiny_teacher, dataset_dir, tmp_path):
    config = DataConfig(str(dataset_dir), None, "en", "fr", [], "translate: ")
    teacher, onnx, labels = str(tiny_teacher), tmp_path / "onnx", tmp_path / "labels.jsonl.gz"
    by_torch = make_pseudo_labels(teacher, config, tmp_path / "torch", **SETTINGS)
    by_onnx = make_pseudo_labels(teacher, config, tmp_path / "by-onnx", labels_file=labels, engine=onnx_engine(onnx),
                                 **SETTINGS)
    targets = [list(load_split(DataConfig(str(out), None, "en", "fr", [], ""), "train")["fr"])
               for out in (by_torch, by_onnx)]
    # the wiring: OnnxT5's own token-for-token agreement with transformers is tested on models that say more than
    # this random teacher does (tests/export/test_onnx_runtime.py)
    assert targets[0] == targets[1] and len(targets[0]) == SETTINGS["limit"]
    assert (onnx / "export_meta.json").is_file()  # OnnxT5 made them
    # the labels file matches: the folder is rebuilt from it, and nothing is exported or generated
    again = tmp_path / "onnx-again"
    make_pseudo_labels(teacher, config, tmp_path / "again", labels_file=labels, engine=onnx_engine(again),
                       **SETTINGS)
    assert not again.exists()


def test_the_command_line_takes_pseudo_s_options_and_onnx(tiny_teacher, dataset_dir, tmp_path, capsys):
    out = tmp_path / "mixed"
    main(["--teacher", str(tiny_teacher), "--data", str(dataset_dir), "--task-prefix", "translate: ",
          "--num-beams", "2", "--max-new-tokens", "4", "--limit", "3", "--mix-gold", "--onnx", str(tmp_path / "onnx"),
          "--out", str(out)])
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert len(load_split(DataConfig(str(out), None, "en", "fr", [], ""), "train")) == 6  # each source twice
    with pytest.raises(SystemExit) as stop:
        main(["--teacher", str(tmp_path / "missing"), "--data", str(dataset_dir), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
