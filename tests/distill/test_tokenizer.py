from transformers import AutoTokenizer

from distill.errors import DataError
from distill.tokenizer import train_tokenizer


def test_tokenizer_folder_loads_with_t5_special_ids(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tok) == 96
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    text = "le seigneur dit à moïse"
    ids = tok(text).input_ids
    assert ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == text
    assert (tokenizer_dir / "tokenizer.json").is_file() and (tokenizer_dir / "spiece.model").is_file()


def test_empty_training_text_is_refused(tmp_path):
    import pytest

    with pytest.raises(DataError, match="empty"):
        train_tokenizer(["", "  "], tmp_path / "tok", vocab_size=50)
    assert not (tmp_path / "tok").exists()
