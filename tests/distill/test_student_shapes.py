"""`python -m distill.student` on the shapes of flan-t5-large (24 -> 6 and 24 -> 3 decoder layers) and mt5-base
(12 + 12, large vocabulary): gated-gelu, untied lm_head, no output scaling. Tiny widths, the real depths and kinds.
The real sizes run in `python -m bench.student_shapes`."""

import json

import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from distill.student import main

# the published kinds at tiny widths: flan-t5-large 24 + 24, mt5-base 12 + 12 with a vocabulary past the tokenizer's
SHAPES = {
    "flan-t5-large": {"num_layers": 24, "num_decoder_layers": 24, "vocab_size": 128},
    "mt5-base": {"num_layers": 12, "num_decoder_layers": 12, "vocab_size": 1000},
}


def untied_teacher(path, tokenizer_dir, shape):
    """A v1.1-style T5 saved untied: its own lm_head, dropped from the tied keys before saving (transformers 5.x
    ties every T5 it builds)."""
    torch.manual_seed(0)
    config = T5Config(d_model=16, d_ff=24, d_kv=4, num_heads=2, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      **SHAPES[shape])
    model = T5ForConditionalGeneration(config)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return T5ForConditionalGeneration.from_pretrained(path)


@pytest.mark.parametrize(("shape", "layers", "copied"), [
    ("flan-t5-large", 6, [0, 5, 9, 14, 18, 23]),
    ("flan-t5-large", 3, [0, 12, 23]),
    ("mt5-base", 12, list(range(12))),
])
def test_student_of_an_untied_gated_teacher(tmp_path, tokenizer_dir, shape, layers, copied):
    teacher = untied_teacher(tmp_path / "teacher", tokenizer_dir, shape)
    assert teacher.lm_head.weight is not teacher.shared.weight
    main(["--teacher", str(tmp_path / "teacher"), "--decoder-layers", str(layers), "--out", str(tmp_path / "s")])
    student = T5ForConditionalGeneration.from_pretrained(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "distill_meta.json").read_text())
    assert meta["layers_copied"] == {"encoder": list(range(teacher.config.num_layers)), "decoder": copied}
    assert student.config.num_decoder_layers == layers and student.config.is_gated_act
    assert student.config.scale_decoder_outputs is False  # untied: no d_model ** -0.5 before lm_head
    assert student.lm_head.weight is not student.shared.weight
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert torch.equal(student.shared.weight, teacher.shared.weight)
    assert student.encoder.embed_tokens.weight is student.shared.weight
    for new, old in enumerate(copied):
        assert torch.equal(student.decoder.block[new].layer[2].DenseReluDense.wi_0.weight,
                           teacher.decoder.block[old].layer[2].DenseReluDense.wi_0.weight)
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 1]]), "decoder_input_ids": torch.tensor([[0, 5, 6]])}
    if layers == teacher.config.num_decoder_layers:  # every layer copied: the teacher itself
        assert torch.equal(student(**inputs).logits, teacher(**inputs).logits)


def test_a_tied_teachers_student_stays_tied(tmp_path, tokenizer_dir):
    from distill_fixtures import save_tiny_teacher

    from distill.student import make_student

    teacher = T5ForConditionalGeneration.from_pretrained(save_tiny_teacher(tmp_path / "t", tokenizer_dir))
    student, _ = make_student(teacher, decoder_layers=1)
    assert student.lm_head.weight is student.shared.weight is student.decoder.embed_tokens.weight
    assert student.shared.weight.data_ptr() != teacher.shared.weight.data_ptr()  # a copy: training leaves the teacher
