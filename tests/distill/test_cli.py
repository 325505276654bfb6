"""The training command end to end on a 2-layer model: fit, best checkpoint to a save_pretrained folder, resume."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from distill_fixtures import run_ddp

from distill.__main__ import main
from distill.errors import ModelError


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI reads sys.argv too; pytest's own arguments must not reach it."""
    monkeypatch.setattr("sys.argv", ["distill"])


ROOT = Path(__file__).parents[2]
# training configs (LightningCLI); configs/eval/ holds the evaluation harness's, tested in tests/eval
CONFIGS = sorted([*ROOT.glob("configs/train/*.yaml"), *ROOT.glob("configs/distill/*.yaml")])


def tiny_config(tmp_path: Path, dataset_dir: Path, tokenizer_dir: Path, max_steps: int) -> Path:
    run = tmp_path / "run"
    config = {
        "seed_everything": 7,
        "trainer": {
            "max_steps": max_steps, "val_check_interval": 4, "check_val_every_n_epoch": None,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run), "name": "logs"}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run / "ckpt"), "filename": "best-{step}", "monitor": "val_bleu",
                               "mode": "max", "save_top_k": 1}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run / "ckpt"), "every_n_train_steps": 2, "save_top_k": 0,
                               "save_last": True}},
            ],
        },
        "model": {"class_path": "distill.module.Seq2SeqModule",
                  "init_args": {"model_config": {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
                                                 "num_heads": 2, "d_kv": 16},
                                "warmup_steps": 2, "val_generate_examples": 8, "max_new_tokens": 8}},
        "data": {"tokenizer": str(tokenizer_dir), "path": str(dataset_dir), "extra_columns": ["fr_darby"],
                 "max_tokens": 512},
        "out": str(tmp_path / "model"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_fit_writes_best_model_and_resumes(tmp_path, dataset_dir, tokenizer_dir):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    config = tiny_config(tmp_path, dataset_dir, tokenizer_dir, max_steps=4)
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    meta = json.loads((tmp_path / "model" / "train_meta.json").read_text())
    assert meta["global_step"] == 4 and meta["monitor"] == "val_bleu" and "val_bleu" in meta["last_validation"]
    model = T5ForConditionalGeneration.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.num_layers == 2 and len(tokenizer) == model.config.vocab_size
    assert model.config.task_specific_params["translation_en_to_fr"]["prefix"] == "translate English to French: "

    # a second run with a higher step budget resumes from last.ckpt instead of starting over
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "8"])
    assert not [w for w in caught if "not resumable" in str(w.message)]  # the loader's position was restored
    meta = json.loads((tmp_path / "model" / "train_meta.json").read_text())
    assert meta["global_step"] == 8
    versions = sorted((tmp_path / "run" / "logs").iterdir())
    steps = [int(row.split(",")[1]) for row in (versions[-1] / "metrics.csv").read_text().splitlines()[1:]
             if row.split(",")[1]]
    assert min(steps) >= 4  # the second run's log starts where the first stopped


@pytest.mark.slow
def test_score_command_writes_metrics(tmp_path, dataset_dir, tokenizer_dir):
    from distill.checkpoint import checkpoint_to_pretrained
    from distill.score import main as score_main

    config = tiny_config(tmp_path, dataset_dir, tokenizer_dir, max_steps=2)
    main(["fit", "--config", str(config)])
    # a checkpoint converts to the same folder that fit wrote from it
    copy = checkpoint_to_pretrained(tmp_path / "run" / "ckpt" / "last.ckpt", tmp_path / "from_ckpt")
    from safetensors.torch import load_file

    converted, fitted = load_file(copy / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert converted.keys() == fitted.keys()  # no validation in 2 steps: fit wrote the final (= last) weights
    assert all(torch.equal(converted[k], fitted[k]) for k in fitted)
    out = tmp_path / "metrics.json"
    score_main(["--model", str(tmp_path / "model"), "--data", str(dataset_dir), "--split", "test",
                "--extra-references", "fr_darby", "--max-new-tokens", "8", "--out", str(out),
                "--predictions", str(tmp_path / "pred.txt")])
    metrics = json.loads(out.read_text())
    assert {"bleu", "chrf", "bleu_multi_ref"} <= set(metrics) and 0 <= metrics["bleu"] <= 100
    assert metrics["examples"] == len((dataset_dir / "test.jsonl").read_text().splitlines())
    assert metrics["decoding"]["task_prefix"] == "translate English to French: "
    assert len((tmp_path / "pred.txt").read_text().splitlines()) == metrics["examples"]


def test_unknown_yaml_key_is_named(tmp_path, dataset_dir, tokenizer_dir, capsys):
    config = tiny_config(tmp_path, dataset_dir, tokenizer_dir, max_steps=1)
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"]["learning_rat"] = 0.1
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config)])
    assert "learning_rat" in capsys.readouterr().err


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "learning_rate" in capsys.readouterr().out


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_identical_replicas(tmp_path, dataset_dir, tokenizer_dir):
    """Lightning's DDP (gloo) through the real command: both ranks end with the same weights."""
    config = tiny_config(tmp_path, dataset_dir, tokenizer_dir, max_steps=4)
    run_ddp(config, tmp_path / "digests", steps=4)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_best_checkpoint_deleted_since_last_ckpt_is_found_on_disk(tmp_path):
    """last.ckpt is written before its step's validation: resumed from it, the callback names a best file that
    top-k deleted. after_fit then takes the best of the files on disk, by the score each recorded."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from distill.checkpoint import best_checkpoint

    callback = ModelCheckpoint(dirpath=tmp_path, filename="best-{step}", monitor="val_bleu", mode="max", save_top_k=2)
    other = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=0, save_last=True)
    for name, state_key, score in [("best-step=4.ckpt", callback.state_key, 3.0),
                                   ("best-step=8.ckpt", callback.state_key, 5.0),
                                   ("best-step=6.ckpt", other.state_key, 9.0),  # not this callback's
                                   ("last.ckpt", callback.state_key, 7.0)]:   # not named like its files
        torch.save({"callbacks": {state_key: {"current_score": torch.tensor(score)}}}, tmp_path / name)
    callback.best_model_path, callback.best_model_score = str(tmp_path / "best-step=2.ckpt"), torch.tensor(4.0)
    assert best_checkpoint(callback) == (str(tmp_path / "best-step=8.ckpt"), 5.0)
    lowest = ModelCheckpoint(dirpath=tmp_path, filename="best-{step}", monitor="val_bleu", mode="min", save_top_k=2)
    for name, score in [("best-step=4.ckpt", 3.0), ("best-step=8.ckpt", 5.0)]:  # its state key names its mode
        state = torch.load(tmp_path / name, weights_only=True)["callbacks"]
        torch.save({"callbacks": {**state, lowest.state_key: {"current_score": torch.tensor(score)}}}, tmp_path / name)
    lowest.best_model_path = str(tmp_path / "best-step=2.ckpt")
    assert best_checkpoint(lowest) == (str(tmp_path / "best-step=4.ckpt"), 3.0)
    plain = tmp_path / "plain"  # Lightning's own file names: no prefix to tell the scored files, last.ckpt aside
    plain.mkdir()
    unnamed = ModelCheckpoint(dirpath=plain, monitor="val_bleu", mode="max")
    for name, score in [("epoch=0-step=4.ckpt", 3.0), ("last.ckpt", 7.0)]:
        torch.save({"callbacks": {unnamed.state_key: {"current_score": torch.tensor(score)}}}, plain / name)
    unnamed.best_model_path = str(plain / "epoch=0-step=2.ckpt")
    assert best_checkpoint(unnamed) == (str(plain / "epoch=0-step=4.ckpt"), 3.0)
    callback.best_model_path = str(tmp_path / "best-step=4.ckpt")  # present: taken as it is, with its own score
    assert best_checkpoint(callback) == (str(tmp_path / "best-step=4.ckpt"), 4.0)

    callback.best_model_path = str(tmp_path / "gone" / "best-step=2.ckpt")
    callback.dirpath = str(tmp_path / "gone")
    (tmp_path / "gone").mkdir()
    with pytest.raises(ModelError, match="is gone"):
        best_checkpoint(callback)


def test_a_user_error_inside_the_run_is_one_line_and_exit_2(tmp_path, dataset_dir, tokenizer_dir, capsys):
    """A ModelError raised while LightningCLI builds the module, or a DataError while the trainer sets up the data,
    reaches the user as `python -m distill: error: ...`, not as a traceback."""
    config = tiny_config(tmp_path, dataset_dir, tokenizer_dir, max_steps=1)
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"]["model_config"]["d_modle"] = 8
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "python -m distill: error: model.model_config has keys that T5Config does not know" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tiny_config(tmp_path, dataset_dir, tokenizer_dir, max_steps=1)),
              "--data.path", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "python -m distill: error: Dataset folder" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "args", "message"), [
    ("score", ["--model", "{tmp}/missing"], "does not exist"),
    ("pseudo", ["--teacher", "{tmp}/missing", "--data", "{tmp}/nodata", "--out", "{tmp}/out"], "does not exist"),
    ("checkpoint", ["--ckpt", "{tmp}/none.ckpt", "--out", "{tmp}/out"], "does not exist"),
    ("bible", ["--db", "{tmp}/nope.db", "--out", "{tmp}/out"], "no such file"),
    ("tokenizer", ["--data", "{tmp}/nodata", "--out", "{tmp}/out"], "does not exist"),
])
def test_every_command_reports_a_user_error_in_one_line(tmp_path, capsys, command, args, message):
    from distill import bible, checkpoint, pseudo, score, tokenizer

    mains = {"score": score.main, "pseudo": pseudo.main, "checkpoint": checkpoint.main, "bible": bible.main,
             "tokenizer": tokenizer.main}
    with pytest.raises(SystemExit) as exit_info:
        mains[command]([a.format(tmp=tmp_path) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m distill.{command}: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
