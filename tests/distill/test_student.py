import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from distill.errors import ModelError
from distill.student import layers_to_copy, make_student, save_student


def teacher(enc: int = 4, dec: int = 4, untied: bool = False, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=64, d_model=24, d_ff=40, d_kv=6, num_heads=4, num_layers=enc, num_decoder_layers=dec,
                      feed_forward_proj="gated-gelu" if untied else "relu", tie_word_embeddings=not untied,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(config)
    if untied:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    return model.eval()


def block(model, stack: str, i: int) -> dict[str, torch.Tensor]:
    return {k: v for k, v in getattr(model, stack).block[i].state_dict().items() if "relative_attention_bias" not in k}


@pytest.mark.parametrize(("n_teacher", "n_student", "expected"), [
    (12, 6, [0, 2, 4, 7, 9, 11]), (12, 3, [0, 6, 11]), (12, 2, [0, 6]), (6, 2, [0, 5]), (6, 1, [0]),
    (16, 4, [0, 5, 10, 15]), (8, 3, [0, 4, 7]), (5, 3, [0, 2, 4]), (24, 2, [0, 23]), (7, 7, list(range(7))),
])
def test_layers_to_copy_follows_the_table_then_spacing(n_teacher, n_student, expected):
    assert layers_to_copy(n_teacher, n_student) == expected


@pytest.mark.parametrize("n_student", [0, 7])
def test_impossible_depths_are_refused(n_student):
    with pytest.raises(ModelError, match="between 1 and 6"):
        layers_to_copy(6, n_student)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"decoder_map": [0, 0]}, "repeats"), ({"decoder_map": [0, 9]}, "layers 0..3"),
    ({"decoder_map": [0, 1, 2], "decoder_layers": 2}, "3 entries for a 2-layer"), ({"encoder_map": []}, "empty"),
])
def test_bad_maps_are_refused(kwargs, message):
    with pytest.raises(ModelError, match=message):
        make_student(teacher(), **kwargs)


@pytest.mark.parametrize("untied", [False, True], ids=["t5-relu-tied", "t5v1.1-gated-untied"])
def test_student_copies_the_mapped_layers(untied, tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    big = teacher(enc=5, dec=4, untied=untied)
    before = {k: v.clone() for k, v in big.state_dict().items()}
    student, maps = make_student(big, decoder_layers=2, encoder_layers=3)
    assert maps == {"encoder": [0, 2, 4], "decoder": [0, 3]}
    assert (student.config.num_layers, student.config.num_decoder_layers) == (3, 2)
    for stack in ("encoder", "decoder"):
        for new, old in enumerate(maps[stack]):
            expected = block(big, stack, old)
            assert all(torch.equal(v, expected[k]) for k, v in block(student, stack, new).items())
    assert torch.equal(student.shared.weight, big.shared.weight)
    assert torch.equal(student.lm_head.weight, big.lm_head.weight)
    assert (student.lm_head.weight is student.shared.weight) is not untied
    assert student.config.scale_decoder_outputs is not untied
    assert all(torch.equal(v, before[k]) for k, v in big.state_dict().items())  # the teacher is untouched

    out = save_student(student, maps, big, "teacher-dir", AutoTokenizer.from_pretrained(tokenizer_dir),
                       tmp_path / "student")
    meta = json.loads((out / "distill_meta.json").read_text())
    assert meta["layers_copied"] == maps and meta["teacher_layers"] == {"encoder": 5, "decoder": 4}
    reloaded = T5ForConditionalGeneration.from_pretrained(out).eval()
    assert reloaded.config.scale_decoder_outputs is not untied
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    with torch.no_grad():
        a = student.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=6, do_sample=False)
        b = reloaded.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b) and a.shape[0] == 2


def test_block_zero_always_gets_the_relative_attention_bias():
    big = teacher(dec=4)
    student, maps = make_student(big, decoder_map=[2, 3])
    bias = "layer.0.SelfAttention.relative_attention_bias.weight"
    assert torch.equal(student.decoder.block[0].state_dict()[bias], big.decoder.block[0].state_dict()[bias])
    assert all(torch.equal(v, block(big, "decoder", 2)[k]) for k, v in block(student, "decoder", 0).items())
    assert maps["decoder"] == [2, 3] and maps["encoder"] == [0, 1, 2, 3]


def test_command_refuses_a_non_t5_model(tmp_path, capsys):
    from transformers import BartConfig, BartForConditionalGeneration

    from distill.student import main

    config = BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32)
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    capsys.readouterr()  # the progress bar of save_pretrained
    with pytest.raises(SystemExit) as exit_info:
        main(["--teacher", str(tmp_path / "bart"), "--decoder-layers", "1", "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m distill.student: error: ") and "T5-family" in err
    assert not (tmp_path / "s").exists()
