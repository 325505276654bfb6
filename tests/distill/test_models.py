import pytest

from distill.errors import ModelError
from distill.models import load_t5, load_tokenizer


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
    with pytest.raises(ModelError, match=r"(?s)tokenizer 't5-small'.*hub may be unreachable"):
        load_tokenizer("t5-small")
