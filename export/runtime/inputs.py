"""`generate`'s input_ids and attention_mask: taken from numpy, lists or tensors, checked before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PAD_HINT = "pad the batch to one length (tokenizer.enable_padding(...)) and pass its attention_mask"


def _rows_list(x: Any) -> str:
    return ", ".join(str(r) for r in x[:8]) + (" ..." if len(x) > 8 else "")


def to_array(x: Any, name: str, allow_bool: bool) -> np.ndarray:
    """A 2-D integer (batch, length) array from a numpy array, a list of rows, or a tensor (anything with .numpy())."""
    for method in ("detach", "cpu", "numpy"):
        if not isinstance(x, np.ndarray) and callable(getattr(x, method, None)):
            x = getattr(x, method)()
    if x is None:
        raise TypeError(f"OnnxT5.generate: {name} is None; pass token ids (batch, length).")
    if isinstance(x, str | bytes) or (isinstance(x, list | tuple) and x and isinstance(x[0], str | bytes)):
        raise TypeError(f"OnnxT5.generate: {name} must be token ids, got text: tokenize it first "
                        "(model.tokenizer.encode_batch(texts)).")
    if isinstance(x, Mapping):
        raise TypeError(f"OnnxT5.generate: {name} is a mapping (a tokenizer's output?): pass its arrays, "
                        "generate(enc['input_ids'], enc['attention_mask']).")
    if isinstance(x, list | tuple) and x and hasattr(x[0], "ids") and hasattr(x[0], "attention_mask"):
        raise TypeError(f"OnnxT5.generate: {name} holds tokenizers Encodings: pass [e.ids for e in batch] and "
                        "[e.attention_mask for e in batch].")
    if isinstance(x, list | tuple) and x and all(hasattr(row, "__len__") for row in x):
        lengths = [len(row) for row in x]
        if len(set(lengths)) > 1:
            raise ValueError(f"OnnxT5.generate: the rows of {name} have different lengths ({_rows_list(lengths)}): "
                             f"{PAD_HINT}.")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"OnnxT5.generate: {name} is not a (batch, length) array of token ids ({e}).") from None
    if arr.size == 0:
        if arr.ndim == 2 and arr.shape[0] == 0:
            raise ValueError(f"OnnxT5.generate: {name} has no rows (shape {arr.shape}): pass at least one sequence.")
        if arr.ndim == 2:
            raise ValueError(f"OnnxT5.generate: the rows of {name} hold no tokens (shape {arr.shape}): every input "
                             "needs at least one token (a tokenized text ends with EOS).")
        raise ValueError(f"OnnxT5.generate: {name} is empty (shape {arr.shape}): pass at least one sequence of at "
                         "least one token.")
    kinds = "integer or boolean" if allow_bool else "integer"
    if not (np.issubdtype(arr.dtype, np.integer) or (allow_bool and np.issubdtype(arr.dtype, np.bool_))):
        raise TypeError(f"OnnxT5.generate: {name} must be a 2-D {kinds} array (batch, length), "
                        f"got shape {arr.shape} of {arr.dtype}.")
    if arr.ndim != 2:
        one = " (for one sequence, pass [ids])" if arr.ndim == 1 else ""
        raise ValueError(f"OnnxT5.generate: {name} must be a 2-D {kinds} array (batch, length), "
                         f"got shape {arr.shape}{one}.")
    return arr


def checked_inputs(input_ids: Any, attention_mask: Any, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask as int64 (batch, length), every id in [0, vocab), every mask value 0 or 1 and at
    least one attended token per row. Without a mask every position is attended to (transformers 5.x, encoder-decoder).
    """
    ids = to_array(input_ids, "input_ids", allow_bool=False)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        rows = np.flatnonzero(((ids < 0) | (ids >= vocab)).any(axis=1)).tolist()
        raise ValueError(f"OnnxT5.generate: input_ids hold ids outside [0, {vocab}) (min {low}, max {high}, rows "
                         f"{_rows_list(rows)}): the tokenizer does not match this model, or the ids are not tokens.")
    ids = ids.astype(np.int64, copy=False)
    if attention_mask is None:
        return ids, np.ones_like(ids)
    mask = to_array(attention_mask, "attention_mask", allow_bool=True)
    if mask.shape != ids.shape:
        raise ValueError(f"OnnxT5.generate: attention_mask has shape {mask.shape}, input_ids {ids.shape}: they must "
                         "be the same (the tokenizer returns both).")
    if not np.issubdtype(mask.dtype, np.bool_):
        odd = np.unique(mask[(mask != 0) & (mask != 1)])
        if odd.size:
            raise ValueError(f"OnnxT5.generate: attention_mask holds {_rows_list(odd.tolist())}; its values must be "
                             "1 (a token to attend to) or 0 (padding).")
    empty = np.flatnonzero(~mask.astype(bool).any(axis=1)).tolist()
    if empty:
        raise ValueError(f"OnnxT5.generate: attention_mask rows {_rows_list(empty)} attend to no token: every input "
                         "needs at least one (a row of padding only is not an input); drop those rows.")
    return ids, mask.astype(np.int64)
