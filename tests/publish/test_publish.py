"""`python -m publish`: the staged hub folder, its model card, its load-back check, the refusals and the token."""

from __future__ import annotations

import json
import shutil

import pytest

from publish.__main__ import run
from publish.check import check_staged
from publish.errors import PublishError

FAKE_TOKEN = "hf_" + "FakeTokenNeverToBeWritten0123456789"


def _argv(inputs, out, *extra, repo_id="someone/tiny-t5-6-2"):
    return ["--model", str(inputs["student"]), "--onnx", str(inputs["onnx"]), "--results", str(inputs["results"]),
            "--repo-id", repo_id, "--out", str(out), *extra]


def test_a_dry_run_stages_a_folder_that_loads_with_a_card_holding_the_measured_numbers(tmp_path, inputs, monkeypatch,
                                                                                        capsys):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "staged"
    run(_argv(inputs, out))

    printed = capsys.readouterr().out
    assert "dry run: nothing uploaded" in printed and str(out) in printed
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for name in ("README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "distill_meta.json", "onnx/encoder_model.onnx", "onnx/decoder_model.onnx",
                 "onnx/decoder_with_past_model.onnx", "onnx/encoder_model_quantized.onnx",
                 "onnx/decoder_model_quantized.onnx", "onnx/decoder_with_past_model_quantized.onnx",
                 "onnx/encoder_model_q4.onnx", "onnx/encoder_model_q4.onnx_data", "onnx/decoder_model_merged_q4.onnx",
                 "onnx/decoder_shared_cache_model_quantized.onnx", "onnx/decoder_shared_cache_one_row_quantized.onnx",
                 "onnx/config.json", "onnx/tokenizer.json", "onnx/export_meta.json"):
        assert name in names, name

    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["language"] == ["en", "fr"]
    assert {"t5", "distillation", "onnx"} <= set(data["tags"])
    assert "base_model" not in data  # the teacher is a local folder, not a hub id: named in the body instead
    scores = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert scores[("bleu", "BLEU")] == 28.0 and scores[("chrf", "chrF")] == 48.0  # the student's results.json row
    assert scores[("bleu", "BLEU (ONNX int8)")] == 26.5 and scores[("bleu", "BLEU (ONNX fp32)")] == 27.0
    assert scores[("bleu", "BLEU (ONNX int4)")] == 25.5 and "| student-onnx-int4 | onnx int4 | 25.50 |" in card.text
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert "`models/teacher`" in card.text and "decoder [0, 1]" in card.text and "1500 optimizer steps" in card.text
    assert "| student-torch | torch | 28.00 | 48.00 |" in card.text  # quality and speed table
    assert "OnnxT5.from_pretrained" in card.text and "T5ForConditionalGeneration.from_pretrained" in card.text

    # nothing of this machine or of the token leaves it
    staged_bytes = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert FAKE_TOKEN.encode() not in staged_bytes and FAKE_TOKEN not in printed
    assert b"/secret/machine/path" not in staged_bytes
    assert json.loads((out / "onnx" / "export_meta.json").read_text())["source"] == "someone/tiny-t5-6-2"

    # the staged folder itself loads and generates with both runtimes, the ONNX tokens equal to transformers'
    tokens = check_staged(out, "translate English to French: ")
    assert tokens["onnx"] == tokens["transformers"] and len(tokens["onnx-int8"]) > 1 and len(tokens["onnx-int4"]) > 1


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "/name", "name space/x", "ns/"])
def test_a_repo_id_that_is_not_namespace_name_is_refused(tmp_path, inputs, repo_id):
    with pytest.raises(PublishError, match="is not `namespace/name`"):
        run(_argv(inputs, tmp_path / "staged", repo_id=repo_id))
    assert not (tmp_path / "staged").exists()


def test_missing_evaluation_results_are_refused(tmp_path, inputs):
    inputs["results"] = tmp_path / "nowhere" / "results.json"
    with pytest.raises(PublishError, match=r"results\.json does not exist.*make eval"):
        run(_argv(inputs, tmp_path / "staged"))
    assert not (tmp_path / "staged").exists()


def test_results_that_do_not_hold_the_student_are_refused(tmp_path, inputs):
    results = json.loads(inputs["results"].read_text())
    del results["variants"]["student-torch"]
    inputs["results"].write_text(json.dumps(results))
    with pytest.raises(PublishError, match="holds no torch variant at"):
        run(_argv(inputs, tmp_path / "staged"))


def test_an_export_without_int8_graphs_is_refused(tmp_path, inputs):
    onnx = tmp_path / "fp32-only"
    shutil.copytree(inputs["onnx"], onnx)
    (onnx / "decoder_model_quantized.onnx").unlink()
    inputs["onnx"] = onnx
    with pytest.raises(PublishError, match=r"lacks decoder_model_quantized\.onnx.*make export"):
        run(_argv(inputs, tmp_path / "staged"))
    assert not (tmp_path / "staged").exists() and not list(tmp_path.glob(".staged.tmp.*"))


def test_graphs_of_other_weights_are_refused(tmp_path, inputs):
    """The ONNX graphs must be the student's: weights changed after the export make the load-back check fail."""
    import torch
    from transformers import T5ForConditionalGeneration

    student = tmp_path / "retrained"
    shutil.copytree(inputs["student"], student)
    model = T5ForConditionalGeneration.from_pretrained(student)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(student)
    results = json.loads(inputs["results"].read_text())
    results["variants"]["student-torch"]["path"] = str(student)
    inputs["results"].write_text(json.dumps(results))
    inputs["student"] = student
    with pytest.raises(PublishError, match="generate other tokens than the PyTorch weights"):
        run(_argv(inputs, tmp_path / "staged"))
    assert not (tmp_path / "staged").exists()


def test_push_without_a_token_is_refused(tmp_path, inputs, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    with pytest.raises(PublishError, match=r"no Hugging Face token\. Set HF_TOKEN"):
        run(_argv(inputs, tmp_path / "staged", "--push"))


def test_push_without_a_network_fails_clearly_and_never_shows_the_token(tmp_path, inputs, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(PublishError) as err:
        run(_argv(inputs, tmp_path / "staged", "--push"))
    assert "cannot reach the hub" in str(err.value) and FAKE_TOKEN not in str(err.value)
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err
    assert (tmp_path / "staged" / "README.md").is_file()  # staged and checked before the push was tried
