"""The published configurations as data, and random-weight models built from them (nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch

from distill.errors import ModelError
from distill.models import load_t5, load_tokenizer
from distill.published import build_model, main, parameter_bytes, published_names, read_config, write_random_model

TINY = {"num_layers": 2, "num_decoder_layers": 1, "d_model": 16, "d_ff": 24, "num_heads": 2, "d_kv": 8,
        "vocab_size": 700}
# published parameter counts (each model card / the T5 and mT5 papers), in millions
PUBLISHED_MILLIONS = {"t5-small": 60.5, "t5-base": 222.9, "t5-large": 737.7, "t5-3b": 2851.6, "flan-t5-base": 247.6,
                      "flan-t5-large": 783.2, "mt5-small": 300.2, "mt5-base": 582.4, "mt5-large": 1229.6}


def test_every_shape_is_there_and_sized_as_published():
    assert set(published_names()) >= {*PUBLISHED_MILLIONS, "flan-t5-xl"}
    for name, millions in PUBLISHED_MILLIONS.items():
        assert parameter_bytes(read_config(name)) / 4e6 == pytest.approx(millions, abs=0.1), name


@pytest.mark.parametrize("name", ["t5-base", "flan-t5-large", "mt5-small"])
def test_the_size_formula_counts_what_transformers_builds(name):
    fields = read_config(name, **TINY)
    model = build_model(fields)
    assert sum(p.numel() for p in model.parameters()) * 4 == parameter_bytes(fields)
    assert (model.lm_head.weight is model.shared.weight) is (name == "t5-base")


@pytest.mark.parametrize("name", ["flan-t5-base", "mt5-base"])
def test_untied_models_round_trip_through_the_loader(name, tmp_path):
    out = write_random_model(name, tmp_path / name, **TINY)
    model, tokenizer = load_t5(str(out)), load_tokenizer(str(out))
    assert model.lm_head.weight is not model.shared.weight  # saved untied, loaded untied
    assert model.config.model_type == read_config(name)["model_type"]
    assert len(tokenizer) == TINY["vocab_size"]
    encoded = tokenizer("Élodie dit : « bonjour » à 9 h.").input_ids
    assert tokenizer.unk_token_id not in encoded and encoded[-1] == tokenizer.eos_token_id
    with torch.no_grad():  # mT5's config has no scale_decoder_outputs: the loader picks the mT5 class
        generated = model.generate(torch.tensor([encoded]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 4)
    assert json.loads((out / "random_meta.json").read_text())["overrides"]["d_model"] == 16


def test_unknown_names_are_refused_with_the_choices(tmp_path, capsys):
    with pytest.raises(ModelError, match="mt5-small"):
        read_config("t5-11b")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", "t5-11b", "--out", str(tmp_path / "m")])
    assert exit_.value.code == 2 and "choose one of" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
