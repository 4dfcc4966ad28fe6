"""The machine a measurement ran on, described once for every benchmark and experiment report.

``describe()`` gives the CPU's model name, the instruction sets our kernels are built on that the CPU reports
(avx2, fma, avx512f/bw/vl, avx512_vnni; asimd and asimddp on ARM), the cores this process may use, the OS and
architecture, and the Python and torch versions; ``summary()`` puts it on one line. The CPU is read from
Linux's /proc/cpuinfo (lscpu names ARM cores, whose cpuinfo has no model name) or macOS's sysctl.

What this is not: the kernels' dispatcher. ``runtime.kernels.supported_backends()`` says what the built
extension can run here; this says what the CPU reports, and works where the extension is not built. It reads
the machine only: it imports nothing from the package.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

# The CPU features the kernels dispatch on (cpp/dispatch.cpp), in Linux's /proc/cpuinfo spelling.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "asimd", "asimddp")
# macOS reports them as sysctl keys, 1 when present.
SYSCTL_FLAGS = {
    "hw.optional.avx2_0": "avx2",
    "hw.optional.fma": "fma",
    "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512bw": "avx512bw",
    "hw.optional.avx512vl": "avx512vl",
    "hw.optional.avx512vnni": "avx512_vnni",
    "hw.optional.neon": "asimd",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.armv8_2_dotprod": "asimddp",
}


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """(model name or None, every feature flag) from the text of Linux's /proc/cpuinfo. x86 lists its flags
    under ``flags``, ARM under ``Features``; ARM has no model name."""
    name: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            continue
        if key == "model name" and name is None and value.strip():
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


def parse_lscpu(text: str) -> str | None:
    """The ``Model name:`` of lscpu's output (newer versions indent it under the vendor), or None."""
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Model name" and value.strip():
            return value.strip()
    return None


def parse_sysctl_flags(text: str) -> set[str]:
    """The kernel-relevant flags that ``sysctl hw.optional`` (macOS) reports as 1."""
    found: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip() == "1" and key.strip() in SYSCTL_FLAGS:
            found.add(SYSCTL_FLAGS[key.strip()])
    return found


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name, never empty: the architecture (e.g. aarch64) when nothing names it."""
    name, _ = parse_cpuinfo(_cpuinfo())
    if name is None and sys.platform.startswith("linux"):
        name = parse_lscpu(_run(["lscpu"]))
    if name is None and sys.platform == "darwin":
        name = _run(["sysctl", "-n", "machdep.cpu.brand_string"]).strip() or None
    return name or platform.processor() or platform.machine() or "unknown CPU"


def isa_flags() -> list[str]:
    """The KERNEL_FLAGS this CPU reports, in that order (empty where the OS says nothing we can read)."""
    _, flags = parse_cpuinfo(_cpuinfo())
    if not flags and sys.platform == "darwin":
        flags = parse_sysctl_flags(_run(["sysctl", "hw.optional"]))
    return [f for f in KERNEL_FLAGS if f in flags]


def cores() -> int:
    """The logical CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe() -> dict:
    """The machine as a JSON-able dict: cpu, isa, cores, system, python, torch (None if torch is missing)."""
    try:
        import torch  # lazy: the CPU part works without torch, and importing it takes a second

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "cpu": cpu_name(),
        "isa": isa_flags(),
        "cores": cores(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch_version,
    }


def summary(desc: dict | None = None) -> str:
    """One line, e.g. ``AMD EPYC (Linux x86_64; avx2 fma avx512f; 2 cores), Python 3.11.2, torch 2.13.0``."""
    d = describe() if desc is None else desc
    isa = " ".join(d["isa"]) or "no kernel ISA flags reported"
    return (
        f"{d['cpu']} ({d['system']}; {isa}; {d['cores']} core{'s' * (d['cores'] != 1)}), "
        f"Python {d['python']}, torch {d['torch'] or 'not installed'}"
    )
