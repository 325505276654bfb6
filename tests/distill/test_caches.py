"""Work done once: the per-example cache on disk, the frozen encoder's outputs and the teacher's top-k logits."""

import json

import numpy as np
import pytest
import torch
from distill_fixtures import save_tiny_teacher

from distill.distillation import DistillModule
from distill.encoder_cache import encoder_cache
from distill.errors import ModelError
from distill.example_cache import CacheError, build_cache
from distill.logit_cache import logit_cache
from distill.losses import distill_kl, topk_distill_kl


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher", tokenizer_dir)


@pytest.fixture(scope="module")
def train(dataset_dir, tokenizer_dir):
    from distill.datamodule import Seq2SeqDataModule

    data = Seq2SeqDataModule(tokenizer=str(tokenizer_dir), path=str(dataset_dir), max_tokens=400)
    data.setup("fit")
    return data


def fake_compute(calls):
    def compute(indices):
        calls.extend(indices)
        return [{"x": np.full((i % 3 + 1, 2), i, np.float16), "n": np.arange(i % 3 + 1, dtype=np.int32)}
                for i in indices]
    return compute


def test_cache_shards_resume_and_rebuild(tmp_path, capsys):
    lengths = [i % 3 + 1 for i in range(10)]
    fields = {"x": "float16", "n": "int32"}
    calls = []
    cache = build_cache(tmp_path / "c", {"v": 1}, lengths, fields, fake_compute(calls), shard_size=4, batch_rows=5)
    assert sorted(calls) == list(range(10)) and len(cache) == 10 and cache.rows(5) == 3
    assert cache.bytes == sum(f.stat().st_size for f in (tmp_path / "c").glob("shard-*/*"))
    batch = cache.batch([4, 5], 4, {"x": -1.0})
    assert batch["x"].shape == (2, 4, 2) and batch["x"][0, :2].eq(4).all() and batch["x"][0, 2:].eq(-1).all()
    assert batch["n"][1].tolist() == [0, 1, 2, 0]
    with pytest.raises(CacheError, match="belongs to other data"):
        cache.batch([5], 2, {})

    calls.clear()  # the same fingerprint: nothing computed
    build_cache(tmp_path / "c", {"v": 1}, lengths, fields, fake_compute(calls), shard_size=4)
    assert calls == [] and "matches" in capsys.readouterr().err

    # an interrupted build (no manifest, the last shard missing) computes only what is missing
    (tmp_path / "c" / "manifest.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "c" / "shard-00002")
    build_cache(tmp_path / "c", {"v": 1}, lengths, fields, fake_compute(calls), shard_size=4)
    assert sorted(calls) == [8, 9] and "resuming" in capsys.readouterr().err

    calls.clear()  # another fingerprint: rebuilt from scratch
    build_cache(tmp_path / "c", {"v": 2}, lengths, fields, fake_compute(calls), shard_size=4)
    assert sorted(calls) == list(range(10))
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["fingerprint"] == {"v": 2}

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a cache of ours"):
        build_cache(tmp_path / "mine", {"v": 1}, lengths, fields, fake_compute([]))


def test_topk_kl_is_the_full_kl_at_full_k_and_a_lower_bound_below():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 40) * 3, torch.randn(2, 5, 40) * 3
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    full = distill_kl(student, teacher, mask, 2.0)
    logprobs = torch.log_softmax(teacher / 2.0, -1)
    values = []
    for k in (40, 20, 5, 1):
        top, ids = logprobs.topk(k, -1)
        values.append(topk_distill_kl(student, top, ids, mask, 2.0))
    assert values[0] == pytest.approx(full.item(), rel=1e-4)
    assert all(v <= full + 1e-5 for v in values) and values[1] > values[3]
    same = topk_distill_kl(teacher, *logprobs.topk(8, -1), mask, 2.0)
    assert same.item() == pytest.approx(0.0, abs=1e-5)
    # padded positions hold anything finite: the gradient stays finite
    top, ids = logprobs.topk(4, -1)
    top[~mask], ids[~mask] = -1e4, 0
    grad_student = student.clone().requires_grad_(True)
    topk_distill_kl(grad_student, top, ids, mask, 2.0).backward()
    assert torch.isfinite(grad_student.grad).all() and grad_student.grad[~mask].abs().max() == 0


def test_cached_encoder_outputs_and_teacher_logits_give_the_uncached_losses(teacher_dir, train, tmp_path, capsys):
    encoded = train.encoded["train"]
    batch = next(iter(train.train_dataloader()))
    module = DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), decoder_layers=2, alpha_mlm=0.5,
                           alpha_ce=0.5, freeze_encoder=True, freeze_embeddings=True)
    module.model.eval()  # no dropout: the two paths must then agree up to the cache's rounding
    module.log = lambda *a, **k: None
    plain = module.training_step(batch, 0).item()
    module._encoder_outputs = encoder_cache(module.model, encoded.sources, tmp_path / "enc", "float16", 0)
    vocab = module.teacher.config.vocab_size
    module._teacher_logprobs = logit_cache(module.teacher, encoded.sources, encoded.targets, tmp_path / "kd", vocab,
                                           module.hparams.temperature, "float16", 0)
    cached = module.training_step(batch, 0)
    assert cached.item() == pytest.approx(plain, rel=2e-3)
    cached.backward()  # the decoder learns through the cached path
    assert module.model.decoder.block[0].layer[0].SelfAttention.q.weight.grad is not None
    assert module.model.encoder.block[0].layer[0].SelfAttention.q.weight.grad is None
    assert "wrote" in capsys.readouterr().err
    # sources repeated (gold and pseudo-label targets mixed) share the cache: each distinct source is kept once
    doubled = encoder_cache(module.model, encoded.sources * 2, tmp_path / "enc", "float16", 0)
    assert "matches" in capsys.readouterr().err and len(doubled.cache) <= len(encoded.sources)
    n = len(encoded.sources)
    assert torch.equal(doubled.batch([n + 3], 50), module._encoder_outputs.batch([3], 50))

    # the encoder's weights are part of the fingerprint: other weights, another cache
    with torch.no_grad():
        module.model.encoder.final_layer_norm.weight.mul_(2)
    encoder_cache(module.model, encoded.sources, tmp_path / "enc", "bfloat16", 0)
    assert "rebuilding" in capsys.readouterr().err
    with pytest.raises(ModelError, match="logit_cache_k"):
        logit_cache(module.teacher, encoded.sources, encoded.targets, tmp_path / "kd", vocab + 1, 2.0, "float16", 0)


@pytest.mark.parametrize(("options", "flag"), [
    ({"encoder_cache": "c"}, "model.freeze_encoder"),
    ({"encoder_cache": "c", "freeze_encoder": True}, "model.freeze_embeddings"),
    ({"encoder_cache": "c", "freeze_encoder": True, "freeze_embeddings": True, "freeze_until_step": 5},
     "model.freeze_until_step"),
    ({"logit_cache": "c"}, "model.alpha_ce"),
    ({"logit_cache": "c", "alpha_ce": 1.0, "logit_cache_k": 0}, "model.logit_cache_k"),
    ({"logit_cache": "c", "alpha_ce": 1.0, "cache_dtype": "float32"}, "model.cache_dtype"),
    ({"logit_cache": "c", "alpha_ce": 1.0, "encoder_cache": "c", "freeze_encoder": True, "freeze_embeddings": True},
     "same folder"),
])
def test_cache_options_are_checked(teacher_dir, options, flag):
    with pytest.raises(ModelError, match=flag):
        DistillModule(teacher=str(teacher_dir), tokenizer=str(teacher_dir), **options)
