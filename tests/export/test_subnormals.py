"""Subnormals flushed to zero on the calling thread inside the block only, and the thread's modes restored after it,
whatever happens inside."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from export.runtime.subnormals import DENORMALS_ARE_ZERO, FLUSH_TO_ZERO, FlushedSubnormals, available, current_mxcsr

pytestmark = pytest.mark.skipif(not available(), reason="flushing needs glibc on x86-64")

SUBNORMAL = np.float32(1e-39)  # below float32's smallest normal, 1.2e-38


def test_the_block_flushes_and_the_modes_come_back():
    before = current_mxcsr()
    assert before is not None and not before & (FLUSH_TO_ZERO | DENORMALS_ARE_ZERO)
    assert SUBNORMAL * np.float32(1.0) == SUBNORMAL
    with FlushedSubnormals():
        assert current_mxcsr() & (FLUSH_TO_ZERO | DENORMALS_ARE_ZERO) == FLUSH_TO_ZERO | DENORMALS_ARE_ZERO
        assert SUBNORMAL * np.float32(1.0) == 0.0  # numpy runs on this thread: a subnormal input reads as 0
        assert np.exp(np.float32(-95.0)) == 0.0  # and a subnormal result becomes 0
    assert current_mxcsr() == before
    assert np.exp(np.float32(-95.0)) > 0.0


def test_the_modes_come_back_when_the_block_raises():
    before = current_mxcsr()
    with pytest.raises(KeyError), FlushedSubnormals():
        raise KeyError("inside")
    assert current_mxcsr() == before


def test_a_thread_running_meanwhile_keeps_its_modes():
    """A thread started before the block (as onnxruntime's pools are) computes as before while the block runs; one
    started inside it would inherit its modes (POSIX threads inherit the floating-point environment)."""
    go, seen = threading.Event(), []

    def work() -> None:
        go.wait()
        seen.append(SUBNORMAL * np.float32(1.0))

    thread = threading.Thread(target=work)
    thread.start()
    with FlushedSubnormals():
        go.set()
        thread.join()
    assert seen == [SUBNORMAL]
