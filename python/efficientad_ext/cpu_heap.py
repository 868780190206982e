"""A padded glibc heap for long CPU runs: large tensors reuse pages that are already mapped.

Why: a training or distillation step allocates and frees tensors of tens to hundreds of MB
(the student's first activation for 3 images is 98 MB). With glibc's defaults each one comes
from fresh pages (``mmap``, or a heap top trimmed after every free), so every step page-faults
them in again. With the pad, float32 training steps (direct or Winograd) and distillation steps
ran 1.12-1.13x faster on an AVX2 EPYC at 1 thread (benchmarks/heap_pad_steps.py; RESULTS.md,
session 19).

:func:`pad_heap_top` sets glibc's ``M_TOP_PAD`` (default here 1 GiB): the heap grows in steps
of that size and keeps that much free memory at its top instead of returning it, so large
tensors are carved from pages already touched. Setting it also fixes glibc's mmap threshold at
its 128 KiB default (no longer raised dynamically): an allocation that does not fit the heap's
top is still ``mmap``-ed, as before. Cost: the process keeps up to the pad in freed memory
(resident once touched).

It is process-wide, so nothing sets it on import (a library must not change its host's
allocator unasked): the ``efficientad`` command line sets it for ``train``, ``train-all``,
``distill`` and ``demo``; Python callers may call :func:`pad_heap_top` themselves.
``EFFICIENTAD_HEAP_TOP_PAD`` (bytes) overrides the size; ``0`` leaves glibc's defaults. On a C
library without ``mallopt`` (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("efficientad_ext")

ENV_VAR = "EFFICIENTAD_HEAP_TOP_PAD"
DEFAULT_TOP_PAD = 1 << 30
_M_TOP_PAD = -2  # glibc's <malloc.h>
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def _configured_pad(top_pad: int | None) -> int:
    if top_pad is None:
        text = os.environ.get(ENV_VAR)
        if text is None:
            return DEFAULT_TOP_PAD
        try:
            top_pad = int(text)
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be a byte count (0 leaves glibc's defaults), got {text!r}") from None
    if not 0 <= top_pad <= _INT_MAX:
        raise ValueError(f"the heap top pad must be in [0, {_INT_MAX}] bytes, got {top_pad}")
    return top_pad


def _glibc():
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # gnu_get_libc_version exists only in glibc: musl has a mallopt that ignores M_TOP_PAD.
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc", "free", "sbrk")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
    libc.sbrk.argtypes, libc.sbrk.restype = [ctypes.c_ssize_t], ctypes.c_void_p
    return libc


def _grow_heap_top(libc, top_pad: int) -> None:
    """Makes the heap extend once now, so its top holds the pad from the start: the pad applies
    only when the heap grows, which otherwise waits for a small allocation that finds no room.
    Small blocks (below the mmap threshold) are taken until the break moves, then freed (they
    coalesce back into the top)."""
    block, start, taken = 64 << 10, libc.sbrk(0), []
    try:
        for _ in range(top_pad // (64 << 10) + 1):
            p = libc.malloc(block)
            if not p:
                break
            taken.append(p)
            if libc.sbrk(0) != start:
                break
    finally:
        for p in taken:
            libc.free(p)


def pad_heap_top(top_pad: int | None = None) -> int:
    """Sets glibc's heap top pad to ``top_pad`` bytes (default: ``EFFICIENTAD_HEAP_TOP_PAD`` or
    1 GiB) and returns the pad set; 0 when nothing was set (asked for 0, or not glibc)."""
    top_pad = _configured_pad(top_pad)
    if top_pad == 0:
        return 0
    libc = _glibc()
    if libc is None:
        log.debug("heap top pad not set: the C library is not glibc")
        return 0
    if libc.mallopt(_M_TOP_PAD, top_pad) != 1:
        log.warning("glibc refused a heap top pad of %d bytes; its defaults stay", top_pad)
        return 0
    _grow_heap_top(libc, top_pad)
    return top_pad
