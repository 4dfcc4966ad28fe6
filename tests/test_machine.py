"""bitnet_ref/machine.py: the CPU's name and kernel flags read from cpuinfo, lscpu and sysctl text, and the
description of this machine, checked against the flags the C++ dispatcher found on its own."""

from __future__ import annotations

import json
import sys

import pytest

from bitnet_ref import machine

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45 128-Core Processor
flags\t\t: fpu vme sse2 avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16

processor\t: 1
model name\t: AMD EPYC 9B45 128-Core Processor
flags\t\t: fpu vme sse2 avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""
LSCPU = """Architecture:             aarch64
  CPU op-mode(s):         32-bit, 64-bit
Vendor ID:                ARM
  Model name:             Neoverse-N1
    Model:                1
"""
SYSCTL = """hw.optional.arm.FEAT_DotProd: 1
hw.optional.neon: 1
hw.optional.avx512f: 0
hw.optional.floatingpoint: 1
"""


def test_x86_cpuinfo_gives_the_name_and_the_flags():
    name, flags = machine.parse_cpuinfo(X86_CPUINFO)
    assert name == "AMD EPYC 9B45 128-Core Processor"
    assert {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"} <= flags
    assert "asimd" not in flags


def test_arm_cpuinfo_has_flags_but_no_name():
    name, flags = machine.parse_cpuinfo(ARM_CPUINFO)
    assert name is None
    assert {"asimd", "asimddp"} <= flags and "avx2" not in flags


def test_lscpu_names_the_indented_model():
    assert machine.parse_lscpu(LSCPU) == "Neoverse-N1"
    assert machine.parse_lscpu("Architecture: x86_64\nModel name:\n") is None


def test_sysctl_flags_are_the_ones_set_to_1():
    assert machine.parse_sysctl_flags(SYSCTL) == {"asimddp", "asimd"}


def test_this_machine_is_described():
    d = machine.describe()
    assert d["cpu"].strip() and d["cores"] >= 1
    assert d["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    import torch

    assert d["torch"] == torch.__version__
    assert set(d["isa"]) <= set(machine.KERNEL_FLAGS)
    assert d["isa"] == [f for f in machine.KERNEL_FLAGS if f in d["isa"]]  # in KERNEL_FLAGS order
    assert json.loads(json.dumps(d)) == d
    line = machine.summary(d)
    assert line.startswith(d["cpu"]) and f"{d['cores']} core" in line and "\n" not in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_the_flags_agree_with_the_kernels_own_detection():
    """The C++ dispatcher asks the CPU itself (cpuid, getauxval); /proc/cpuinfo must report what it needs for
    every SIMD backend it chose to support."""
    from bitnet_ref.runtime import kernels

    if not kernels.available():
        pytest.skip("the C++ extension is not built")
    needs = {
        "avx2": {"avx2", "fma"},
        "avx512vnni": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
        "dotprod": {"asimd", "asimddp"},
        "neon": {"asimd"},
    }
    isa = set(machine.isa_flags())
    for backend in kernels.supported_backends():
        assert needs.get(backend, set()) <= isa, (backend, isa)
