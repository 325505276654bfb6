import pytest
import torch

from distill.errors import ModelError
from distill.module import Seq2SeqModule

TINY = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16,
        "dropout_rate": 0.0}
# t5 v1.0 (relu, tied embeddings: decoder output scaled by d_model**-0.5) and v1.1 / flan style (gated-gelu, untied)
CLASSIC = {**TINY, "feed_forward_proj": "relu", "tie_word_embeddings": True}
UNTIED = {**TINY, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


@pytest.mark.parametrize("config", [CLASSIC, UNTIED], ids=["t5-relu-tied", "t5v1.1-gated-untied"])
def test_module_learns_a_batch(tokenizer_dir, dataset_dir, config):
    from distill.datamodule import Seq2SeqDataModule

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
