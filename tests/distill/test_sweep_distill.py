"""Bad inputs a new user tries on the distill commands: each is one named error, and nothing of theirs is replaced."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from distill.errors import DataError, ModelError, UserError, cli_errors
from distill.files import OutputError, check_output


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _model_folder(path: Path) -> Path:
    """A folder the distill writers would replace (one of ours), standing for a teacher or a dataset."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "t5"}')
    (path / "train_meta.json").write_text("{}")
    return path


def test_ctrl_c_is_one_line_and_status_130(capsys):
    with pytest.raises(SystemExit) as exit_, cli_errors("python -m distill.thing"):
        raise KeyboardInterrupt
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m distill.thing: interrupted (Ctrl-C)" in err
    assert "Traceback" not in err


def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path):
    teacher = _model_folder(tmp_path / "teacher")
    with pytest.raises(OutputError, match=r"it is .*teacher, which this command reads: writing there would replace "
                                          r"its own input\. Choose another output folder"):
        check_output(teacher, inputs=(str(teacher),))
    with pytest.raises(OutputError, match=r"it holds .*teacher/config\.json, which this command reads"):
        check_output(teacher, inputs=(teacher / "config.json",))
    check_output(tmp_path / "student", inputs=(teacher, None, "google-t5/t5-small"))  # a hub id is no local path


@pytest.mark.parametrize("command, argv", [
    ("distill.student", ["--teacher", "{x}", "--decoder-layers", "1", "--out", "{x}"]),
    ("distill.student", ["--teacher", "missing-hub/id", "--tokenizer", "{x}", "--out", "{x}"]),
    ("distill.tokenizer", ["--data", "{x}", "--vocab-size", "60", "--out", "{x}"]),
    ("distill.pseudo", ["--teacher", "missing-hub/id", "--data", "{x}", "--out", "{x}"]),
    ("distill.bible", ["--db", "{x}/config.json", "--out", "{x}"]),
    ("distill.checkpoint", ["--ckpt", "{x}/last.ckpt", "--out", "{x}"]),
])
def test_a_command_never_writes_over_what_it_reads(tmp_path, capsys, command, argv):
    import importlib

    folder = _model_folder(tmp_path / "mine")
    (folder / "last.ckpt").write_bytes(b"x")
    before = _snapshot(folder)
    main = importlib.import_module(command).main
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{x}", str(folder)) for a in argv])
    assert exit_.value.code == 2
    assert "which this command reads: writing there would replace its own input" in capsys.readouterr().err
    assert _snapshot(folder) == before


def test_fit_refuses_an_out_that_is_its_teacher_or_data(tmp_path):
    from distill.__main__ import CLI

    class Fake:
        subcommand = "fit"

        def __init__(self, out: Path, teacher: Path):
            self.config = {"fit": {"out": out, "data": {"path": "data/bible", "tokenizer": str(teacher)},
                                   "model": {"init_args": {"teacher": str(teacher)}}}}

    teacher = _model_folder(tmp_path / "teacher")
    with pytest.raises(OutputError, match="which this command reads"):
        CLI.before_fit(Fake(teacher, teacher))  # type: ignore[arg-type]


@pytest.mark.parametrize("section", ["trainer: [1, 2]", "trainer: 5"])
def test_fit_names_a_config_section_that_is_not_a_mapping(tmp_path, monkeypatch, capsys, section):
    from distill.__main__ import main

    monkeypatch.setattr("sys.argv", ["distill"])
    config = tmp_path / "bad.yaml"
    config.write_text(f"{section}\nmodel:\n  class_path: distill.module.Seq2SeqModule\n"
                      "  init_args: {model: nowhere/at-all}\ndata: {tokenizer: nowhere/at-all}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config)])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (Lightning's logger may also write to an old stream)
    assert last.startswith("python -m distill: error: `trainer` in the config must be a mapping of settings")


@pytest.mark.parametrize("vocab, message", [
    (5, r"vocab_size must be a whole number >= 8"),
    (100000, r"cannot train a 100000-piece tokenizer on these 3 sentences: Vocabulary size too high"),
])
def test_a_vocabulary_size_sentencepiece_cannot_train_is_named(tmp_path, vocab, message):
    from distill.tokenizer import train_tokenizer

    with pytest.raises(DataError, match=message):
        train_tokenizer(["the lord said", "unto moses", "and aaron"], tmp_path / "tok", vocab_size=vocab)
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("command, option", [("distill.tokenizer", "--vocab-size"), ("distill.pseudo", "--limit"),
                                             ("distill.pseudo", "--num-beams"),
                                             ("distill.pseudo", "--max-new-tokens"),
                                             ("distill.bible", "--min-test-verses")])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_below_one_are_refused_by_the_parser(tmp_path, capsys, command, option, value):
    """--limit 0 used to label every row; negative ones crashed deep inside."""
    import importlib

    argv = {"distill.tokenizer": ["--out", str(tmp_path / "o")], "distill.bible": ["--out", str(tmp_path / "o")],
            "distill.pseudo": ["--teacher", "t", "--out", str(tmp_path / "o")]}[command]
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(command).main([*argv, f"{option}={value}"])
    assert exit_.value.code == 2
    assert f"argument {option}: must be >= 1, got {value}" in capsys.readouterr().err


def test_the_bible_db_given_as_a_folder_is_named(tmp_path, capsys):
    from distill.bible import main

    with pytest.raises(SystemExit):
        main(["--db", str(tmp_path), "--out", str(tmp_path / "out")])
    assert f"--db {tmp_path} is a folder; give the bible.db file" in capsys.readouterr().err


def _pseudo_settings() -> dict:
    return {"teacher": "t", "data": "d", "name": None, "source_column": "en", "task_prefix": "",
            "num_beams": 1, "max_new_tokens": 2}


def test_a_labels_file_that_is_not_one_is_named_and_left_alone(tmp_path):
    from distill.pseudo import _check_labels_path, _read_labels

    labels = tmp_path / "labels.jsonl.gz"
    labels.write_text("not gzip")
    with pytest.raises(DataError, match=r"--labels .*labels\.jsonl\.gz is not a labels file of `python -m "
                                        r"distill\.pseudo` .*BadGzipFile.*It is left as it is"):
        _read_labels(labels, {"rows": 1})
    with gzip.open(labels, "wt") as f:
        f.write('{"no": "fingerprint"}\n')
    with pytest.raises(DataError, match="its first line holds no fingerprint"):
        _read_labels(labels, {"rows": 1})
    with pytest.raises(DataError, match=r"--labels .* is a folder; give a file name"):
        _check_labels_path(tmp_path)


def test_a_partial_file_cut_mid_line_resumes_on_its_whole_lines(tmp_path):
    from distill.pseudo import _resume

    partial = tmp_path / ".out.train.partial.jsonl"
    head = json.dumps({"settings": _pseudo_settings()}) + "\n" + json.dumps({"label": "le"}) + "\n"
    partial.write_text(head + '{"lab')
    assert _resume(partial, _pseudo_settings()) == ["le"]
    assert partial.read_text() == head  # appending continues on a whole line
    partial.write_text("garbage\n")
    assert _resume(partial, _pseudo_settings()) == []


@pytest.mark.parametrize("name, data, message", [
    ("train.csv", b"en,fr,en\nthe lord,le seigneur,x\n",
     r"the header names column 'en' more than once .*rename the second to 'en\.1' silently"),
    ("train.jsonl", b'{"en": "a", "fr": "b"}\n{"en": "the lord", "fr": "le", "en": "go"}\n',
     r"train\.jsonl, line 2: an object gives key 'en' more than once; JSON readers keep only the last one"),
    ("train.json", b'[\n  {"en": "a", "fr": "b", "fr": "c"}\n]\n',
     r"train\.json: an object gives key 'fr' more than once"),
    ("train.jsonl", b'{"en": "a", "fr": "b"}\n{"en": "caf\xe9", "fr": "b"}\n',
     r"train\.jsonl, line 2: not UTF-8 text \(byte 0xe9 at column 12\); save the file as UTF-8"),
    ("train.csv", b"en,fr\nthe lord,le seigneur\nfr\xe9e,t\xe9te\n",
     r"train\.csv, line 3: not UTF-8 text \(byte 0xe9 at column 3\)"),
])
def test_files_a_reader_would_misread_silently_are_named_with_their_line(tmp_path, name, data, message):
    from distill.data import DataConfig, load_split

    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        load_split(DataConfig(path=str(tmp_path)), "train")


def test_a_byte_order_mark_is_read_as_such(tmp_path):
    from distill.data import DataConfig, load_split

    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbfen,fr\nthe lord,le seigneur\n")
    (tmp_path / "train.jsonl").write_bytes(b'\xef\xbb\xbf{"en": "the lord", "fr": "le seigneur"}\n')
    for suffix in ("csv", "jsonl"):
        rows = load_split(DataConfig(path=str(tmp_path / f"train.{suffix}")), "train")
        assert rows[0]["en"] == "the lord"


@pytest.mark.parametrize("content, message", [
    ({"state_dict": {}, "hyper_parameters": []}, r"no pytorch-lightning_version"),
    ({"state_dict": {}, "hyper_parameters": [], "pytorch-lightning_version": "2"},
     r"hyper_parameters or state_dict not a mapping"),
])
def test_a_checkpoint_of_another_program_is_named(tmp_path, content, message):
    from distill.checkpoint import checkpoint_to_pretrained

    ckpt = tmp_path / "other.ckpt"
    torch.save(content, ckpt)
    with pytest.raises(ModelError, match=rf"is not a Lightning checkpoint of the distill module \({message}\)"):
        checkpoint_to_pretrained(ckpt, tmp_path / "out")


def test_score_keeps_files_that_are_not_its_metrics(tmp_path, capsys):
    from distill.score import _earlier_metrics, _run, main

    config = tmp_path / "config.json"
    config.write_text('{"model_type": "t5"}')
    args = type("Args", (), {"out": config, "predictions": None})()
    with pytest.raises(UserError, match=r"--out .*config\.json exists and is not the metrics of an earlier "
                                        r"`python -m distill\.score`.*left as it is"):
        _run(args, [])  # type: ignore[arg-type]
    assert config.read_text() == '{"model_type": "t5"}'
    config.write_text('{"bleu": 1, "command": "python -m distill.score --model m"}')
    assert _earlier_metrics(config)
    with pytest.raises(SystemExit):
        main(["--model", "m", "--out", str(tmp_path / "a.json"), "--predictions", str(tmp_path / "a.json")])
    assert "--out and --predictions are the same file" in capsys.readouterr().err
