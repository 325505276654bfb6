"""distill.files: an output folder appears whole or not at all, replaces only a folder of ours, and what a killed run
left is swept by the next one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill import files
from distill.errors import UserError
from distill.files import OutputError, check_output, file_manifest, replace_dir, staged_dir, sweep_stale

MANIFEST = "made.json"
ROOT = Path(__file__).resolve().parents[2]


def _build(folder: Path, content: str) -> None:
    (folder / "a.txt").write_text(content)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(content.encode() * 3)
    (folder / MANIFEST).write_text(json.dumps({"files": file_manifest(folder, skip=(MANIFEST,))}))


def _write(out: Path, content: str) -> Path:
    with staged_dir(out) as staged:
        _build(staged, content)
        return replace_dir(staged, out, manifest=MANIFEST)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_folder_of_ours_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path):
    out = tmp_path / "out"
    assert _write(out, "one") == out
    assert (out / "a.txt").read_text() == "one"
    _write(out, "two")
    assert (out / "a.txt").read_text() == "two" and (out / "sub" / "b.bin").read_bytes() == b"twotwotwo"
    (out / "sub" / "b.bin").unlink()  # a listed file that is missing loses nothing: still ours
    _write(out, "three")
    assert (out / "a.txt").read_text() == "three"
    assert _hidden(tmp_path) == []


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    _write(tmp_path / "out", "one")
    assert (tmp_path / "out" / "a.txt").read_text() == "one"


def _git_checkout(out: Path) -> None:
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "train.py").write_text("print('mine')\n")


def _empty_meta_beside_weights(out: Path) -> None:
    out.mkdir()
    (out / MANIFEST).write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")


def _ours_plus_a_user_file(out: Path) -> None:
    _write(out, "old")
    (out / "notes.txt").write_text("mine")


def _ours_edited_in_place(out: Path) -> None:
    _write(out, "old")
    (out / "a.txt").write_text("new")  # same size: only the checksum tells


def _ours_with_a_link(out: Path) -> None:
    _write(out, "old")
    (out / "data").symlink_to(out.parent)


def _a_file(out: Path) -> None:
    out.write_text("not a folder")


def _manifest_not_json(out: Path) -> None:
    out.mkdir()
    (out / MANIFEST).write_text("{not json")
    (out / "keep.txt").write_text("mine")


@pytest.mark.parametrize("make, message", [
    (_git_checkout, rf"holds no {MANIFEST} \(\.git/, train\.py\)"),
    (_empty_meta_beside_weights, r"lists no 'files' .*beside model\.safetensors"),
    (_ours_plus_a_user_file, r"holds files its made\.json does not list: notes\.txt"),
    (_ours_edited_in_place, r"files changed since it was written: a\.txt"),
    (_ours_with_a_link, r"does not list: data"),
    (_a_file, r"it is a file, not a folder"),
    (_manifest_not_json, r"lists no 'files'.*keep\.txt"),
])
def test_anything_but_a_folder_of_ours_is_refused_and_left_as_it_is(tmp_path, make, message):
    out = tmp_path / "out"
    make(out)
    before = _snapshot(out) if out.is_dir() else out.read_bytes()
    with pytest.raises(OutputError, match=message) as error:
        _write(out, "new")
    assert "Choose another output folder (--out), or move that one away first" in str(error.value)
    assert (_snapshot(out) if out.is_dir() else out.read_bytes()) == before
    assert _hidden(tmp_path) == []


def test_the_current_folder_and_a_path_under_a_file_are_refused_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    for target in (Path("."), Path("..")):
        with pytest.raises(OutputError, match=r"is the current folder .* give a new folder inside it"):
            check_output(target, MANIFEST)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"lies under .*file, which is a file"):
        check_output(tmp_path / "file" / "out", MANIFEST)

    class Mine(UserError):
        pass

    with pytest.raises(Mine, match="is not an earlier run: it is a file"):
        check_output(tmp_path / "file", MANIFEST, "an earlier run", error=Mine)


def test_the_distill_writers_replace_only_their_own_kinds_of_folder(tmp_path):
    """Without a manifest: a model, dataset or tokenizer folder of ours, never a model folder from elsewhere."""
    def staged(name: str) -> Path:
        folder = tmp_path / "build" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        return folder

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"w")
    with pytest.raises(OutputError, match=r"holds none of train_meta\.json, distill_meta\.json, manifest\.json "
                                          r"\(config\.json, model\.safetensors\)"):
        replace_dir(staged("a"), out)
    (out / "train_meta.json").write_text("{}")
    for name, shown in ((".cache", r"\.cache/"), ("README.md", r"README\.md"), ("onnx", "onnx/")):
        path = out / name
        if name.endswith(".md"):
            path.write_text("card")
        else:
            path.mkdir()
        with pytest.raises(OutputError, match=f"holds what none of this project's commands writes there: {shown}"):
            replace_dir(staged(f"b{name}"), out)
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
    replace_dir(staged("c"), out)  # ours: replaced, the staged folder moved (it lay on no staging folder)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert not (tmp_path / "build" / "c").exists() and _hidden(tmp_path) == []

    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "spiece.model"):
        (tokenizer / name).write_text("t")
    replace_dir(staged("d"), tokenizer)
    assert sorted(p.name for p in tokenizer.iterdir()) == ["config.json"]


def test_a_staged_folder_that_its_manifest_does_not_describe_is_a_bug(tmp_path):
    with staged_dir(tmp_path / "out") as staged:
        _build(staged, "one")
        (staged / "extra.txt").write_text("x")
        with pytest.raises(ValueError, match=r"would not be replaceable later: .*extra\.txt"):
            replace_dir(staged, tmp_path / "out", manifest=MANIFEST)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_staging_leaves_nothing_and_the_old_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    _write(out, "old")
    before = _snapshot(out)
    with pytest.raises(RuntimeError, match="boom"), staged_dir(out) as staged:
        _build(staged, "new")
        raise RuntimeError("boom")
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_an_unwritable_place_is_a_user_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(OutputError, match="is not writable"):
        check_output(locked / "out")


def test_the_sweep_removes_only_dead_runs_staging_folders_of_this_host(tmp_path):
    out = tmp_path / "out"
    host = files._host()
    dead, alive = _dead_pid(), os.getppid()
    names = {"dead": f".out.staging.{host}.{dead}.abc123", "alive": f".out.staging.{host}.{alive}.abc123",
             "other host": f".out.staging.elsewhere.{dead}.abc123", "other out": f".other.staging.{host}.{dead}.x",
             "not staging": f".out.train.partial.{dead}"}
    for name in names.values():
        (tmp_path / name / "new").mkdir(parents=True)
        (tmp_path / name / "new" / "encoder_model.onnx").write_text("graph")
    assert sweep_stale(out) == [tmp_path / names["dead"]]
    assert _hidden(tmp_path) == sorted(v for k, v in names.items() if k != "dead")


def test_the_sweep_puts_back_a_folder_a_killed_swap_left_in_its_staging_folder(tmp_path):
    out = tmp_path / "out"
    _write(out, "old")
    before = _snapshot(out)
    staging = tmp_path / f".out.staging.{files._host()}.{_dead_pid()}.abc123"
    staging.mkdir()
    out.rename(staging / "old")  # the first of the two renames, where no atomic swap exists
    sweep_stale(out)
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_without_an_atomic_swap_the_two_renames_replace_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    _write(out, "old")
    _write(out, "new")
    assert (out / "a.txt").read_text() == "new" and _hidden(tmp_path) == []


KILLED = r"""
import json, os, signal, sys
from pathlib import Path
from distill import files

out, point = Path(sys.argv[1]), sys.argv[2]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if point == "before-swap":
    files._swap = die
elif point == "after-swap":
    swap = files._swap
    files._swap = lambda new, out: (swap(new, out), die())
elif point == "between-renames":
    files._exchange = lambda a, b: False
    rename = os.rename
    os.rename = lambda a, b: (rename(a, b), die())
with files.staged_dir(out) as staged:
    (staged / "a.txt").write_text("new")
    if point == "building":
        die()
    (staged / "made.json").write_text(json.dumps({"files": files.file_manifest(staged, skip=("made.json",))}))
    files.replace_dir(staged, out, manifest="made.json")
"""


@pytest.mark.parametrize("point, after_kill", [("building", "old"), ("before-swap", "old"), ("after-swap", "new"),
                                               ("between-renames", None)])
def test_a_run_killed_at_any_point_leaves_the_old_folder_or_the_new_one_and_the_next_run_sweeps(tmp_path, point,
                                                                                                after_kill):
    out = tmp_path / "out"
    _write(out, "old")
    before = _snapshot(out)
    run = subprocess.run([sys.executable, "-c", KILLED, str(out), point], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    assert len(_hidden(tmp_path)) == 1  # what the killed run left: its staging folder, named with its pid
    if after_kill is None:  # killed between `out -> staging/old` and `staging/new -> out`: out is in staging/old
        assert not out.exists()
        sweep_stale(out)
        assert _snapshot(out) == before
    elif after_kill == "old":
        assert _snapshot(out) == before
    else:
        assert (out / "a.txt").read_text() == "new" and set(_snapshot(out)) == {"a.txt", MANIFEST}
    _write(out, "again")  # the next run: sweeps, then replaces the folder (ours, whichever it is)
    assert (out / "a.txt").read_text() == "again" and _hidden(tmp_path) == []


def test_a_distill_writer_never_replaces_a_git_checkout(tmp_path):
    """The tokenizer trainer as one of the writers without a manifest: `--out` a checkout is refused, intact."""
    from distill.tokenizer import train_tokenizer

    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (checkout / "tokenizer.json").write_text("{}")  # one of ours by name: still not a folder of ours
    before = _snapshot(checkout)
    sentences = [f"the lord said unto moses and aaron {word}" for word in ("go", "speak", "bring", "water", "bread")]
    with pytest.raises(OutputError, match=r"holds what none of this project's commands writes there: \.git/"):
        train_tokenizer(sentences, checkout, vocab_size=24)
    assert _snapshot(checkout) == before and _hidden(tmp_path) == []
