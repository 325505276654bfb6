"""The recipe matrix runner: order, shared phases once, resume, minutes summed over attempts, scores tabulated."""

import json
from pathlib import Path

import pytest
import yaml

from distill.matrix import MatrixError, load_matrix, run_matrix


def phase_config(tmp_path: Path, name: str) -> str:
    config = {"trainer": {"max_steps": 4, "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / "runs" / name / "checkpoints"), "save_last": True}}]},
        "out": str(tmp_path / "runs" / f"student-{name}")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def matrix(tmp_path):
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps({"bleu": 30.0}))
    data = {"teacher_metrics": str(teacher),
            "phases": {"a": {"config": phase_config(tmp_path, "a"), "last_to": str(tmp_path / "runs" / "a-last")},
                       "b": {"config": phase_config(tmp_path, "b")}},
            "recipes": [{"name": "first", "phases": ["a"]}, {"name": "chain", "phases": ["a", "b"]}]}
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_matrix(path)


class FakeRunner:
    """Plays the commands: a fit writes its out folder at max_steps (or fails once if told), score writes metrics."""

    def __init__(self, fail=()):
        self.commands, self.fail = [], set(fail)

    def __call__(self, command, on_tick):
        self.commands.append(command)
        args = {flag: command[i + 1] for i, flag in enumerate(command[:-1]) if flag.startswith("--")}
        if command[2] == "distill":
            config = yaml.safe_load(Path(args["--config"]).read_text())
            on_tick(90.0)
            if args["--config"] in self.fail:
                self.fail.discard(args["--config"])
                return 1
            out = Path(config["out"])
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_meta.json").write_text(json.dumps({"global_step": 4}))
            (out / "model.safetensors").write_text("w")
        elif command[2] == "distill.checkpoint":
            Path(args["--out"]).mkdir(parents=True, exist_ok=True)
            (Path(args["--out"]) / "distill_meta.json").write_text("{}")
        elif command[2] == "distill.score":
            Path(args["--out"]).write_text(json.dumps({"bleu": 29.5, "chrf": 50.0}))
        return 0


def test_matrix_runs_shared_phases_once_resumes_and_tabulates(matrix, tmp_path):
    runner = FakeRunner(fail=[matrix["phases"]["b"]["config"]])
    with pytest.raises(MatrixError, match="phase b"):
        run_matrix(matrix, tmp_path / "work", runner=runner)
    kinds = [c[2] for c in runner.commands]
    assert kinds == ["distill", "distill.checkpoint", "distill.score", "distill"]  # a once, its folder, b failed

    runner.commands.clear()  # run again: a is done and scored, b resumes (--ckpt_path last) and succeeds
    rows = run_matrix(matrix, tmp_path / "work", runner=runner)
    assert [c[2] for c in runner.commands] == ["distill", "distill.score"]
    assert runner.commands[0][-2:] == ["--ckpt_path", "last"]
    assert rows[0] == {"recipe": "first", "phases": ["a"], "minutes": 1.5, "bleu": 29.5, "chrf": 50.0,
                       "bleu_multi_ref": None, "teacher_bleu": 30.0, "gap": -0.5}
    assert rows[1]["minutes"] == 4.5  # a (1.5) + b's failed attempt and its resumed one (1.5 each)
    assert json.loads((tmp_path / "work" / "summary.json").read_text()) == rows

    runner.commands.clear()
    run_matrix(matrix, tmp_path / "work", only=["chain"], runner=runner)
    assert runner.commands == []  # everything done and scored
    with pytest.raises(MatrixError, match="no such recipe"):
        run_matrix(matrix, tmp_path / "work", only=["nope"], runner=runner)


def test_matrix_file_problems_are_named(tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump({"phases": {}, "recipes": [{"name": "r", "phases": ["x"]}]}))
    with pytest.raises(MatrixError, match="unknown: \\['x'\\]"):
        load_matrix(path)
    path.write_text(yaml.safe_dump({"phases": {"x": {"config": str(tmp_path / "none.yaml")}},
                                    "recipes": [{"name": "r", "phases": ["x"]}]}))
    with pytest.raises(MatrixError, match="not a file"):
        load_matrix(path)


def test_the_shipped_matrix_loads():
    root = Path(__file__).parents[2]
    matrix = load_matrix(root / "configs" / "distill" / "matrix" / "recipes.yaml")
    assert {"sft-cached", "kd-cached", "sft-then-kd", "pseudo-mixed", "sft-cached-6-1", "sft-cached-6-3"} <= {
        r["name"] for r in matrix["recipes"]}
