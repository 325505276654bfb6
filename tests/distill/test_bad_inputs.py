"""Bad inputs a new user gives the distill loaders and commands: each is refused with a message naming the problem and
the fix, never a traceback, a silent placeholder or a silently wrong result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

# imported at collection, as in test_cli: Lightning's log handler then holds the real stderr, not a test's capture
from distill.__main__ import main as fit_main
from distill.data import DataConfig, load_split
from distill.errors import DataError, ModelError
from distill.models import load_t5, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI reads sys.argv too; pytest's own arguments must not reach it."""
    monkeypatch.setattr("sys.argv", ["distill"])


def tiny_model(path: Path, vocab: int = 96, tokenizer_dir: Path | None = None) -> Path:
    """A 1-layer T5 saved at `path`, with the tokenizer files of `tokenizer_dir` when given."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab, d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
        shutil.copy(tokenizer_dir / name, path / name)
    return path


def write_jsonl(folder: Path, split: str, rows: list[dict | str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    (folder / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


def run_cli(main, args: list[str], capsys) -> str:
    """Run a command's main, expect exit status 2, and return its one error line (progress bars aside)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(("python -m", "usage:"))
             or "error:" in line]
    assert len(lines) <= 2 and "error: " in lines[-1]  # argparse prints its usage line first
    return lines[-1]


# ---- tokenizers ----------------------------------------------------------------------------------------------------
def test_a_model_folder_without_tokenizer_is_refused_not_given_a_placeholder(tmp_path):
    folder = tiny_model(tmp_path / "model")
    with pytest.raises(ModelError, match=r"(?s)model holds no tokenizer.*placeholder.*Copy the tokenizer files.*"
                                         r"--tokenizer"):
        load_tokenizer(str(folder))


def test_a_tokenizer_config_without_vocabulary_is_refused(tmp_path, tokenizer_dir):
    folder = tiny_model(tmp_path / "model")
    shutil.copy(tokenizer_dir / "tokenizer_config.json", folder)  # the class is named, the vocabulary is not there
    with pytest.raises(ModelError, match="no vocabulary of its own"):
        load_tokenizer(str(folder))


def test_a_tokenizer_larger_than_the_embedding_is_refused_a_smaller_one_is_fine(tmp_path, tokenizer_dir):
    small = tiny_model(tmp_path / "small", vocab=64, tokenizer_dir=tokenizer_dir)  # 96 tokens, 64 rows
    with pytest.raises(ModelError, match=r"has 96 tokens but the model's embedding has 64 rows"):
        load_tokenizer(str(small))
    with pytest.raises(ModelError, match="64 rows"):
        load_tokenizer(str(tokenizer_dir), model_vocab_size=64)
    large = tiny_model(tmp_path / "large", vocab=128, tokenizer_dir=tokenizer_dir)  # as t5: 32,100 in 32,128 rows
    assert len(load_tokenizer(str(large))) == 96


def test_student_command_refuses_a_teacher_without_tokenizer_and_takes_tokenizer_option(tmp_path, tokenizer_dir,
                                                                                         capsys):
    from distill.student import main

    teacher = tiny_model(tmp_path / "teacher")
    err = run_cli(main, ["--teacher", str(teacher), "--out", str(tmp_path / "student")], capsys)
    assert err.startswith("python -m distill.student: error: ") and "holds no tokenizer" in err
    assert not (tmp_path / "student").exists()

    main(["--teacher", str(teacher), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "student")])
    assert len(load_tokenizer(str(tmp_path / "student"))) == 96


def test_score_command_refuses_a_model_without_tokenizer(tmp_path, dataset_dir, tokenizer_dir, capsys):
    from distill.score import main

    model = tiny_model(tmp_path / "model")
    err = run_cli(main, ["--model", str(model), "--data", str(dataset_dir), "--limit", "2"], capsys)
    assert err.startswith("python -m distill.score: error: ") and "holds no tokenizer" in err

    out = tmp_path / "metrics.json"
    main(["--model", str(model), "--tokenizer", str(tokenizer_dir), "--data", str(dataset_dir), "--limit", "2",
          "--max-new-tokens", "2", "--out", str(out)])
    assert json.loads(out.read_text())["examples"] == 2


@pytest.mark.parametrize(("option", "value"), [("--limit", "0"), ("--limit", "-1"), ("--num-beams", "0"),
                                               ("--max-new-tokens", "0"), ("--limit", "two")])
def test_score_counts_below_one_are_refused_naming_the_option(tmp_path, option, value, capsys):
    from distill.score import main

    err = run_cli(main, ["--model", str(tmp_path / "model"), option, value], capsys)
    assert f"argument {option}: " in err and (">= 1" in err)


def test_score_refuses_an_empty_split_and_an_output_that_is_a_folder(tmp_path, tokenizer_dir, capsys):
    from distill.score import main

    model = tiny_model(tmp_path / "model", tokenizer_dir=tokenizer_dir)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text("")
    err = run_cli(main, ["--model", str(model), "--data", str(tmp_path / "data")], capsys)
    assert "test.jsonl is empty" in err
    (tmp_path / "data" / "test.csv").unlink(missing_ok=True)
    (tmp_path / "data" / "test.jsonl").unlink()
    (tmp_path / "data" / "test.csv").write_text("en,fr\n")
    assert "test.csv has no rows" in run_cli(main, ["--model", str(model), "--data", str(tmp_path / "data")], capsys)
    err = run_cli(main, ["--model", str(model), "--out", str(tmp_path)], capsys)
    assert "--out" in err and "is a folder" in err


def test_module_refuses_a_tokenizer_larger_than_the_models_embedding(tmp_path, tokenizer_dir):
    from distill.module import Seq2SeqModule

    model = tiny_model(tmp_path / "model", vocab=64)
    with pytest.raises(ModelError, match="96 tokens but the model's embedding has 64 rows"):
        Seq2SeqModule(tokenizer=str(tokenizer_dir), model=str(model))


# ---- data ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("row", "problem"), [
    ({"en": None, "fr": "b"}, "column 'en' is null"),
    ({"en": "a", "fr": 5}, "column 'fr' is not text but int 5"),
    ({"en": "a", "fr": ""}, "column 'fr' is empty"),
    ({"en": "a", "fr": "   "}, "column 'fr' is empty"),
    ({"en": ["a"], "fr": "b"}, "column 'en' is not text but list"),
    ({"fr": "b"}, "column 'en' is null"),
])
def test_a_bad_cell_is_named_by_file_line_and_column_or_dropped_on_request(tmp_path, row, problem, capsys):
    folder = write_jsonl(tmp_path / "data", "train", [{"en": "a", "fr": "b"}, "", row, {"en": "c", "fr": "d"}])
    file = folder / "train.jsonl"
    with pytest.raises(DataError, match=rf"(?s){file}, line 3: {problem}.*drop_invalid"):
        load_split(DataConfig(path=str(folder)), "train")
    capsys.readouterr()
    kept = load_split(DataConfig(path=str(folder), drop_invalid=True), "train")
    assert kept["en"] == ["a", "c"] and kept["fr"] == ["b", "d"]
    assert "dropped 1 of 3 rows" in capsys.readouterr().err


def test_every_bad_row_is_counted_and_a_split_with_none_left_is_refused(tmp_path):
    folder = write_jsonl(tmp_path / "data", "train", [{"en": "a", "fr": ""} for _ in range(7)])
    with pytest.raises(DataError, match=r"7 rows are unusable: line 1, line 2, line 3, line 4, line 5, \.\.\."):
        load_split(DataConfig(path=str(folder)), "train")
    with pytest.raises(DataError, match="none is left after drop_invalid"):
        load_split(DataConfig(path=str(folder), drop_invalid=True), "train")


def test_csv_rows_and_nested_columns_are_checked_too(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text("en,fr\na,b\nc,\n")
    with pytest.raises(DataError, match=r"train.csv, row 2 after the header: column 'fr' is null"):
        load_split(DataConfig(path=str(tmp_path / "csv")), "train")
    nested = write_jsonl(tmp_path / "nested", "train", [{"translation": {"en": "a", "ro": "b"}}, {"translation": None}])
    with pytest.raises(DataError, match=r"line 2: column 'translation.en' is null"):
        load_split(DataConfig(path=str(nested), source_column="translation.en", target_column="translation.ro"),
                   "train")


def test_extra_reference_columns_may_be_empty_but_must_be_text(tmp_path):
    folder = write_jsonl(tmp_path / "data", "test", [{"en": "a", "fr": "b", "ref": None}, {"en": "a", "fr": "b",
                                                                                          "ref": ""}])
    assert len(load_split(DataConfig(path=str(folder), extra_columns=["ref"]), "test")) == 2
    write_jsonl(folder, "test", [{"en": "a", "fr": "b", "ref": "x"}, {"en": "a", "fr": "b", "ref": 3}])
    with pytest.raises(DataError, match="line 2: column 'ref' is not text but int 3"):
        load_split(DataConfig(path=str(folder), extra_columns=["ref"]), "test")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_file_says_it_is_empty(tmp_path, content):
    (tmp_path / "train.jsonl").write_text(content)
    with pytest.raises(DataError, match=r"train.jsonl is empty: split 'train' has no rows"):
        load_split(DataConfig(path=str(tmp_path)), "train")


@pytest.mark.parametrize(("lines", "message"), [
    (['{"en": "a", "fr": "b"}', '{"en": "a", "fr": "b"}', '{"en": "a" "fr": "b"}'], r"line 3: not valid JSON"),
    (['{"en": "a", "fr": "b"}', "", '{"en": "a", "fr": "b"', '{"en": "a", "fr": "b"}'], r"line 3: not valid JSON"),
    (['{"en": "a", "fr": "b"}', '["a", "b"]'], r"line 2: a JSON list, not an object"),
])
def test_a_malformed_jsonl_line_is_named_by_its_number(tmp_path, lines, message):
    write_jsonl(tmp_path, "train", lines)
    with pytest.raises(DataError, match=rf"train.jsonl, {message}"):
        load_split(DataConfig(path=str(tmp_path)), "train")


def test_a_malformed_json_array_names_its_line(tmp_path):
    (tmp_path / "train.json").write_text('[\n{"en": "a", "fr": "b"},\n{"en": "a", "fr": }\n]\n')
    with pytest.raises(DataError, match=r"train.json, line 3: not valid JSON"):
        load_split(DataConfig(path=str(tmp_path)), "train")


def test_token_budgets_below_the_longest_example_are_one_clear_error(dataset_dir, tokenizer_dir):
    from distill.datamodule import Seq2SeqDataModule

    data = Seq2SeqDataModule(tokenizer=str(tokenizer_dir), path=str(dataset_dir), max_tokens=8)
    with pytest.raises(DataError, match=r"data.max_tokens=8 is below the longest train example \(\d+ tokens"):
        data.setup("fit")
    data = Seq2SeqDataModule(tokenizer=str(tokenizer_dir), path=str(dataset_dir), eval_max_tokens=8)
    with pytest.raises(DataError, match=r"data.eval_max_tokens=8 is below the longest validation example"):
        data.setup("fit")


@pytest.mark.parametrize(("key", "value"), [("limit_train_examples", 0), ("max_tokens", 0),
                                            ("max_source_length", -1)])
def test_datamodule_counts_below_one_are_refused(tokenizer_dir, key, value):
    from distill.datamodule import Seq2SeqDataModule

    with pytest.raises(DataError, match=rf"data.{key}={value}: must be >= 1"):
        Seq2SeqDataModule(tokenizer=str(tokenizer_dir), **{key: value})


def fit_config(tmp_path: Path, data_dir: Path, tokenizer_dir: Path, **data: object) -> Path:
    run = tmp_path / "run"
    config = {
        "trainer": {"max_steps": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(run),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "distill.module.Seq2SeqModule",
                  "init_args": {"model_config": {"d_model": 16, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1,
                                                 "num_heads": 2, "d_kv": 8}, "warmup_steps": 1}},
        "data": {"tokenizer": str(tokenizer_dir), "path": str(data_dir), **data},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("max_tokens", "data.max_tokens=8 is below the longest train example"),
    ("null", "train.jsonl, line 2: column 'en' is null"),
    ("integer", "train.jsonl, line 1: column 'fr' is not text but int 7"),
    ("empty", "train.jsonl is empty"),
    ("malformed", "train.jsonl, line 2: not valid JSON"),
])
def test_fit_reports_bad_data_in_one_line(tmp_path, dataset_dir, tokenizer_dir, capsys, case, message):
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    extra = {}
    if case == "max_tokens":
        extra = {"max_tokens": 8}
    elif case == "null":
        lines[1] = json.dumps({**first, "en": None})
    elif case == "integer":
        lines[0] = json.dumps({**first, "fr": 7})
    elif case == "empty":
        lines = []
    else:
        lines[1] = lines[1][:-3]
    (data / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    err = run_cli(fit_main, ["fit", "--config", str(fit_config(tmp_path, data, tokenizer_dir, **extra))], capsys)
    assert err.startswith("python -m distill: error: ") and message in err


# ---- weights and checkpoints -----------------------------------------------------------------------------------------
def test_a_truncated_safetensors_file_is_named(tmp_path):
    folder = tiny_model(tmp_path / "model")
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelError, match=rf"{weights} \(.*\): truncated or corrupt.*Copy the folder again"):
        load_t5(str(folder))
    weights.write_bytes(b"")
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_t5(str(folder))


def test_weights_that_do_not_match_the_config_are_refused_not_filled_at_random(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_model(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_decoder_layers": 2}))
    with pytest.raises(ModelError, match=r"lack \d+ tensors its config.json describes.*random values"):
        load_t5(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 200}))
    with pytest.raises(ModelError, match=r"do not fit its config\.json"):
        load_t5(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if "DenseReluDense" not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelError, match="lack 4 tensors"):
        load_t5(str(folder))


def test_a_file_given_as_model_folder_is_named(tmp_path):
    folder = tiny_model(tmp_path / "model")
    with pytest.raises(ModelError, match=r"model.safetensors is a file; give the model folder"):
        load_t5(str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="The tokenizer name is empty"):
        load_tokenizer("")


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "folder"])
def test_an_unreadable_checkpoint_is_named(tmp_path, capsys, damage):
    from distill.checkpoint import main

    ckpt = tmp_path / "last.ckpt"
    if damage == "folder":
        ckpt.mkdir()
    else:
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, ckpt)
        data = ckpt.read_bytes()
        ckpt.write_bytes({"truncated": data[:len(data) // 2], "empty": b"", "text": b"not a checkpoint\n"}[damage])
    err = run_cli(main, ["--ckpt", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert err.startswith("python -m distill.checkpoint: error: ") and str(ckpt) in err
    assert ("is a folder" if damage == "folder" else "truncated or corrupt") in err
    assert not (tmp_path / "out").exists()


def test_fit_resuming_from_a_truncated_last_checkpoint_names_it(tmp_path, dataset_dir, tokenizer_dir, capsys):
    config = fit_config(tmp_path, dataset_dir, tokenizer_dir)
    last = tmp_path / "run" / "ckpt" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, last)
    last.write_bytes(last.read_bytes()[:300])  # a run killed while writing it
    err = run_cli(fit_main, ["fit", "--config", str(config), "--ckpt_path", "last"], capsys)
    assert err.startswith("python -m distill: error: ") and f"Checkpoint {last} cannot be read" in err
    assert "truncated or corrupt" in err
    err = run_cli(fit_main, ["fit", "--config", str(config), "--ckpt_path", str(tmp_path / "none.ckpt")], capsys)
    assert f"Checkpoint {tmp_path / 'none.ckpt'} does not exist" in err


def test_drop_invalid_reaches_training_and_scoring(tmp_path, dataset_dir, tokenizer_dir, capsys):
    from distill.datamodule import Seq2SeqDataModule
    from distill.score import main

    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    for split in ("train", "test"):
        lines = (data / f"{split}.jsonl").read_text().splitlines()
        lines[0] = json.dumps({**json.loads(lines[0]), "fr": ""})
        (data / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    module = Seq2SeqDataModule(tokenizer=str(tokenizer_dir), path=str(data), drop_invalid=True)
    capsys.readouterr()
    module.setup("fit")
    assert len(module.encoded["train"]) == len((data / "train.jsonl").read_text().splitlines()) - 1
    assert "dropped 1 of" in capsys.readouterr().err

    model = tiny_model(tmp_path / "model", tokenizer_dir=tokenizer_dir)
    err = run_cli(main, ["--model", str(model), "--data", str(data)], capsys)
    assert "test.jsonl, line 1: column 'fr' is empty" in err and "--drop-invalid" in err
    out = tmp_path / "metrics.json"
    main(["--model", str(model), "--data", str(data), "--drop-invalid", "--max-new-tokens", "2", "--out", str(out)])
    tests = len((data / "test.jsonl").read_text().splitlines())
    assert json.loads(out.read_text())["examples"] == tests - 1


def test_fit_with_a_tokenizer_folder_that_holds_none_is_one_line(tmp_path, dataset_dir, capsys):
    model = tiny_model(tmp_path / "model")  # weights, no tokenizer
    err = run_cli(fit_main, ["fit", "--config", str(fit_config(tmp_path, dataset_dir, model))], capsys)
    assert err.startswith("python -m distill: error: ") and "holds no tokenizer" in err
