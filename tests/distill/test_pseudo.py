import json

import pytest
import torch
from transformers import T5ForConditionalGeneration

from distill.data import DataConfig, encode, load_split
from distill.generation import generate_texts
from distill.generation_torch import torch_generate_texts
from distill.models import load_tokenizer
from distill.pseudo import make_pseudo_labels

LIMIT, MAX_NEW = 6, 5


@pytest.fixture(scope="module")
def nested_dir(tmp_path_factory, dataset_dir):
    """The test dataset laid out as hub translation sets are: {"translation": {"en": ..., "fr": ...}}."""
    folder = tmp_path_factory.mktemp("nested")
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (dataset_dir / f"{split}.jsonl").read_text().splitlines()]
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"translation": {"en": r["en"], "fr": r["fr"]}}) + "\n" for r in rows))
    return folder


def expected_labels(tiny_teacher, config):
    model, tokenizer = T5ForConditionalGeneration.from_pretrained(tiny_teacher), load_tokenizer(str(tiny_teacher))
    train = load_split(config, "train").select(range(LIMIT))
    encoded = encode(train, tokenizer, config, 512, 512)
    return torch_generate_texts(model, tokenizer, encoded.sources, num_beams=2, max_new_tokens=MAX_NEW,
                                progress=False)


@pytest.mark.parametrize("nested", [False, True])
def test_pseudo_labels_replace_the_target_and_keep_the_reference(tiny_teacher, dataset_dir, nested_dir, tmp_path,
                                                                    nested):
    columns = ("translation.en", "translation.fr") if nested else ("en", "fr")
    config = DataConfig(str(nested_dir if nested else dataset_dir), None, *columns, [], "translate: ")
    out = make_pseudo_labels(str(tiny_teacher), config, tmp_path / "pseudo", num_beams=2, max_new_tokens=MAX_NEW,
                             chunk=4, limit=LIMIT)
    labels = expected_labels(tiny_teacher, config)
    relabeled = load_split(DataConfig(str(out), None, *columns, [], "translate: "), "train")
    original = load_split(config, "train").select(range(LIMIT))
    assert list(relabeled[columns[1]]) == labels  # what a student trained on the folder reads as its target
    assert list(relabeled[columns[0]]) == list(original[columns[0]])
    reference = "translation.fr_reference" if nested else "fr_reference"
    kept = [row["translation"]["fr_reference"] for row in relabeled] if nested else list(relabeled[reference])
    assert kept == list(original[columns[1]])
    test = load_split(DataConfig(str(out), None, *columns, [], ""), "test")
    assert list(test[columns[1]]) == list(load_split(config, "test")[columns[1]])  # scored on human references
    assert not list(tmp_path.glob(".*partial*"))


def test_an_interrupted_run_resumes_and_other_settings_start_over(tiny_teacher, dataset_dir, tmp_path, monkeypatch):
    import distill.pseudo as pseudo

    config = DataConfig(str(dataset_dir), None, "en", "fr", [], "translate: ")
    calls = []

    def crash_after_first_chunk(generate, decode, sources, *args, **kwargs):
        calls.append(len(sources))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate_texts(generate, decode, sources, *args, **kwargs | {"progress": False})

    monkeypatch.setattr(pseudo, "generate_texts", crash_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        make_pseudo_labels(str(tiny_teacher), config, tmp_path / "pseudo", 2, MAX_NEW, chunk=4, limit=LIMIT)
    partial = tmp_path / ".pseudo.train.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 4  # settings line + the first chunk

    calls.clear()
    monkeypatch.setattr(pseudo, "generate_texts",
                        lambda *a, **k: calls.append(len(a[2])) or generate_texts(*a, **k | {"progress": False}))
    make_pseudo_labels(str(tiny_teacher), config, tmp_path / "pseudo", 2, MAX_NEW, chunk=4, limit=LIMIT)
    assert calls == [LIMIT - 4]  # only the rest was generated
    labels = [json.loads(line)["fr"] for line in (tmp_path / "pseudo" / "train.jsonl").read_text().splitlines()]
    assert labels == expected_labels(tiny_teacher, config)

    calls.clear()
    stale = tmp_path / ".pseudo3.train.partial.jsonl"
    stale.write_text(json.dumps({"settings": {"num_beams": 7}}) + "\n" + json.dumps({"label": "stale"}) + "\n")
    make_pseudo_labels(str(tiny_teacher), config, tmp_path / "pseudo3", 2, MAX_NEW, chunk=4, limit=LIMIT)
    assert calls == [4, LIMIT - 4]
    assert "stale" not in (tmp_path / "pseudo3" / "train.jsonl").read_text()


def test_a_labels_file_is_reused_only_for_the_same_teacher_sources_and_settings(tiny_teacher, dataset_dir, tmp_path,
                                                                                  monkeypatch):
    import shutil

    import distill.pseudo as pseudo

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    config = DataConfig(str(dataset_dir), None, "en", "fr", [], "translate: ")
    calls = []
    monkeypatch.setattr(pseudo, "generate_texts",
                        lambda *a, **k: calls.append(len(a[2])) or generate_texts(*a, **k | {"progress": False}))
    labels_file = tmp_path / "labels.jsonl.gz"
    first = make_pseudo_labels(str(teacher), config, tmp_path / "a", 2, MAX_NEW, limit=LIMIT,
                               labels_file=labels_file)
    assert calls == [LIMIT] and labels_file.is_file()
    data = labels_file.read_bytes()

    calls.clear()  # same teacher, sources, settings: rebuilt from the file, nothing generated
    second = make_pseudo_labels(str(teacher), config, tmp_path / "b", 2, MAX_NEW, limit=LIMIT,
                                labels_file=labels_file)
    assert calls == [] and (second / "train.jsonl").read_text() == (first / "train.jsonl").read_text()

    make_pseudo_labels(str(teacher), config, tmp_path / "c", 3, MAX_NEW, limit=LIMIT, labels_file=labels_file)
    assert calls == [LIMIT]  # other settings (3 beams): generated anew and the file rewritten

    calls.clear()  # the teacher retrained in the same folder: generated anew
    data = labels_file.read_bytes()
    model = T5ForConditionalGeneration.from_pretrained(teacher)
    with torch.no_grad():
        model.shared.weight.mul_(1.5)
    model.save_pretrained(teacher)
    make_pseudo_labels(str(teacher), config, tmp_path / "d", 3, MAX_NEW, limit=LIMIT, labels_file=labels_file)
    assert calls == [LIMIT] and labels_file.read_bytes() != data


def test_mix_gold_follows_each_label_with_the_human_target(tiny_teacher, dataset_dir, tmp_path):
    config = DataConfig(str(dataset_dir), None, "en", "fr", [], "translate: ")
    out = make_pseudo_labels(str(tiny_teacher), config, tmp_path / "mixed", num_beams=2, max_new_tokens=MAX_NEW,
                             limit=LIMIT, mix_gold=True)
    mixed = load_split(DataConfig(str(out), None, "en", "fr", [], "translate: "), "train")
    original = load_split(config, "train").select(range(LIMIT))
    assert list(mixed["en"]) == [s for s in original["en"] for _ in range(2)]
    assert list(mixed["fr"]) == [t for pair in zip(expected_labels(tiny_teacher, config), original["fr"], strict=True)
                                 for t in pair]
    assert json.loads((out / "manifest.json").read_text())["train_rows"] == 2 * LIMIT
