"""What `python -m export` may replace (only an earlier export, exactly as its export_meta.json lists it), what it
records to prove a folder is one export (file list, export id in every graph), and what killed runs leave."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import export.exporter
from distill.errors import ModelError
from distill.files import file_manifest
from export import OnnxT5
from export.__main__ import main
from export.errors import ExportError
from export.exporter import load_or_export
from export.layout import EXPORT_ID_KEY, FILES_KEY, GRAPH_EXPORT_ID, GRAPHS, META_FILE, quantized_name

# the tiny models have no tokenizer: their graphs alone are exported
run_export = functools.partial(export.exporter.export, require_tokenizer=False)

ROOT = Path(__file__).resolve().parents[2]


def _graph_id(path: Path) -> str | None:
    import onnx

    props = onnx.load(str(path), load_external_data=False).metadata_props
    return {p.key: p.value for p in props}.get(GRAPH_EXPORT_ID)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _meta(folder: Path) -> dict:
    return json.loads((folder / META_FILE).read_text())


def test_export_meta_lists_every_file_and_every_graph_carries_the_export_id(tied):
    folder = tied.onnx_dir
    meta = _meta(folder)
    assert meta[FILES_KEY] == file_manifest(folder, skip=(META_FILE,))
    assert set(meta[FILES_KEY]) >= {*GRAPHS, "config.json", "generation_config.json"}
    assert len(meta[EXPORT_ID_KEY]) == 32 and int(meta[EXPORT_ID_KEY], 16) >= 0  # uuid4 hex
    assert all(_graph_id(folder / graph) == meta[EXPORT_ID_KEY] for graph in GRAPHS)


def _copy_of_export(tied, out: Path) -> None:
    shutil.copytree(tied.onnx_dir, out)


def _model_folder(tied, out: Path) -> None:
    shutil.copytree(tied.model_dir, out)


def _empty_meta_beside_weights(tied, out: Path) -> None:
    out.mkdir()
    (out / META_FILE).write_text("{}")
    shutil.copy(tied.model_dir / "model.safetensors", out / "model.safetensors")


def _export_plus_user_files(tied, out: Path) -> None:
    _copy_of_export(tied, out)
    (out / "notes.txt").write_text("mine")
    (out / "experiments").mkdir()
    (out / "experiments" / "run1.csv").write_text("a,b\n")


def _export_with_edited_config(tied, out: Path) -> None:
    _copy_of_export(tied, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "note": "my edit"}))


def _export_of_an_older_version(tied, out: Path) -> None:
    _copy_of_export(tied, out)
    meta = _meta(out)
    del meta[FILES_KEY]
    (out / META_FILE).write_text(json.dumps(meta))


def _git_checkout(tied, out: Path) -> None:
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "README.md").write_text("my project\n")


@pytest.mark.parametrize("make, message", [
    (_model_folder, r"holds no export_meta\.json \(config\.json, .*model\.safetensors"),
    (_empty_meta_beside_weights, r"its export_meta\.json lists no 'files' .*beside model\.safetensors"),
    (_export_plus_user_files, r"holds files its export_meta\.json does not list: experiments/run1\.csv, notes\.txt"),
    (_export_with_edited_config, r"files changed since it was written: config\.json"),
    (_export_of_an_older_version, r"its export_meta\.json lists no 'files' .*older version"),
    (_git_checkout, r"holds no export_meta\.json \(\.git/, README\.md\)"),
])
def test_a_folder_that_is_not_exactly_an_earlier_export_is_refused_before_any_work(tied, tmp_path, monkeypatch, make,
                                                                                   message):
    out = tmp_path / "out"
    make(tied, out)
    before = _snapshot(out)

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(export.exporter, "load_t5", never)
    with pytest.raises(ExportError, match=rf"{out} is not an earlier export: (it )?{message}.*Choose another output "
                                          r"folder \(--out\), or move that one away first"):
        run_export(str(tied.model_dir), out)
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_the_command_prints_one_line_for_a_refused_folder(tied, tmp_path, capsys):
    out = tmp_path / "model"
    _model_folder(tied, out)
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(out), "--out", str(out), "--no-tokenizer"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m export: error: ") and "is not an earlier export" in err and "\n" not in err
    assert (out / "model.safetensors").is_file()


def test_the_current_folder_is_refused(tied, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError, match="is the current folder"):
        run_export(str(tied.model_dir), ".")
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_export_and_an_empty_folder_are_replaced_and_stale_staging_is_swept(tied, tmp_path):
    from distill import files

    out = tmp_path / "out"
    _copy_of_export(tied, out)
    old_id = _meta(out)[EXPORT_ID_KEY]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".out.staging.{files._host()}.{child.pid}.k1ll3d"  # a killed run's: six graphs, no meta
    alive = tmp_path / f".out.staging.{files._host()}.{os.getppid()}.running"
    for staging in (stale, alive):
        shutil.copytree(tied.onnx_dir, staging / "new", ignore=shutil.ignore_patterns(META_FILE))

    assert run_export(str(tied.model_dir), out) == out
    meta = _meta(out)
    assert meta[EXPORT_ID_KEY] != old_id and meta[FILES_KEY] == file_manifest(out, skip=(META_FILE,))
    assert all(_graph_id(out / graph) == meta[EXPORT_ID_KEY] for graph in GRAPHS)
    assert _hidden(tmp_path) == [alive.name]  # another run's (its process lives) is not touched

    empty = tmp_path / "empty"
    empty.mkdir()
    run_export(str(tied.model_dir), empty)
    assert (empty / META_FILE).is_file()


def test_int8_graphs_carry_the_id_and_a_re_export_without_int8_does_not_delete_them(tied, tmp_path):
    out = tmp_path / "out"
    run_export(str(tied.model_dir), out, int8=True)
    meta = _meta(out)
    int8 = [quantized_name(graph) for graph in GRAPHS]
    assert set(meta[FILES_KEY]) >= set(int8)
    assert all(_graph_id(out / name) == meta[EXPORT_ID_KEY] for name in int8)
    before = _snapshot(out)
    with pytest.raises(ExportError, match=r"holds the int8 graphs of an earlier --int8 export \(encoder_model_"
                                          r"quantized\.onnx, decoder_model_quantized\.onnx, decoder_with_past_model_"
                                          r"quantized\.onnx\); an export without --int8 would delete them\. Add "
                                          r"--int8"):
        run_export(str(tied.model_dir), out)
    assert _snapshot(out) == before


def test_load_or_export_refuses_what_is_not_an_export_and_reads_no_broken_meta(tied, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"holds no export_meta\.json \(notes\.txt\)"):
        load_or_export(tied.model_dir, foreign)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / META_FILE).write_text("{not json")
    with pytest.raises(ExportError, match=r"lists no 'files'"):
        load_or_export(tied.model_dir, broken)
    assert (foreign / "notes.txt").read_text() == "mine" and (broken / META_FILE).read_text() == "{not json"


KILLED = r"""
import os, runpy, signal, sys
from distill import files
import export.exporter

point = sys.argv[1]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if point == "validating":  # the graphs are staged, export_meta.json is not
    export.exporter.validate = die
elif point == "before-swap":
    files._swap = die
elif point == "after-swap":
    swap = files._swap
    files._swap = lambda new, out: (swap(new, out), die())
sys.argv = ["python -m export", *sys.argv[2:]]
runpy.run_module("export", run_name="__main__")
"""


@pytest.mark.slow
def test_an_export_killed_at_any_point_leaves_the_old_export_or_the_new_one(tied, tmp_path):
    """SIGKILL (no `finally` runs) with graphs staged, before the swap, after it: `out` is always one whole export,
    the killed run's staging folder is swept by the next run, and a last run leaves nothing beside `out`."""
    out = tmp_path / "out"
    shutil.copytree(tied.onnx_dir, out)
    old = _snapshot(out)
    for point, after in (("validating", "old"), ("before-swap", "old"), ("after-swap", "new")):
        killed = subprocess.run([sys.executable, "-c", KILLED, point, "--model", str(tied.model_dir), "--out",
                                 str(out), "--no-tokenizer"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert len(_hidden(tmp_path)) == 1, point  # its own staging folder; the previous run's was swept
        if after == "old":
            assert _snapshot(out) == old, point
        else:
            assert _meta(out)[EXPORT_ID_KEY] != json.loads(old[META_FILE])[EXPORT_ID_KEY]
            OnnxT5.from_pretrained(out, verify=True)
    run_export(str(tied.model_dir), out)
    assert _hidden(tmp_path) == []
    OnnxT5.from_pretrained(out, verify=True)


def test_a_model_without_a_tokenizer_is_refused_unless_one_is_given_or_declined(tmp_path, tiny_t5, tokenizer_dir):
    """No silent export without a tokenizer: the refusal names the fix; --tokenizer supplies one, --no-tokenizer
    exports the graphs alone; a tokenizer larger than the embedding is refused."""
    model_dir = tmp_path / "model"
    tiny_t5(model_dir, "t5-relu-tied", vocab_size=128)  # the test tokenizer's 96 ids fit in 128 rows
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(model_dir), "--out", str(tmp_path / "refused")])
    assert exit_info.value.code == 2 and not (tmp_path / "refused").exists()
    with pytest.raises(ModelError, match=r"holds no tokenizer.*--tokenizer"):
        export.exporter.export(str(model_dir), tmp_path / "refused")
    main(["--model", str(model_dir), "--out", str(tmp_path / "given"), "--tokenizer", str(tokenizer_dir)])
    assert (tmp_path / "given" / "tokenizer.json").is_file()
    assert OnnxT5.from_pretrained(tmp_path / "given").tokenizer.get_vocab_size() == 96
    main(["--model", str(model_dir), "--out", str(tmp_path / "bare"), "--no-tokenizer"])
    assert _meta(tmp_path / "bare")["tokenizer_files"] == [] and OnnxT5.from_pretrained(tmp_path / "bare")
    small = tmp_path / "small"
    tiny_t5(small, "t5-relu-tied", vocab_size=64)
    with pytest.raises(ModelError, match="96 tokens but the model's embedding has 64 rows"):
        export.exporter.export(str(small), tmp_path / "too-big", tokenizer=str(tokenizer_dir))
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--out", str(tmp_path / "x"), "--tokenizer", "t", "--no-tokenizer"])
