"""Wall time and peak memory of a block of work, for benchmarks.

On CUDA the peak is the allocator's (``torch.cuda.max_memory_allocated``) above what was allocated
when the block started. On CPU it is the process's resident set size, sampled every few
milliseconds by a thread, above its value at the start. That follows the block's own tensors only
if freed memory goes back to the system: glibc keeps blocks under its mmap threshold (which grows
up to 32 MiB as a process runs) in its heap, so a second run of the same work would show almost no
growth. Benchmarks therefore call :func:`return_freed_memory` first, which lowers the threshold to
64 KiB so every tensor worth counting is mapped on allocation and unmapped on free, and
:func:`measured` trims the heap as it starts, so that a block reusing memory freed earlier in the
heap still shows it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import os
import resource
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclasses.dataclass
class Measurement:
    seconds: float = 0.0
    peak_bytes: int = 0
    device: str = "cpu"

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def return_freed_memory(threshold: int = 64 * 1024) -> bool:
    """Make glibc map allocations of ``threshold`` bytes or more and give them back when freed.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))


def trim_heap() -> bool:
    """Hand free heap pages back to the system (glibc's ``malloc_trim``); False where unavailable.

    Memory freed by earlier work stays resident in the heap, and a later allocation that reuses it
    adds nothing to the resident set: trimming first makes such reuse show up as growth again.
    """
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0)) if name else False
    except (OSError, AttributeError):
        return False


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the lifetime peak is the best the standard library offers
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def measured(interval: float = 0.005) -> Iterator[Measurement]:
    result = Measurement(device="cuda" if torch.cuda.is_available() else "cpu")
    # Garbage left by earlier work (a model held in a reference cycle) would otherwise be collected
    # inside the block, and its freed memory would hide the block's own allocations; free heap pages
    # are handed back so that reusing them counts.
    gc.collect()
    if result.device == "cpu":
        trim_heap()
    if result.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    else:
        start_bytes = resident_bytes()
        peak = [start_bytes]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(interval):
                peak[0] = max(peak[0], resident_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    started = time.perf_counter()
    try:
        yield result
    finally:
        if result.device == "cuda":
            torch.cuda.synchronize()
            result.peak_bytes = torch.cuda.max_memory_allocated() - start_bytes
        else:
            stop.set()
            sampler.join()
            result.peak_bytes = max(peak[0], resident_bytes()) - start_bytes
        result.seconds = time.perf_counter() - started
