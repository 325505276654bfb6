"""Any sequence-to-sequence dataset, read through `datasets.load_dataset` and tokenized: the one dataset loader that
training, scoring, pseudo-labels and the evaluation harness share.

A dataset is a local folder holding `{split}.jsonl` / `.json` / `.csv` / `.parquet`, or a hub id (with an optional
config name, e.g. `wmt16` + `ro-en`) for users who have a network: both go through `load_dataset`. Columns are
configurable; a dotted column (`translation.en`) reads a field of a nested column, as hub translation sets store them.

What would train or score silently wrong is refused with the file, the line (jsonl) or row, and the column: an empty
file or split, a malformed line, a source or target that is null, not text or empty (`drop_invalid` drops such rows
instead, and says how many). A hub id is looked up once, briefly, so an unreachable hub is reported in seconds.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SHOWN = 5  # positions of bad rows a message lists


@dataclass
class DataConfig:
    """Where a dataset is and which of its columns hold the source, the target and further references."""

    path: str = "data/bible"  # local folder or hub id
    name: str | None = None  # hub config name, e.g. "ro-en" for wmt16
    source_column: str = "en"
    target_column: str = "fr"
    extra_columns: list[str] = field(default_factory=list)  # e.g. further references, kept but not tokenized
    task_prefix: str = "translate English to French: "
    # a row whose source or target is null, not text or empty is refused, naming it; True drops such rows instead
    # (and says how many)
    drop_invalid: bool = False


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~")) or Path(path).suffix in FORMATS


def load_split(config: DataConfig, split: str) -> Dataset:
    """Load one split as a `datasets.Dataset` whose columns include the configured ones (flattened when dotted).

    Every row's source and target must be non-empty text, and extra columns text or null: a bad row is a DataError
    naming the file, its line (jsonl) or row, and the column; with `config.drop_invalid` such rows are dropped and
    counted on stderr.
    """
    import datasets

    file = None
    if _is_local(config.path):
        file, builder = _local_file(config, split)
        if builder != "parquet":
            _check_text(file, builder)
        try:
            dataset = datasets.load_dataset(builder, data_files={split: str(file)}, split=split)
        except Exception as err:  # a parse error of the user's file: say which file, and where in it
            if builder != "json":
                raise _read_error(file, builder, err) from err
            # Arrow refuses a column whose type changes from row to row; reading the lines here names the row
            dataset = _read_json_lines(file, config, err)
    else:
        dataset = _load_hub(config, split)
    dataset = _select_columns(dataset, config, split)
    return _check_values(dataset, config, split, file)


def _local_file(config: DataConfig, split: str) -> tuple[Path, str]:
    """The file holding `split` of a local dataset and its `load_dataset` builder; DataError when there is none."""
    folder = Path(config.path).expanduser()
    if folder.is_file():
        file = folder
    else:
        if not folder.is_dir():
            raise DataError(f"Dataset folder {folder} does not exist. Build the default one with `make data`, "
                            "or pass a folder holding train/validation/test .jsonl, .csv or .parquet files.")
        found = sorted(p for p in folder.glob(f"{split}.*") if p.suffix in FORMATS and p.is_file())
        if not found:
            have = sorted(p.name for p in folder.iterdir())
            raise DataError(f"No file for split {split!r} in {folder} (expected {split}.jsonl, .json, .csv or "
                            f".parquet; found {have}).")
        file = found[0]
    if file.suffix not in FORMATS:
        raise DataError(f"{file}: unsupported file type; use one of {sorted(FORMATS)}.")
    if _is_blank(file):
        raise DataError(f"{file} is empty: split {split!r} has no rows. Put one example per line "
                        f"(e.g. {{\"{config.source_column}\": \"...\", \"{config.target_column}\": \"...\"}} in "
                        "a .jsonl file), or give another folder.")
    return file, FORMATS[file.suffix]


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json object_pairs_hook: the object, or _DuplicateKey naming a key given twice (json keeps the last silently)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _check_text(file: Path, builder: str) -> None:
    """DataError naming the line of what the readers would take silently or fail on without saying where: bytes that
    are not UTF-8, a CSV header naming a column twice (read as `name.1`), a JSON object giving a key twice (only the
    last one kept)."""
    fix_utf8 = "save the file as UTF-8 text (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"
    json_lines = builder == "json"
    with open(file, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{file}, line {number}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                f"{err.start + 1}); {fix_utf8}.") from None
            if builder == "csv" and number == 1:
                names = next(csv.reader([line]), [])
                twice = sorted({n for n in names if names.count(n) > 1})
                if twice:
                    raise DataError(f"{file}: the header names column {twice[0]!r} more than once ({names}); the "
                                    f"reader would rename the second to {twice[0] + '.1'!r} silently. Rename or remove "
                                    "one of them.")
            if json_lines and line.strip():
                try:
                    json.loads(line, object_pairs_hook=_no_duplicate_keys)
                except _DuplicateKey as dup:
                    raise DataError(f"{file}, line {number}: an object gives key {str(dup)!r} more than once; JSON "
                                    "readers keep only the last one silently. Remove or rename the other.") from None
                except json.JSONDecodeError:
                    if number == 1 and line.lstrip().startswith("["):  # one JSON document: checked whole below
                        json_lines = False
                        break
                    # a line that is not JSON: the reader's error, with its line, comes later
    if builder == "json" and not json_lines:
        try:
            json.loads(file.read_text(encoding="utf-8-sig"), object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as dup:
            raise DataError(f"{file}: an object gives key {str(dup)!r} more than once; JSON readers keep only the "
                            "last one silently. Remove or rename the other.") from None
        except json.JSONDecodeError:
            pass  # reported with its line by the reader's path


def _is_blank(file: Path) -> bool:
    """Whether `file` holds nothing but whitespace (read only up to its first other byte)."""
    with open(file, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _read_error(file: Path, builder: str, err: Exception) -> DataError:
    """The DataError for a csv or parquet file `load_dataset` could not read."""
    if _has_no_rows(file, builder):
        return DataError(f"{file} has no rows (a header or schema only): the split is empty. Add examples, or give "
                         "another folder.")
    return DataError(f"Could not read {file} as {builder}: {_reason(err)}")


def _has_no_rows(file: Path, builder: str) -> bool:
    """Whether a csv file holds at most its header line, or a parquet file no row."""
    if builder == "csv":
        with open(file, encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if line.strip()) <= 1
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(file).metadata.num_rows == 0
        except (OSError, ValueError):  # not a parquet file: the reader's own error says so
            return False
    return False


def _read_json_lines(file: Path, config: DataConfig, err: Exception) -> Dataset:
    """A JSON-lines file that `load_dataset` could not read, read line by line: a DataError naming the first line
    that is not a JSON object, or whose source or target is not text (dropped instead with `config.drop_invalid`)."""
    import datasets

    fix = 'A .jsonl file holds one JSON object per line, e.g. {"en": "...", "fr": "..."}; fix or remove that line.'
    with open(file, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if text.lstrip().startswith("["):  # one JSON document (a .json array): where it fails to parse, if it does
        try:
            json.loads(text)
        except json.JSONDecodeError as parse_err:
            raise DataError(f"{file}, line {parse_err.lineno}: not valid JSON ({parse_err.msg}, column "
                            f"{parse_err.colno}).") from err
        raise DataError(f"Could not read {file} as json: {_reason(err)}") from err
    lines, rows = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as parse_err:
            raise DataError(f"{file}, line {number}: not valid JSON ({parse_err.msg}, column {parse_err.colno}): "
                            f"{line.strip()[:80]!r}. {fix}") from err
        if not isinstance(row, dict):
            raise DataError(f"{file}, line {number}: a JSON {type(row).__name__}, not an object: "
                            f"{line.strip()[:80]!r}. {fix}") from err
        lines.append(number)
        rows.append(row)
    bad = _bad_cells(config, lambda column: [_field(row, column) for row in rows])
    keep = _keep(bad, len(rows), [f"line {n}" for n in lines], str(file), config)
    kept = [rows[i] for i in keep]
    columns = dict.fromkeys(key for row in kept for key in row)  # every key of any row, in order of appearance
    try:
        return datasets.Dataset.from_dict({key: [row.get(key) for row in kept] for key in columns})
    except Exception as arrow_err:  # another column whose type changes: the reader's message names it
        raise DataError(f"Could not read {file} as json: {_reason(err)}") from arrow_err


def _field(row: Mapping, column: str) -> object:
    """The value of a (dotted) column in a row; None where a level is missing."""
    value: object = row
    for key in column.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _reason(err: BaseException) -> str:
    """The most specific message in `err`'s chain of causes (datasets wraps parse errors in generic ones)."""
    reasons = []
    seen: BaseException | None = err
    while seen is not None and len(reasons) < 10:
        if str(seen).strip():
            reasons.append(f"{type(seen).__name__}: {str(seen).strip()}")
        seen = seen.__cause__ or seen.__context__
    return reasons[-1] if reasons else type(err).__name__


def _load_hub(config: DataConfig, split: str) -> Dataset:
    """`split` of hub dataset `config.path`, after one quick look-up (an unreachable hub fails in seconds)."""
    import datasets

    from distill.hub import HUB_TIMEOUT, hub_endpoint, hub_status

    status = hub_status(config.path, "dataset")
    what = f"dataset {config.path!r} (config {config.name!r}, split {split!r})"
    local = ("a local folder holding {train,validation,test}.jsonl works offline (`make data` builds the default "
             "data/bible)")
    if status == "invalid":
        raise DataError(f"{config.path!r} is not a local folder, nor a hub dataset id (owner/name); {local}.")
    if status == "missing":
        raise DataError(f"{config.path!r} is not a local folder, and the Hugging Face hub ({hub_endpoint()}) has no "
                        f"dataset repository of that name (a private one needs `hf auth login`); {local}.")
    if status == "unreachable":
        raise DataError(f"Could not load {what}: it is not a local folder, and the Hugging Face hub "
                        f"({hub_endpoint()}) could not be reached (asked once, for at most {HUB_TIMEOUT:g} s). The hub "
                        f"may be unreachable from this machine; {local}. A copy cached by an earlier run loads with "
                        "HF_HUB_OFFLINE=1.")
    try:
        return datasets.load_dataset(config.path, config.name, split=split)
    except Exception as err:  # unknown config or split, or not in the cache when offline: all need the same advice
        if status == "offline":
            raise DataError(f"HF_HUB_OFFLINE is set and {config.path!r} is not a local folder, nor a dataset the "
                            f"cache holds ({type(err).__name__}: {err}). Unset HF_HUB_OFFLINE to download it; "
                            f"{local}.") from err
        raise DataError(
            f"Could not load {what} from the Hugging Face hub: {type(err).__name__}: {err}\nThe hub may be "
            f"unreachable from this machine; {local}."
        ) from err


def _select_columns(dataset: Dataset, config: DataConfig, split: str) -> Dataset:
    wanted = [config.source_column, config.target_column, *config.extra_columns]
    missing = [c for c in wanted if c.split(".")[0] not in dataset.column_names]
    if missing:
        raise DataError(f"Dataset {config.path!r} split {split!r} has no column {missing[0]!r} "
                        f"(columns: {dataset.column_names}); set source_column / target_column accordingly.")
    if len(dataset) == 0:
        raise DataError(f"Dataset {config.path!r} split {split!r} is empty: it has no rows.")
    dotted = [c for c in wanted if "." in c]
    if dotted:
        dataset = dataset.map(lambda row: {column: _field(row, column) for column in dotted})
    return dataset


def _problem(value: object, required: bool) -> str | None:
    """What is wrong with one cell: a source or target must be non-empty text, an extra reference text or null."""
    if value is None:
        return "null (missing)" if required else None
    if not isinstance(value, str):
        return f"not text but {type(value).__name__} {value!r:.40}"
    if required and not value.strip():
        return "empty"
    return None


def _bad_cells(config: DataConfig, values: Callable[[str], Sequence[object]]) -> dict[int, tuple[str, str]]:
    """{row index: (column, problem)} of the first bad cell of each bad row; `values(column)` gives a column."""
    columns = [(c, True) for c in dict.fromkeys([config.source_column, config.target_column])]
    columns += [(c, False) for c in config.extra_columns if c not in (config.source_column, config.target_column)]
    bad: dict[int, tuple[str, str]] = {}
    for column, required in columns:
        for i, value in enumerate(values(column)):
            problem = _problem(value, required)
            if problem is not None and i not in bad:
                bad[i] = (column, problem)
    return bad


def _keep(bad: dict[int, tuple[str, str]], n_rows: int, positions: Sequence[str], source: str,
          config: DataConfig) -> list[int]:
    """The indices of the rows to keep: all when none is bad, the good ones with `config.drop_invalid` (the count
    printed on stderr); otherwise a DataError naming the first bad row (`positions[i]`: where row i is) and column."""
    if not bad:
        return list(range(n_rows))
    rows = sorted(bad)
    shown = ", ".join(positions[i] for i in rows[:SHOWN]) + (", ..." if len(rows) > SHOWN else "")
    if config.drop_invalid:
        print(f"{source}: dropped {len(rows)} of {n_rows} rows whose source or target is null, not text or empty "
              f"(drop_invalid): {shown}", file=sys.stderr)
        if len(rows) == n_rows:
            raise DataError(f"{source}: every row has a null, non-text or empty source or target, so none is left "
                            f"after drop_invalid; check source_column ({config.source_column!r}) and target_column "
                            f"({config.target_column!r}).")
        dropped = set(rows)
        return [i for i in range(n_rows) if i not in dropped]
    column, problem = bad[rows[0]]
    more = f" ({len(rows)} rows are unusable: {shown})" if len(rows) > 1 else ""
    hint = ("Every example needs non-empty text in its source and target columns, and extra reference columns hold "
            "text or null. Fix or remove those rows, or have them dropped (`data.drop_invalid: true` in a training "
            "config, `--drop-invalid` for distill.score).")
    raise DataError(f"{source}, {positions[rows[0]]}: column {column!r} is {problem}{more}. {hint}")


def _check_values(dataset: Dataset, config: DataConfig, split: str, file: Path | None) -> Dataset:
    """`dataset` when every row is usable; otherwise a DataError naming the first bad rows, or, with
    `config.drop_invalid`, `dataset` without them (their count printed on stderr)."""
    bad = _bad_cells(config, lambda column: dataset[column])
    if not bad:
        return dataset
    source = str(file) if file is not None else f"dataset {config.path!r} split {split!r}"
    keep = _keep(bad, len(dataset), _positions(file, len(dataset)), source, config)
    return dataset.select(keep)


def _positions(file: Path | None, n_rows: int) -> list[str]:
    """Where each row is, as a user finds it: its line in a JSON-lines file (one row per non-blank line), else its
    1-based row number."""
    if file is not None and file.suffix in (".jsonl", ".json"):
        with open(file, encoding="utf-8", errors="replace") as f:
            lines = [n for n, line in enumerate(f, 1) if line.strip()]
        if len(lines) == n_rows:
            return [f"line {n}" for n in lines]
    after = " after the header" if file is not None and file.suffix == ".csv" else ""
    return [f"row {i + 1}{after}" for i in range(n_rows)]


@dataclass
class Encoded:
    """A tokenized split: ids without padding, plus the raw texts that scoring needs."""

    sources: list[list[int]]
    targets: list[list[int]]
    source_texts: list[str]
    references: list[list[str]]  # references[i] = all references of example i (target first)

    def __len__(self) -> int:
        return len(self.sources)


def encode(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, config: DataConfig, max_source_length: int,
           max_target_length: int) -> Encoded:
    """Prefixed sources and targets tokenized (truncated, with eos), and each example's references (target first)."""
    sources = [config.task_prefix + s for s in dataset[config.source_column]]
    targets = list(dataset[config.target_column])
    extra = [list(dataset[c]) for c in config.extra_columns]
    src = tokenizer(sources, max_length=max_source_length, truncation=True)["input_ids"]
    tgt = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)["input_ids"]
    refs = [[t, *(e[i] for e in extra if e[i])] for i, t in enumerate(targets)]
    return Encoded(src, tgt, sources, refs)
