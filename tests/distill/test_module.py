import itertools
import math

import pytest
import torch

from distill.module import ModelError, Seq2SeqModule, load_t5, lr_lambda, score

TINY = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16,
        "dropout_rate": 0.0}
# t5 v1.0 (relu, tied embeddings: decoder output scaled by d_model**-0.5) and v1.1 / flan style (gated-gelu, untied)
CLASSIC = {**TINY, "feed_forward_proj": "relu", "tie_word_embeddings": True}
UNTIED = {**TINY, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def test_lr_schedule_warms_up_then_decays():
    values = [lr_lambda(s, 10, 100, "linear", 0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))
    assert values[-1] == pytest.approx(0.1, abs=0.02)
    assert lr_lambda(99, 10, 100, "cosine", 0.0) == pytest.approx(0.0, abs=1e-3)
    assert lr_lambda(39, 10, 100, "inverse_sqrt", 0.0) == pytest.approx(math.sqrt(10 / 40))


def test_score_bleu_multi_reference_and_rouge():
    perfect = score(["le roi dit au peuple de partir"], [["le roi dit au peuple de partir"]], "bleu")
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    single = score(["le roi parla au peuple de partir"], [["le roi dit au peuple de partir"]], "bleu")
    multi = score(["le roi parla au peuple de partir"],
                  [["le roi dit au peuple de partir", "le roi parla au peuple de partir"]], "bleu")
    assert multi["bleu"] > single["bleu"]
    rouge = score(["the cats sat"], [["the cat sat"]], "rouge")
    assert rouge["rouge1"] == pytest.approx(100)  # stemming: cats -> cat
    assert set(rouge) == {"rouge1", "rouge2", "rougeL"}


@pytest.mark.parametrize("config", [CLASSIC, UNTIED], ids=["t5-relu-tied", "t5v1.1-gated-untied"])
def test_module_learns_a_batch(tokenizer_dir, dataset_dir, config):
    from distill.data import Seq2SeqDataModule

    torch.manual_seed(0)
    module = Seq2SeqModule(tokenizer=str(tokenizer_dir), model_config=config, learning_rate=3e-3, warmup_steps=1)
    assert module.model.training  # dropout on while training
    # transformers 5.x keeps tie_word_embeddings True and records v1.1's unscaled output as scale_decoder_outputs
    assert module.model.config.scale_decoder_outputs is config["tie_word_embeddings"]
    assert (module.model.lm_head.weight is module.model.shared.weight) is config["tie_word_embeddings"]
    assert module.model.config.task_specific_params["translation_en_to_fr"]["prefix"].startswith("translate")
    data = Seq2SeqDataModule(tokenizer=str(tokenizer_dir), path=str(dataset_dir), max_tokens=512)
    data.pad_id = 0
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = _loss(module, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def _loss(module, batch):
    logits = module(batch)  # (B, T, V)
    assert logits.shape[:2] == batch["labels"].shape
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


def test_exactly_one_of_model_and_config(tokenizer_dir):
    with pytest.raises(ModelError, match="exactly one"):
        Seq2SeqModule(tokenizer=str(tokenizer_dir))
    with pytest.raises(ModelError, match="exactly one"):
        Seq2SeqModule(tokenizer=str(tokenizer_dir), model="x", model_config=TINY)


def test_unknown_model_config_key_is_named(tokenizer_dir):
    with pytest.raises(ModelError, match="d_modle"):
        Seq2SeqModule(tokenizer=str(tokenizer_dir), model_config={**TINY, "d_modle": 8})


def test_non_t5_model_is_refused(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32)
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    with pytest.raises(ModelError, match=r"'bart' model.*T5-family"):
        load_t5(str(tmp_path / "bart"))


def test_missing_local_model_folder_is_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_t5(str(tmp_path / "missing"))


def test_hub_id_while_offline_says_hub_unreachable(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelError, match=r"(?s)'t5-small'.*hub may be unreachable.*local folder"):
        load_t5("t5-small")
    from distill.module import load_tokenizer

    with pytest.raises(ModelError, match=r"(?s)tokenizer 't5-small'.*hub may be unreachable"):
        load_tokenizer("t5-small")


def test_checkpoint_that_is_missing_or_foreign_is_named(tmp_path):
    from distill.checkpoint import checkpoint_to_pretrained

    with pytest.raises(ModelError, match="does not exist"):
        checkpoint_to_pretrained(tmp_path / "none.ckpt", tmp_path / "out")
    torch.save({"weights": 1}, tmp_path / "other.ckpt")
    with pytest.raises(ModelError, match="not a Lightning checkpoint"):
        checkpoint_to_pretrained(tmp_path / "other.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizer_choice_and_schedule(tokenizer_dir, name):
    from types import SimpleNamespace

    from transformers.optimization import Adafactor

    module = Seq2SeqModule(tokenizer=str(tokenizer_dir), model_config=CLASSIC, optimizer=name, learning_rate=1e-2,
                           warmup_steps=4)
    module.trainer = SimpleNamespace(estimated_stepping_batches=20)
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, Adafactor if name == "adafactor" else torch.optim.AdamW)
    norms = {p for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert all(p.ndim < 2 for p in norms)  # no weight decay on layer norms
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2 / 4)  # warm-up from step 0
