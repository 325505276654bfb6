import json

import pytest
import torch

from distill.batching import TokenBatchSampler, collate
from distill.data import DataConfig, encode, load_split
from distill.errors import DataError


def test_local_jsonl_and_csv_load_with_configured_columns(tmp_path, dataset_dir):
    train = load_split(DataConfig(path=str(dataset_dir), extra_columns=["fr_darby"]), "train")
    assert len(train) > 50 and {"en", "fr", "fr_darby"} <= set(train.column_names)
    (tmp_path / "test.csv").write_text("src,tgt\nhello,bonjour\n")
    rows = load_split(DataConfig(path=str(tmp_path), source_column="src", target_column="tgt"), "test")
    assert rows[0] == {"src": "hello", "tgt": "bonjour"}


def test_dotted_columns_read_nested_translation_fields(tmp_path):
    row = {"translation": {"en": "hello", "ro": "salut"}}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    data = load_split(DataConfig(path=str(tmp_path), source_column="translation.en",
                                 target_column="translation.ro"), "train")
    assert data[0]["translation.en"] == "hello" and data[0]["translation.ro"] == "salut"


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*make data"):
        load_split(DataConfig(path=str(tmp_path / "nope")), "train")


def test_missing_split_file_lists_what_is_there(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"en": "a", "fr": "b"}\n')
    with pytest.raises(DataError, match=r"No file for split 'test'.*train.jsonl"):
        load_split(DataConfig(path=str(tmp_path)), "test")


def test_missing_column_names_column_and_available_ones(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"english": "a", "fr": "b"}\n')
    with pytest.raises(DataError, match=r"no column 'en'.*english"):
        load_split(DataConfig(path=str(tmp_path)), "train")


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "train.csv").write_text("en,fr\n")
    with pytest.raises(DataError, match="empty"):
        load_split(DataConfig(path=str(tmp_path)), "train")


def test_unreachable_hub_says_so_and_suggests_local(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wmt16' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"(?s)hub may be unreachable.*local folder"):
        load_split(DataConfig(path="wmt16", name="ro-en"), "train")


def test_encode_adds_prefix_and_eos(dataset_dir, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = DataConfig(path=str(dataset_dir), extra_columns=["fr_darby"])
    data = load_split(config, "test")
    enc = encode(data, tok, config, 64, 64)
    assert enc.source_texts[0].startswith("translate English to French: ")
    assert all(s[-1] == tok.eos_token_id for s in enc.sources) and all(t[-1] == tok.eos_token_id for t in enc.targets)
    assert enc.references[0] == [data[0]["fr"], data[0]["fr_darby"]]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_token_batches_cover_everything_once_within_budget(world_size):
    lengths = [(i * 7919) % 50 + 3 for i in range(500)]
    per_rank = [list(TokenBatchSampler(lengths, 256, seed=5, rank=r, world_size=world_size))
                for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1  # every rank steps the same number of times
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # no example twice
    if world_size == 1:
        assert sorted(seen) == list(range(500))
    for batches in per_rank:
        for batch in batches:
            assert max(lengths[i] for i in batch) * len(batch) <= 256


def test_token_batches_reshuffle_per_epoch_and_repeat_per_seed():
    lengths = [(i * 31) % 40 + 2 for i in range(300)]
    sampler = TokenBatchSampler(lengths, 200, seed=1)
    first = list(sampler)
    assert first == list(TokenBatchSampler(lengths, 200, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != first
    ordered = list(TokenBatchSampler(lengths, 200, shuffle=False))
    flat = [lengths[i] for b in ordered for i in b]
    assert flat == sorted(flat)


def test_token_budget_below_longest_example_is_an_error():
    with pytest.raises(ValueError, match="longest example"):
        TokenBatchSampler([10, 500], 100)


def test_collate_pads_sources_and_masks_labels():
    batch = collate([{"index": 0, "input_ids": [5, 6, 1], "labels": [7, 1], "references": ["a"]},
                     {"index": 1, "input_ids": [5, 1], "labels": [8, 9, 1], "references": ["b"]}])
    assert batch["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 1, -100], [8, 9, 1]]
    assert batch["index"].dtype == torch.long and batch["references"] == [["a"], ["b"]]


def test_resumable_loader_continues_where_the_epoch_stopped():
    from distill.batching import EncodedDataset, ResumableLoader
    from distill.data import Encoded

    lengths = [(i * 13) % 20 + 2 for i in range(200)]
    encoded = Encoded([[5] * (n // 2) for n in lengths], [[6] * (n - n // 2) for n in lengths], [""] * 200,
                      [[""]] * 200)

    def loader(done: int) -> ResumableLoader:
        return ResumableLoader(EncodedDataset(encoded), batch_sampler=TokenBatchSampler(lengths, 120, seed=2),
                               collate_fn=collate, batches_done=lambda: done)

    for epoch in (0, 1):
        full = loader(0)
        full.batch_sampler.set_epoch(epoch)
        expected = [b["index"].tolist() for b in full]
        state = loader(3).state_dict()
        assert state == {"epoch": 0, "batches_done": 3}
        resumed = loader(0)
        resumed.load_state_dict({"epoch": epoch, "batches_done": 3})
        resumed.batch_sampler.set_epoch(epoch)
        assert [b["index"].tolist() for b in resumed] == expected[3:]
        resumed.batch_sampler.set_epoch(epoch + 1)  # the skip applies once, to the interrupted epoch only
        assert sorted(i for b in resumed for i in b["index"].tolist()) == list(range(200))
