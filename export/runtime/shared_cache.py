"""Greedy and beam search on the shared-cache graphs (`export.shared_cache`): the self-attention cache stays where
each row wrote it, and an index, not a copy, follows the beams.

`OnnxT5.generate` runs greedy search (`greedy_search`, one beam) and beam search (`beam_search`) on `SharedCacheSteps`
where the folder has the graph and the model runs on the CPU without IO binding; one-row calls of the int8 graphs on
the one-row graph's (`ONE_ROW_SHARED`). Every step runs on this graph, the first one too (from the cross-attention K/V
graph's keys and values): each layer's keys and values go to buffers of (rows, heads, positions, d_kv), which the
graph's attention reads and appends to in place (the same memory bound as its past and its present). When beams are
picked, `take_rows` leaves the buffers alone and updates `cache_indirection` instead: for each beam and past position,
the beam of the same input whose row holds that position. The buffers start with `first_width(max_length)` positions and
double when full, as the sequence buffers do, so that max_new_tokens costs no memory a search does not reach. The
with-past graph's session then opens only when something else runs it (`export.runtime.deferred`), so that a process
holds the decoder's weights once; the one-row graph's session opens at the first one-row call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.layout import SHARED_CACHE, SHARED_CACHE_INPUTS
from export.runtime.columns import first_width
from export.runtime.folder import open_session, reexport_hint
from export.runtime.sessions import fixed_size


class SharedCache:
    """The graph at `path`, opened when first needed with `options` and `providers`; `check(session)` is run on it
    then (the folder's export id). `session`: the graph's session, opened and checked already."""

    def __init__(self, path: Path, options: ort.SessionOptions, providers: list[Any], check: Any,
                 session: ort.InferenceSession | None = None):
        self.path, self.options, self.providers, self.check = path, options, providers, check
        self.session = session

    def steps(self, cross_attention: Callable[[np.ndarray], list[np.ndarray]], vocab_size: int, beams: int,
              max_length: int) -> SharedCacheSteps:
        """The decoder steps of one search call (`beams` 1 for greedy): `cross_attention(hidden)` gives the
        cross-attention keys and values of the encoder's states, one row per input (key, value of each layer in
        turn)."""
        if self.session is None:
            session = open_session(self.path, self.options, self.providers, reexport_hint(self.path.parent))
            self.check(session)
            self.session = session
        return SharedCacheSteps(self.session, cross_attention, vocab_size, beams, max_length)


def own_rows(inputs: int, beams: int, capacity: int) -> np.ndarray:
    """The index before any reorder (inputs, beams, capacity) int32: every position of beam j is in beam j's row."""
    index = np.empty((inputs, beams, capacity), dtype=np.int32)
    index[:] = np.arange(beams, dtype=np.int32)[None, :, None]
    return index


class Cache:
    """One call's self-attention cache and what its steps feed: per layer a key and a value buffer (rows, heads,
    capacity, d_kv), the positions filled (`length`), the index of each beam's positions (batch, beams, capacity)
    int32, and the binding that feeds them, the step's tokens and the logits' buffer, all bound once and changed in
    place (a binding made anew each step cost more than the copies it saves on a small decoder)."""

    def __init__(self, buffers: list[np.ndarray], indirection: np.ndarray):
        self.buffers, self.indirection = buffers, indirection
        inputs, beams = indirection.shape[:2]
        self.each = np.arange(inputs)[:, None]  # x[each, j]: row j of each input's (`take_rows`, made once a call)
        self.first_rows = self.each * beams  # each input's first row
        self.spread = False  # whether beam search has spread the first step over the beams (`take_rows`)
        self.length = 0
        self.binding: Any = None
        self.held: list[np.ndarray] = []  # the encoder side as bound: kept alive with the binding
        self.tokens = np.zeros((0, 1), dtype=np.int64)
        self.filled = np.zeros(1, dtype=np.int32)  # `past_sequence_length`: `length` as the graph reads it
        self.logits = np.zeros((0, 1, 0), dtype=np.float32)


class SharedCacheSteps:
    """`DecoderSteps` for `greedy_search` and `beam_search` on a shared-cache graph; the self-attention K/V it passes
    are a `Cache`. The logits a step returns are valid until the next step (the searches are done with them by then)."""

    def __init__(self, session: ort.InferenceSession, cross_attention: Callable[[np.ndarray], list[np.ndarray]],
                 vocab_size: int, beams: int, max_length: int):
        self.session, self.cross_attention, self.vocab_size = session, cross_attention, vocab_size
        self.beams, self.max_length = beams, max_length
        names = [i.name for i in session.get_inputs()]
        self._own = [n for n in names if n.startswith("past_key_values.") and ".decoder." in n]
        self._cross = [n for n in names if n.startswith("past_key_values.") and ".encoder." in n]
        self._present = [n.replace("past_key_values.", "present.") for n in self._own]
        self._beam_width = np.array([beams], dtype=np.int32)
        shape = next(i.shape for i in session.get_inputs() if i.name == self._own[0])
        self._heads = fixed_size(shape[1], "the self-attention cache's heads", SHARED_CACHE)
        self._d_kv = fixed_size(shape[3], "the self-attention cache's d_kv", SHARED_CACHE)

    def first_step(self, tokens: np.ndarray, mask: np.ndarray, hidden: Any) -> tuple[np.ndarray, Cache, list[Any]]:
        """The first step on this graph too, every beam's row (each input's repeated): the with-past graph's
        session, whose threads would spin on after it, stays idle while the steps run (on two cores, the two
        pools contended: 0.80x the copies' speed at batch 1). Returns each input's logits, once."""
        cross = self.cross_attention(hidden)
        inputs, beams = tokens.shape[0], self.beams
        capacity = first_width(self.max_length)
        shape = (inputs * beams, self._heads, capacity, self._d_kv)
        cache = Cache([np.zeros(shape, dtype=np.float32) for _ in self._own], own_rows(inputs, beams, capacity))
        logits, cache = self.step(np.repeat(tokens, beams, axis=0), mask, cache, cross)
        return logits[::beams].copy(), cache, cross

    def take_rows(self, cache: Cache, rows: np.ndarray) -> Cache:
        """Beam search's reorder, `rows[i]` the row row i continues: the first call spreads each input's first step
        over its beams (rows = each input's index, `beams` times), which `first_step` did already; later ones,
        rows within each input's beams, move the index of the positions filled so far."""
        beams = self.beams
        if not cache.spread:
            cache.spread = True
            return cache
        source = rows.reshape(-1, beams) - cache.first_rows  # the beam each beam continues
        # beam j now reads, at each filled position, where the beam it continues read: that beam's own row at the
        # position it wrote last (its index there is still its own), and the rows its index gave before that
        moved = cache.indirection[cache.each, source, :cache.length]
        cache.indirection[:, :, :cache.length] = moved  # in place: the binding reads this array
        return cache

    def _grow(self, cache: Cache) -> None:
        """Double the buffers' positions (up to max_length), the filled ones copied; the binding is made anew."""
        capacity = min(self.max_length, 2 * cache.indirection.shape[2])
        buffers = []
        for old in cache.buffers:
            buffer = np.zeros((*old.shape[:2], capacity, old.shape[3]), dtype=old.dtype)
            buffer[:, :, :cache.length] = old[:, :, :cache.length]
            buffers.append(buffer)
        inputs, beams = cache.indirection.shape[:2]
        index = own_rows(inputs, beams, capacity)
        index[:, :, :cache.length] = cache.indirection[:, :, :cache.length]
        cache.buffers, cache.indirection, cache.binding = buffers, index, None

    def _bind(self, cache: Cache, mask: np.ndarray, cross: list[Any]) -> None:
        """Bind the call's inputs and outputs: the buffers as both the past and the present (the op appends in
        place), the arrays the steps change in place, and the encoder side, which no step changes."""
        rows = cache.buffers[0].shape[0]
        binding = self.session.io_binding()
        cache.tokens = np.zeros((rows, 1), dtype=np.int64)
        cache.logits = np.zeros((rows, 1, self.vocab_size), dtype=np.float32)
        binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(cache.tokens))
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(cache.logits))
        cache.held = [np.ascontiguousarray(mask), *(np.ascontiguousarray(value) for value in cross)]
        for name, value in zip(["encoder_attention_mask", *self._cross], cache.held, strict=True):
            binding.bind_cpu_input(name, value)
        for name, present, buffer in zip(self._own, self._present, cache.buffers, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(present, value)
        length, width, index = SHARED_CACHE_INPUTS
        binding.bind_ortvalue_input(length, ort.OrtValue.ortvalue_from_numpy(cache.filled))
        binding.bind_ortvalue_input(width, ort.OrtValue.ortvalue_from_numpy(self._beam_width))
        binding.bind_ortvalue_input(index, ort.OrtValue.ortvalue_from_numpy(cache.indirection))
        cache.binding = binding

    def step(self, tokens: np.ndarray, mask: np.ndarray, cache: Cache, cross: list[Any]) -> tuple[np.ndarray, Cache]:
        if cache.length == cache.indirection.shape[2]:
            self._grow(cache)
        if cache.binding is None:
            self._bind(cache, mask, cross)
        cache.tokens[:] = tokens
        cache.filled[0] = cache.length
        self.session.run_with_iobinding(cache.binding)
        cache.length += 1
        return cache.logits[:, -1, :], cache
