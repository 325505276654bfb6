"""Bad inputs a new user tries on `python -m export`, `OnnxT5` and `load_or_export`: each is one named error."""

from __future__ import annotations

import os
import shutil

import pytest

from export import OnnxT5
from export.errors import ExportError
from export.exporter import export, load_or_export


def test_an_opset_the_exporter_cannot_write_is_refused_before_any_work(tmp_path, capsys):
    from export.__main__ import parse_args
    from export.trace import MAX_OPSET

    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--out", str(tmp_path / "o"), "--opset", str(MAX_OPSET + 1)])
    assert f"--opset {MAX_OPSET + 1}: torch's TorchScript exporter writes opsets 14 to {MAX_OPSET}" in \
        capsys.readouterr().err
    with pytest.raises(ExportError, match=r"opset 99: torch's TorchScript exporter writes opsets 14 to"):
        export("no/such-model", tmp_path / "o", opset=99)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"name_or_dir": 5, "onnx_path": "x"}, r"name_or_dir must be a model folder or hub id, got 5"),
    ({"name_or_dir": "m", "onnx_path": None}, r"onnx_path must be the export folder's path, got None"),
    ({"name_or_dir": "m", "onnx_path": "x", "quantized": "yes"},
     r"quantized must be True or False \(int8 graphs\), or one of 'int8', 'int4', got 'yes'"),
])
def test_load_or_export_names_an_argument_of_the_wrong_type(kwargs, message):
    with pytest.raises(TypeError, match=f"load_or_export: {message}"):
        load_or_export(**kwargs)


def test_from_pretrained_names_a_verify_or_folder_that_is_not_one(tied):
    with pytest.raises(TypeError, match=r"verify must be True or False, got 'no'"):
        OnnxT5.from_pretrained(tied.onnx_dir, verify="no")
    with pytest.raises(ValueError, match=r"folder is an empty string; give the export folder"):
        OnnxT5.from_pretrained("")


@pytest.mark.parametrize("name", ["generation_config.json", "config.json"])
def test_a_side_file_replaced_by_a_folder_is_named(tmp_path, tied, name):
    """It used to be skipped silently: generation settings or token ids from elsewhere."""
    folder = tmp_path / "onnx"
    shutil.copytree(tied.onnx_dir, folder)
    os.remove(folder / name)
    (folder / name).mkdir()
    with pytest.raises(ValueError, match=rf"{name} is a folder, not a JSON file"):
        OnnxT5.from_pretrained(folder)


def test_a_tokenizer_json_that_is_a_folder_is_named(tmp_path, tied):
    folder = tmp_path / "onnx"
    shutil.copytree(tied.onnx_dir, folder)
    (folder / "tokenizer.json").mkdir()
    model = OnnxT5.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a file; copy the export's tokenizer\.json back"):
        _ = model.tokenizer
