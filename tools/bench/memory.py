"""What the benchmarks measure about memory: this process's resident memory, and the streaming read bandwidth that
their roofline columns divide by.

``resident_mb`` reads the peak (VmHWM) or current (VmRSS) resident set in MB (10^6 bytes, like every other MB the
benchmarks print); ``read_bandwidth`` is the best of a few probes of ``bitnet_ref._bench`` (cpp/bench/membench.cpp).
What this is not: the machine's description (``bitnet_ref.machine``), or a timer of any kernel.
"""

from __future__ import annotations

import sys


def resident_mb(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MB. From /proc/self/status:
    getrusage's ru_maxrss would carry the parent's peak across exec on Linux; it is the fallback elsewhere, where
    it can only give the peak (kilobytes on Linux, bytes on macOS)."""
    if field not in ("VmHWM", "VmRSS"):
        raise ValueError(f"field must be VmHWM or VmRSS, got {field!r}")
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":")) * 1024 / 1e6
    except (OSError, StopIteration):
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 1e6 if sys.platform == "darwin" else r * 1024 / 1e6


def read_bandwidth(threads: int, nbytes: int, *, reps: int = 3, tries: int = 3, streams: int = 4) -> float:
    """Streaming read bandwidth in GB/s of an ``nbytes`` buffer at ``threads`` threads, ``streams`` sequential streams
    per thread: the best of ``tries`` probes, each the median of ``reps`` passes. On a shared machine a neighbour can
    only make a probe slower, never faster, so the best one is the closest to what the hardware allows."""
    from bitnet_ref import _bench

    return max(_bench.measure_read_bandwidth(nbytes, threads, reps, streams) for _ in range(tries))
