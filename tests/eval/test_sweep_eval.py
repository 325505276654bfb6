"""Bad inputs a new user tries on `python -m eval`: configs, variant folders and the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.config import ConfigError, Variant, check_paths, from_dict, load_config
from eval.errors import EvalError
from eval.report import check_run_dir

VARIANTS = "variants:\n  - {name: t, kind: torch, path: models/teacher}\nreference: t\n"


@pytest.mark.parametrize("content, message", [
    (b"variants: [\n", r"not valid YAML \(line 2, column 1: expected the node content"),
    (b"variants:\n  - {name: caf\xe9, kind: torch, path: x}\n", r"not UTF-8 text \(byte 0xe9 at offset 24\)"),
])
def test_a_config_that_is_not_yaml_text_is_named(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_config_folder_and_a_byte_order_mark(tmp_path):
    with pytest.raises(ConfigError, match=r"is a folder; give a YAML file"):
        load_config(tmp_path)
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VARIANTS.encode())
    assert load_config(path).reference == "t"


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_margin_that_is_not_finite_is_refused(value):
    """A NaN margin passed every gate: no comparison with NaN is true."""
    import yaml

    data = yaml.safe_load(VARIANTS.replace("path: models/teacher", f"path: models/teacher, margin: {value}"))
    with pytest.raises(ConfigError, match=r"variants\[0\]\.margin: expected a finite number"):
        from_dict(data)


@pytest.mark.parametrize("meta, message", [("[1]", r"is not a JSON object \(a JSON list\); the export is damaged"),
                                           ("{no", r"is not a JSON object \(JSONDecodeError")])
def test_an_export_whose_meta_is_not_a_json_object_is_named(tmp_path, meta, message):
    (tmp_path / "export_meta.json").write_text(meta)
    config = from_dict(json.loads(json.dumps({"variants": [{"name": "t", "kind": "onnx", "path": str(tmp_path),
                                                            "quantized": True}], "reference": "t"})))
    with pytest.raises(ConfigError, match=message):
        check_paths(config)


def test_a_variant_path_that_is_a_file_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    config = from_dict({"variants": [{"name": "t", "kind": "torch", "path": str(tmp_path / "config.json")}],
                        "reference": "t"})
    assert isinstance(config.variants[0], Variant)
    with pytest.raises(ConfigError, match=r"config\.json is a file, not a folder"):
        check_paths(config)


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "notes.txt").write_text("mine"), r"it holds notes\.txt, which `python -m eval` does not write"),
    (lambda d: (d / "config.json").write_text("{}"), r"it holds config\.json"),
    (lambda d: (d / "report.md").write_text("my report"), r"its report\.md or results\.json was not written by"),
])
def test_a_run_folder_that_is_not_an_earlier_run_is_left_alone(tmp_path, make, message):
    run = tmp_path / "run"
    run.mkdir()
    make(run)
    before = _files(run)
    with pytest.raises(EvalError, match=message + r".*left as it is\. Choose another run folder \(--out\)"):
        check_run_dir(run)
    assert _files(run) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvalError, match=r"is a file, not a folder"):
        check_run_dir(tmp_path / "file")


def test_an_earlier_run_an_interrupted_one_and_a_new_folder_may_be_written(tmp_path):
    check_run_dir(tmp_path / "new")
    run = tmp_path / "run"
    (run / "workers").mkdir(parents=True)
    check_run_dir(run)  # a run stopped while its workers ran
    (run / "results.json").write_text(json.dumps({"schema_version": 1}))
    (run / "report.md").write_text("# Evaluation report")
    (run / ".report.md.tmp").write_text("half")  # a write stopped before its rename
    check_run_dir(run)


def test_the_cli_refuses_a_user_folder_before_any_work(tmp_path, capsys):
    from eval.__main__ import main

    config = tmp_path / "c.yaml"
    config.write_text(VARIANTS.replace("models/teacher", str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), "--out", str(out)])
    assert exit_.value.code == 2
    assert "is not an earlier evaluation run: it holds notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
