"""`python -m publish` replaces only a folder it staged itself, and stages only an export as it was written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill.files import file_manifest, in_the_way
from export import OnnxT5
from export.layout import EXPORT_ID_KEY, FILES_KEY, META_FILE
from publish.__main__ import main, run
from publish.errors import PublishError
from publish.stage import MANIFEST

ROOT = Path(__file__).resolve().parents[2]


def _argv(inputs, out, *extra):
    return ["--model", str(inputs["student"]), "--onnx", str(inputs["onnx"]), "--results", str(inputs["results"]),
            "--repo-id", "someone/tiny-t5-6-2", "--out", str(out), *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _git_checkout(root: Path) -> Path:
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("print('mine')\n")
    return root


def test_out_dot_in_a_git_checkout_is_refused_and_nothing_is_deleted(tmp_path, inputs, monkeypatch, capsys):
    checkout = _git_checkout(tmp_path / "checkout")
    before = _snapshot(checkout)
    monkeypatch.chdir(checkout)
    with pytest.raises(SystemExit) as exit_:
        main(_argv(inputs, "."))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m publish: error: cannot write ") and "is the current folder" in err
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PublishError, match=r"is not an earlier `python -m publish` folder: it holds no "
                                           r"publish_manifest\.json \(\.git/, src/\).*Choose another output folder"):
        run(_argv(inputs, checkout))
    assert _snapshot(checkout) == before and _hidden(tmp_path) == []


@pytest.mark.parametrize("which", ["student", "onnx"])
def test_the_student_or_its_export_as_out_is_refused(inputs, which):
    before = _snapshot(inputs[which])
    with pytest.raises(PublishError, match=r"is not an earlier `python -m publish` folder: it holds no "
                                           r"publish_manifest\.json"):
        run(_argv(inputs, inputs[which]))
    assert _snapshot(inputs[which]) == before


def test_a_staged_folder_is_replaced_by_the_next_run_unless_someone_added_or_edited_a_file(tmp_path, inputs, capsys):
    out = tmp_path / "staged"
    run(_argv(inputs, out))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest[FILES_KEY] == file_manifest(out, skip=(MANIFEST,)) and manifest["repo_id"] == "someone/tiny-t5-6-2"
    assert MANIFEST not in capsys.readouterr().out  # listed as what would be uploaded: it is not

    onnx_meta = json.loads((out / "onnx" / META_FILE).read_text())  # the export's own list, for the files copied
    assert onnx_meta[FILES_KEY] == file_manifest(out / "onnx", skip=(META_FILE,))
    assert onnx_meta[EXPORT_ID_KEY] == json.loads((inputs["onnx"] / META_FILE).read_text())[EXPORT_ID_KEY]
    OnnxT5.from_pretrained(out / "onnx", verify=True)

    (out / "README.md").write_text((out / "README.md").read_text() + "\nmy note\n")
    with pytest.raises(PublishError, match=r"files changed since it was written: README\.md"):
        run(_argv(inputs, out))
    assert (out / "README.md").read_text().endswith("my note\n")
    (out / "README.md").unlink()  # a listed file that is missing: nothing to lose
    (out / "onnx" / "my-graph.onnx").write_bytes(b"mine")
    with pytest.raises(PublishError, match=r"holds files its publish_manifest\.json does not list: "
                                           r"onnx/my-graph\.onnx"):
        run(_argv(inputs, out))
    (out / "onnx" / "my-graph.onnx").unlink()
    run(_argv(inputs, out))
    assert (out / "README.md").is_file() and _hidden(tmp_path) == []


def test_a_killed_runs_staging_folder_is_swept_by_the_next_run(tmp_path, inputs):
    from distill import files

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".staged.staging.{files._host()}.{child.pid}.k1ll3d"
    shutil.copytree(inputs["student"], stale / "new")
    run(_argv(inputs, tmp_path / "staged"))
    assert _hidden(tmp_path) == []


def test_an_export_changed_after_it_was_written_is_refused(tmp_path, inputs):
    onnx = tmp_path / "onnx"
    shutil.copytree(inputs["onnx"], onnx)
    config = json.loads((onnx / "config.json").read_text())
    (onnx / "config.json").write_text(json.dumps({**config, "note": "edited"}))
    inputs["onnx"] = onnx
    with pytest.raises(PublishError, match=rf"{onnx} was changed after it was exported \(config\.json not as its "
                                           r"export_meta\.json lists\)\. Export it again"):
        run(_argv(inputs, tmp_path / "staged"))
    assert not (tmp_path / "staged").exists() and _hidden(tmp_path) == []


def test_an_export_of_an_older_version_is_refused(tmp_path, inputs):
    onnx = tmp_path / "onnx"
    shutil.copytree(inputs["onnx"], onnx)
    meta = json.loads((onnx / META_FILE).read_text())
    del meta[FILES_KEY]
    (onnx / META_FILE).write_text(json.dumps(meta))
    inputs["onnx"] = onnx
    with pytest.raises(PublishError, match=r"export_meta\.json lists no files: .* is not a complete export of this "
                                           r"version of `python -m export`\. Export it again"):
        run(_argv(inputs, tmp_path / "staged"))


def test_a_folder_given_as_results_is_named(tmp_path, inputs):
    inputs["results"] = tmp_path
    with pytest.raises(PublishError, match=r"is a folder, not a JSON file \(the evaluation's results\)"):
        run(_argv(inputs, tmp_path / "staged"))


@pytest.mark.parametrize("text, message", [("{not json", "cannot be read as JSON"),
                                           ("[1, 2]", "does not hold a JSON object")])
def test_results_or_provenance_that_are_not_a_json_object_are_refused(tmp_path, inputs, text, message):
    inputs["results"].write_text(text)
    with pytest.raises(PublishError, match=rf"results\.json {message} \(the evaluation's results.*\)\. Evaluate"):
        run(_argv(inputs, tmp_path / "staged"))
    student = tmp_path / "student"
    shutil.copytree(inputs["student"], student)
    (student / "distill_meta.json").write_text(text)
    inputs["student"] = student
    with pytest.raises(PublishError, match=rf"distill_meta\.json {message} \(the student's provenance"):
        run(_argv(inputs, tmp_path / "staged"))


def test_the_manifest_is_not_uploaded(tmp_path, inputs, monkeypatch, capsys):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.update(kwargs)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    run(_argv(inputs, tmp_path / "staged", "--push"))
    assert calls["ignore_patterns"] == [MANIFEST] and Path(calls["folder_path"]) == tmp_path / "staged"
    uploaded = [p for p in (tmp_path / "staged").rglob("*") if p.is_file() and p.name != MANIFEST]
    assert f"uploaded {len(uploaded)} files" in capsys.readouterr().out


KILLED = r"""
import os, runpy, signal, sys
from distill import files
import publish.stage

point = sys.argv[1]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if point == "checking":
    publish.stage.check_staged = die
elif point == "before-swap":
    files._swap = die
elif point == "after-swap":
    swap = files._swap
    files._swap = lambda new, out: (swap(new, out), die())
sys.argv = ["python -m publish", *sys.argv[2:]]
runpy.run_module("publish", run_name="__main__")
"""


@pytest.mark.slow
def test_a_publish_killed_at_any_point_leaves_the_old_folder_or_the_new_one(tmp_path, inputs):
    """SIGKILL (no `finally` runs) while the folder is checked, before the swap, after it: `out` is always a whole
    staged folder, the killed run's staging folder is swept by the next run, and a last run leaves nothing beside."""
    out = tmp_path / "staged"
    run(_argv(inputs, out))
    names = set(_snapshot(out))
    for point in ("checking", "before-swap", "after-swap"):
        killed = subprocess.run([sys.executable, "-c", KILLED, point, *_argv(inputs, out)], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert len(_hidden(tmp_path)) == 1, point  # its own staging folder; the previous run's was swept
        assert set(_snapshot(out)) == names and in_the_way(out, MANIFEST) is None, point
    run(_argv(inputs, out))
    assert _hidden(tmp_path) == [] and in_the_way(out, MANIFEST) is None
