"""Interleaved timing on a shared, noisy machine, and a description of the machine.

The benchmarks compare step functions that run in the same process on the same data. Their
runs are *interleaved*: each round times every function ``repeats`` times, in an order that
rotates from round to round, so that a burst of load from another process hits all of them
alike. Each function's time is the median over all its runs; a ratio is also computed per
round (median of the round's runs over the reference's), and the spread of those per-round
ratios (min–max) says how noisy the comparison was.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

__all__ = ["Timings", "interleaved", "keep_freed_memory", "machine", "parse_threads"]


@dataclass
class Timings:
    """Per-function step times in seconds, all runs and per round."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    rounds: dict[str, list[float]] = field(default_factory=dict)  # per-round medians

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def ratio(self, name: str, reference: str) -> tuple[float, float, float]:
        """(ratio of medians, min and max of the per-round ratios) of ``name`` over
        ``reference``."""
        per_round = self.round_ratios(name, reference)
        return self.median(name) / self.median(reference), min(per_round), max(per_round)

    def round_ratios(self, name: str, reference: str) -> list[float]:
        """The per-round ratios of ``name`` over ``reference`` (each round's median over the
        reference's in the same round: the two ran next to each other in time)."""
        return [a / b for a, b in zip(self.rounds[name], self.rounds[reference], strict=True)]

    def round_ratio_quartiles(self, name: str, reference: str) -> tuple[float, float, float]:
        """(median, first and third quartile) of the per-round ratios: under load that changes
        from second to second, steadier than the ratio of the overall medians."""
        per_round = self.round_ratios(name, reference)
        if len(per_round) < 2:
            return per_round[0], per_round[0], per_round[0]
        q1, q2, q3 = statistics.quantiles(per_round, n=4, method="inclusive")
        return q2, q1, q3


def interleaved(functions: Mapping[str, Callable[[], object]], *, rounds: int = 5,
                repeats: int = 3, warmup: int = 2) -> Timings:
    """Time each zero-argument function, interleaved (see the module docstring)."""
    names = list(functions)
    for name in names:
        for _ in range(warmup):
            functions[name]()
    out = Timings({n: [] for n in names}, {n: [] for n in names})
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times = []
            for _ in range(repeats):
                tic = time.perf_counter()
                functions[name]()
                times.append(time.perf_counter() - tic)
            out.runs[name].extend(times)
            out.rounds[name].append(statistics.median(times))
    return out


def machine() -> dict:
    """CPU model, cores, torch/Pyro versions, torch threads and the load average now."""
    import pyro

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_1min": round(load[0], 2),
    }


def parse_threads(value: int | None) -> int:
    """Set torch's intra-op threads (``None``: leave them) and return the number in use."""
    if value is not None:
        torch.set_num_threads(int(value))
    return torch.get_num_threads()


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process: large blocks from the heap rather
    than from a fresh ``mmap`` each, and no trimming of the heap's top. Without this, every
    tensor above the mmap threshold is mapped, page-faulted in and unmapped again at every
    step. Same effect as ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=...`` in the
    environment. Returns False where glibc's ``mallopt`` is not available."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest allowed value
    ok &= libc.mallopt(m_trim_threshold, 2**31 - 1)
    ok &= libc.mallopt(m_top_pad, 256 * 1024 * 1024)
    return bool(ok)
