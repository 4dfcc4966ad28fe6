"""tools/bench/loop_insns.py on an object file compiled here: it finds the innermost loop, counts its multiply-adds
and memory operands, and with --mca hands it to llvm-mca (skipped where gcc, objdump or llvm-mca is missing)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "bench" / "loop_insns.py"

# Two vpmaddubsw a step, one with a memory operand: the counts the tool must report.
LOOP = r"""
void loop(const unsigned char* x, long n, void* out) {
  __asm__ volatile(
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "1:\n\t"
      "vmovdqu (%[x]), %%ymm1\n\t"
      "vpmaddubsw %%ymm1, %%ymm1, %%ymm2\n\t"
      "vpmaddubsw 32(%[x]), %%ymm1, %%ymm3\n\t"
      "vpaddw %%ymm2, %%ymm0, %%ymm0\n\t"
      "vpaddw %%ymm3, %%ymm0, %%ymm0\n\t"
      "addq $64, %[x]\n\t"
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "vmovdqu %%ymm0, (%[out])\n\t"
      "vzeroupper"
      : [x] "+r"(x), [n] "+r"(n) : [out] "r"(out) : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3");
}
"""

needs_x86_tools = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not (shutil.which("gcc") and shutil.which("objdump")),
    reason="needs an x86-64 machine with gcc and objdump",
)


@pytest.fixture(scope="module")
def obj(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("loop")
    (d / "loop.c").write_text(LOOP)
    subprocess.run(["gcc", "-O2", "-c", str(d / "loop.c"), "-o", str(d / "loop.o")], check=True)
    return d / "loop.o"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


@needs_x86_tools
def test_counts_the_loop(obj):
    out = run("--objdump", "objdump", "--show", "0", str(obj))
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("loop 0: loop") and "vpmaddubsw 2" in first and " 2 memory (0 stack)" in first, first
    assert "vpmaddubsw" in out.stdout and ("jne" in out.stdout or "jnz" in out.stdout)  # --show prints the body


@needs_x86_tools
@pytest.mark.skipif(shutil.which("llvm-mca") is None, reason="needs llvm-mca")
def test_mca_predicts_cycles(obj):
    out = run("--objdump", "objdump", "--mca", "znver3", str(obj))
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[1]
    assert line.strip().startswith("llvm-mca -mcpu=znver3:") and "cycles/iteration" in line and "busiest" in line, line
    cycles = float(line.split(":")[1].split()[0])
    assert 1.0 <= cycles <= 4.0, line  # 2 multiplies on 2 multiply pipes + adds: about 1-2 cycles a step


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = run("--objdump", "objdump", str(tmp_path / "nope.o"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and missing.stderr.startswith("error:")
    no_mca = run("--objdump", "objdump", "--mca", "znver3", "--llvm-mca", "no-such-llvm-mca", str(tmp_path / "x.o"))
    assert no_mca.returncode == 2 and "no-such-llvm-mca not found" in no_mca.stderr
