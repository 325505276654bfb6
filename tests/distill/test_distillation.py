import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from distill.distillation import DistillModule
from distill.errors import ModelError


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = T5Config(vocab_size=96, d_model=32, d_ff=48, d_kv=8, num_heads=4, num_layers=3, num_decoder_layers=4,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    model = T5ForConditionalGeneration(config)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def batch(dataset_dir, tokenizer_dir):
    from distill.datamodule import Seq2SeqDataModule

    data = Seq2SeqDataModule(tokenizer=str(tokenizer_dir), path=str(dataset_dir), max_tokens=400)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_kd_with_hidden_loss_trains_the_student_only(teacher_dir, dataset_dir, tokenizer_dir):
    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), decoder_layers=2, alpha_mlm=0.2,
                           alpha_ce=0.8, alpha_hid=3.0)
    assert module.layer_maps == {"encoder": [0, 1, 2], "decoder": [0, 3]}
    assert module.pairs == {"decoder": [(0, 2), (1, 3)]}
    assert not any(p.requires_grad for p in module.teacher.parameters()) and not module.teacher.training
    assert module.model.training
    assert not any(k.startswith("teacher") for k in module.state_dict())  # teacher stays out of checkpoints
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    b = batch(dataset_dir, tokenizer_dir)
    optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=3e-3)
    module.log = lambda *a, **k: None  # no trainer attached
    losses = []
    for _ in range(15):
        loss = module.training_step(b, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, teacher_before[k]) for k, v in module.teacher.state_dict().items())


def test_student_with_teacher_weights_has_zero_kl(teacher_dir, dataset_dir, tokenizer_dir):
    """Copying every layer gives the teacher itself: KL and hidden loss vanish (a check of the loss wiring)."""
    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), decoder_layers=None, alpha_mlm=0.0,
                           alpha_ce=1.0, alpha_hid=1.0, hidden_pairs={"decoder": [[0, 0], [3, 3]]})
    module.model.eval()
    module.log = lambda *a, **k: None
    assert module.training_step(batch(dataset_dir, tokenizer_dir), 0).item() == pytest.approx(0.0, abs=1e-5)


def test_teacher_without_lm_head_gives_the_full_models_hidden_states(teacher_dir, dataset_dir, tokenizer_dir):
    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), alpha_mlm=1.0, alpha_hid=1.0)
    inputs = module.model_inputs(batch(dataset_dir, tokenizer_dir))
    full = module._teacher_forward(inputs, need_logits=True, need_hidden=True)
    stacks = module._teacher_forward(inputs, need_logits=False, need_hidden=True)
    for name in ("encoder_hidden_states", "decoder_hidden_states"):
        expected, got = getattr(full, name), getattr(stacks, name)
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_freezing_options(teacher_dir):
    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), freeze_embeddings=True,
                           freeze_encoder=True)
    assert not module.model.shared.weight.requires_grad
    assert not any(p.requires_grad for p in module.model.encoder.parameters())
    assert all(p.requires_grad for p in module.model.decoder.block.parameters())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha_mlm": 0.0}, "not all 0"), ({"temperature": 0.0}, "temperature"),
    ({"alpha_hid": 1.0, "decoder_layers": None}, "no stack was shrunk"),
    ({"alpha_hid": 1.0, "hidden_pairs": {"decoder": [[0, 9]]}}, "teacher 0..3"),
    ({"decoder_layers": 5}, "between 1 and 4"),
    ({"freeze_until_step": 10}, "needs freeze_encoder or freeze_embeddings"),
    ({"freeze_until_step": 0, "freeze_encoder": True}, "must be >= 1"),
])
def test_bad_recipes_are_named(teacher_dir, kwargs, message):
    with pytest.raises(ModelError, match=message):
        DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), **kwargs)


def test_saved_student_names_its_teacher_and_recipe(teacher_dir, tmp_path):
    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), alpha_ce=0.5, alpha_mlm=0.5)
    out = module.save_pretrained(tmp_path / "student", {"train_meta.json": {"global_step": 3}})
    meta = json.loads((out / "distill_meta.json").read_text())
    assert meta["teacher"] == str(teacher_dir) and meta["layers_copied"]["decoder"] == [0, 3]
    assert meta["recipe"]["alpha_ce"] == 0.5 and meta["training"]["global_step"] == 3
    assert meta["student_layers"] == {"encoder": 3, "decoder": 2} and meta["teacher_layers"]["decoder"] == 4
    assert json.loads((out / "train_meta.json").read_text()) == {"global_step": 3}
    student = T5ForConditionalGeneration.from_pretrained(out)
    assert student.config.num_decoder_layers == 2 and student.config.num_layers == 3
    assert not student.config.scale_decoder_outputs  # untied teacher -> untied student


def test_a_students_checkpoint_converts_to_a_student_folder(teacher_dir, tmp_path):
    """`python -m distill.checkpoint` on a DistillModule checkpoint (as LightningCLI writes it): the trained weights,
    not a fresh copy of the teacher's, and the student's distill_meta.json."""
    import lightning

    from distill.checkpoint import checkpoint_to_pretrained

    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), decoder_layers=1)
    with torch.no_grad():
        module.model.decoder.block[0].layer[0].SelfAttention.q.weight.add_(1.0)  # as if trained
    hparams = {**module.hparams, "_class_path": "distill.distillation.DistillModule",
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 7,
                  "pytorch-lightning_version": lightning.__version__}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    out = checkpoint_to_pretrained(tmp_path / "last.ckpt", tmp_path / "student")
    student = T5ForConditionalGeneration.from_pretrained(out)
    trained = module.model.decoder.block[0].layer[0].SelfAttention.q.weight
    assert torch.equal(student.decoder.block[0].layer[0].SelfAttention.q.weight, trained)
    meta = json.loads((out / "distill_meta.json").read_text())
    assert meta["layers_copied"]["decoder"] == [0] and meta["training"]["global_step"] == 7

    torch.save({**checkpoint, "hyper_parameters": {**hparams, "_class_path": "os.system"}}, tmp_path / "other.ckpt")
    with pytest.raises(ModelError, match=r"trained by os\.system"):
        checkpoint_to_pretrained(tmp_path / "other.ckpt", tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_freeze_until_step_thaws_the_frozen_parts_at_that_step(teacher_dir, dataset_dir):
    """One Lightning run: the decoder trains from step 1, the encoder and embeddings from step 2 on."""
    from itertools import pairwise

    import lightning as L

    from distill.datamodule import Seq2SeqDataModule

    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), decoder_layers=1,
                           freeze_encoder=True, freeze_embeddings=True, freeze_until_step=2, warmup_steps=0)
    watched = {"encoder": module.model.encoder.block[1].layer[1].DenseReluDense.wo.weight,
               "embedding": module.model.shared.weight,
               "decoder": module.model.decoder.block[0].layer[2].DenseReluDense.wo.weight}
    seen = [{k: v.detach().clone() for k, v in watched.items()}]

    class Snapshot(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            seen.append({k: v.detach().clone() for k, v in watched.items()})

    data = Seq2SeqDataModule(tokenizer=str(teacher_dir), path=str(dataset_dir), max_tokens=400)
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Snapshot()],
                        accelerator="cpu", use_distributed_sampler=False)
    trainer.fit(module, data)
    moved = [{k: not torch.equal(after[k], before[k]) for k in watched} for before, after in pairwise(seen)]
    assert moved[:2] == [{"encoder": False, "embedding": False, "decoder": True}] * 2  # steps 0 and 1: frozen
    assert moved[2:] == [{"encoder": True, "embedding": True, "decoder": True}] * 2  # from global step 2 on
    assert all(p.requires_grad for p in module.model.parameters())


def test_freeze_until_step_refuses_ddp(teacher_dir):
    from types import SimpleNamespace

    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), freeze_encoder=True,
                           freeze_until_step=5)
    module._trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ModelError, match="one process only"):
        module.on_fit_start()
