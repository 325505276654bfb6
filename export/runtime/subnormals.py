"""Subnormal floats flushed to zero on the calling thread, for the span of a `with FlushedSubnormals():` block.

An exponential that underflows to a subnormal float costs Intel CPUs a microcode assist, several times the time of a
normal one (docs/results.md, "Subnormal exponentials in beam search's log-softmax"); beam search's log-softmax meets
many (`log_softmax.py`). x86's MXCSR register holds two modes that
avoid them, per thread: flush-to-zero (a subnormal result becomes 0) and denormals-are-zero (a subnormal input reads
as 0). TensorFlow runs its kernels under the same two modes (its `ScopedFlushDenormal`); onnxruntime can set them only
on its pool's threads and, once per process, on the thread that creates its first session
(`session.set_denormal_as_zero`), which would change the floating point of all of that thread's later work.

The modes are set through glibc's `fegetmode`/`fesetmode` (glibc 2.25 and later), whose x86-64 `femode_t` holds the
x87 control word and MXCSR, and restored on the way out. Elsewhere (another C library or architecture) the block runs
unchanged.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Any

FLUSH_TO_ZERO = 1 << 15  # MXCSR bit 15: a subnormal result becomes 0
DENORMALS_ARE_ZERO = 1 << 6  # MXCSR bit 6: a subnormal input reads as 0
EXCEPTION_FLAGS = 0x3F  # MXCSR bits 0-5: what has happened (an underflow, ...), not a mode; fesetmode keeps them


class _Mode(ctypes.Structure):
    """glibc's `femode_t` on x86-64 (bits/fenv.h)."""

    _fields_ = [("control_word", ctypes.c_ushort), ("reserved", ctypes.c_ushort), ("mxcsr", ctypes.c_uint)]


def _libm() -> Any:
    """glibc's libm where `femode_t` is the x86-64 one, with `fegetmode` and `fesetmode`; else None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return None
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):  # musl: ValueError (no such name)
            return None
        libm = ctypes.CDLL("libm.so.6")
        libm.fegetmode.argtypes = libm.fesetmode.argtypes = [ctypes.POINTER(_Mode)]
    except (ValueError, OSError, AttributeError):  # not glibc, no libm.so.6, or no fegetmode (glibc before 2.25)
        return None
    return libm


_LIBM = _libm()


def available() -> bool:
    """Whether `FlushedSubnormals` changes anything on this platform."""
    return _LIBM is not None


class FlushedSubnormals:
    """Flush-to-zero and denormals-are-zero on the calling thread inside the `with` block; the thread's modes as they
    were after it, whatever the block raises. Only the calling thread's own computations change: a pool's threads
    keep theirs (a thread started inside the block would inherit them, as POSIX threads inherit the floating-point
    environment). A class rather than a generator, which costs more: it runs at every beam step."""

    __slots__ = ("saved",)

    def __enter__(self) -> None:
        self.saved = None
        if _LIBM is None:
            return
        saved = _Mode()
        if _LIBM.fegetmode(saved) == 0:
            _LIBM.fesetmode(_Mode(saved.control_word, saved.reserved, saved.mxcsr | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO))
            self.saved = saved

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            _LIBM.fesetmode(self.saved)


def current_mxcsr() -> int | None:
    """The calling thread's MXCSR modes, its exception flags left out (None where `available()` is False)."""
    if _LIBM is None:
        return None
    mode = _Mode()
    _LIBM.fegetmode(mode)
    return int(mode.mxcsr) & ~EXCEPTION_FLAGS
