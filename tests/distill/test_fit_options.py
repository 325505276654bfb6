"""The distillation command with the options of throughput: caches, cheaper validation, the step profile, DDP."""

import csv
import json

import pytest
import yaml
from distill_fixtures import run_ddp, save_tiny_teacher

from distill.__main__ import main


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI reads sys.argv too; pytest's own arguments must not reach it."""
    monkeypatch.setattr("sys.argv", ["distill"])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher", tokenizer_dir)


def kd_config(tmp_path, dataset_dir, teacher_dir, max_steps, **model):
    """A cached-KD config of the tiny teacher: validation every 2 steps, generation every 4 and at the last."""
    run = tmp_path / "run"
    config = {
        "seed_everything": 7,
        "trainer": {
            "max_steps": max_steps, "val_check_interval": 2, "check_val_every_n_epoch": None,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run), "name": "logs"}},
            "callbacks": [
                {"class_path": "distill.callbacks.GeneratedCheckpoint",
                 "init_args": {"dirpath": str(run / "ckpt"), "filename": "best-{step}", "monitor": "val_bleu",
                               "mode": "max", "save_top_k": 3}},
                {"class_path": "distill.step_profile.StepProfile",
                 "init_args": {"path": str(tmp_path / "profile.json"), "skip": 1}},
            ],
        },
        "model": {"class_path": "distill.distillation.DistillModule",
                  "init_args": {"teacher": str(teacher_dir), "decoder_layers": 1, "alpha_mlm": 0.5, "alpha_ce": 0.5,
                                "freeze_encoder": True, "freeze_embeddings": True,
                                "encoder_cache": str(tmp_path / "cache" / "encoder"),
                                "logit_cache": str(tmp_path / "cache" / "top8"), "logit_cache_k": 8,
                                "warmup_steps": 2, "val_generate_examples": 8, "val_generate_interval": 4,
                                "max_new_tokens": 8, **model}},
        "data": {"tokenizer": str(teacher_dir), "path": str(dataset_dir), "max_tokens": 512},
        "out": str(tmp_path / "model"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cached_kd_fit_skips_encoder_and_teacher_and_generates_every_other_validation(tmp_path, dataset_dir,
                                                                                        teacher_dir):
    main(["fit", "--config", str(kd_config(tmp_path, dataset_dir, teacher_dir, max_steps=6))])
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["steps_timed"] >= 3 and profile["validations"] == 3
    parts = profile["parts_ms"]
    assert parts["encoder"] == 0 and parts["teacher"] == 0  # both came from the caches
    assert parts["decoder"] > 0 and parts["backward"] > 0 and profile["validation_generate_s"] > 0
    metrics = next((tmp_path / "run" / "logs").glob("version_*/metrics.csv")).read_text().splitlines()
    rows = list(csv.DictReader(metrics))
    loss_steps = sorted({int(r["step"]) for r in rows if r.get("val_loss")})
    bleu_steps = sorted({int(r["step"]) for r in rows if r.get("val_bleu")})
    assert len(loss_steps) == 3 and len(bleu_steps) == 2  # steps 2, 4, 6 (logged as 1, 3, 5); BLEU at 4 and 6
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir()) == ["best-step=4.ckpt", "best-step=6.ckpt"]
    meta = json.loads((tmp_path / "model" / "distill_meta.json").read_text())
    assert meta["recipe"]["logit_cache_k"] == 8
    for name in ("encoder", "top8"):
        assert json.loads((tmp_path / "cache" / name / "manifest.json").read_text())["bytes"] > 0


def test_generation_interval_needs_the_generated_checkpoint(tmp_path, dataset_dir, teacher_dir, capsys):
    config = kd_config(tmp_path, dataset_dir, teacher_dir, max_steps=2)
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"][0]["class_path"] = "lightning.pytorch.callbacks.ModelCheckpoint"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2 and "distill.callbacks.GeneratedCheckpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--model.init_args.val_generate_interval", "0"])
    assert "model.val_generate_interval=0" in capsys.readouterr().err


@pytest.mark.slow
def test_kd_with_teacher_under_ddp_on_two_cpu_processes(tmp_path, dataset_dir, teacher_dir):
    """The KD module, teacher and student, under Lightning's DDP (gloo): rank 0 builds the logit cache while rank 1
    waits, the teacher runs on both for the hidden-state loss, and both ranks end with the same weights."""
    config = kd_config(tmp_path, dataset_dir, teacher_dir, max_steps=4, alpha_hid=1.0, encoder_cache=None,
                       freeze_encoder=False, freeze_embeddings=False)
    result = run_ddp(config, tmp_path / "digests", steps=4)
    assert result.stderr.count("teacher logit cache: wrote") == 1  # built once, by rank 0
