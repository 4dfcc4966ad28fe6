"""Count the instructions of each innermost loop in a compiled kernel object, from its disassembly.

For the ARM kernels, which cannot be timed on the x86 machines this project is developed on: the figures in
docs/kernels.md ("instructions per 256 weights") come from this tool run on the cross-built objects. It runs
``objdump -d`` on one object file, finds every backward branch, and prints each innermost loop it closes:
its function, its length in instructions, how many are vector multiply-adds (sdot, smlal/smlal2, vpmaddubsw,
vpdpbusd), loads and stores, and how many of those address the stack (spills), and, with --show N, loop N's
instructions. Which loop is which tile is read off the counts (a two-row GEMV tile of the 2-bit dotprod
kernel has 16 sdot per iteration, one block of two rows, 256 weights); the tool does not guess.

Not a performance model: it counts instructions, it does not schedule them. With ``--mca CPU`` it also hands each
loop body (branches and nops dropped) to LLVM's static scheduler, ``llvm-mca -mcpu=CPU``, and prints the cycles per
iteration it predicts and the busiest resource: a model of the core's pipes, not a measurement, used in
docs/kernels.md to say what bounds the x86 loops (``--mca znver3`` for Zen 3).

    cmake -S . -B build/aarch64 --toolchain cmake/aarch64-linux-gnu.cmake -DBITNET_PYTHON=OFF
    cmake --build build/aarch64
    python tools/bench/loop_insns.py build/aarch64/CMakeFiles/bitnet_kernels.dir/cpp/ternary_neon_dotprod.cpp.o
    python tools/bench/loop_insns.py --objdump objdump --show 3 \
        build/ct/CMakeFiles/bitnet_kernels.dir/cpp/ternary_avx2.cpp.o
    python tools/bench/loop_insns.py --objdump objdump --mca znver3 \
        build/ct/CMakeFiles/bitnet_kernels.dir/cpp/ternary_avx2_asm.cpp.o
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter

MULTIPLY_ADDS = ("sdot", "udot", "smlal", "smlal2", "umlal", "umlal2", "sadalp", "vpmaddubsw", "vpdpbusd")
_FUNC = re.compile(r"^([0-9a-f]+) <(.*)>:$")
_INSN = re.compile(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$")
_TARGET = re.compile(r"\b([0-9a-f]+) <")


def disassemble(objdump: str, path: str) -> list[tuple[str, int, str, str]]:
    """(function, address, mnemonic, operands) of every instruction in path."""
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", path], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"{objdump} failed on {path}: {last}")
    insns, func = [], "?"
    for line in out.stdout.splitlines():
        m = _FUNC.match(line)
        if m:
            func = m.group(2)
            continue
        m = _INSN.match(line)
        if m:
            insns.append((func, int(m.group(1), 16), m.group(2), m.group(3)))
    return insns


def innermost_loops(insns) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every loop that contains no other loop."""
    index = {(f, a): i for i, (f, a, _, _) in enumerate(insns)}
    loops = []
    for i, (f, a, mnem, ops) in enumerate(insns):
        if not (mnem.startswith(("b.", "j")) or mnem in ("b", "cbz", "cbnz", "tbz", "tbnz")):
            continue
        t = _TARGET.search(ops)
        if t and int(t.group(1), 16) <= a and (f, int(t.group(1), 16)) in index:
            loops.append((index[(f, int(t.group(1), 16))], i))
    return [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]


def touches_memory(mnem: str, ops: str) -> bool:
    """A load or store: an AArch64 ld*/st* with an address, or an x86 instruction with a memory operand."""
    return (mnem.startswith(("ld", "st")) and "[" in ops) or "(%" in ops


def touches_stack(ops: str) -> bool:
    return "[sp" in ops or "%rsp)" in ops


_MCA_CYCLES = re.compile(r"^Total Cycles:\s+(\d+)", re.M)
_MCA_ITERS = re.compile(r"^Iterations:\s+(\d+)", re.M)


def mca(llvm_mca: str, cpu: str, body, iterations: int = 200) -> str:
    """llvm-mca's predicted cycles per iteration of one loop body, and its busiest resource, as one string."""
    lines = [
        f"{mnem} {ops}".strip()
        for _, _, mnem, ops in body
        if not mnem.startswith(("j", "b.", "nop")) and mnem not in ("b", "cbz", "cbnz", "tbz", "tbnz")
    ]
    out = subprocess.run(
        [llvm_mca, f"-mcpu={cpu}", f"-iterations={iterations}", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        return f"llvm-mca failed: {last}"
    cycles, iters = _MCA_CYCLES.search(out.stdout), _MCA_ITERS.search(out.stdout)
    if not (cycles and iters):
        return "llvm-mca printed no cycle count"
    # "Resource pressure per iteration:" is a header line of resource indices, then one line of numbers
    text = out.stdout.split("Resource pressure per iteration:", 1)[-1].strip().splitlines()
    names = dict(re.findall(r"^\[([\d.]+)\]\s+-\s+(\S+)", out.stdout, re.M))
    busiest = ""
    if len(text) >= 2:
        idx = re.findall(r"\[([\d.]+)\]", text[0])
        vals = [float(v) if v != "-" else 0.0 for v in text[1].split()]
        if idx and len(idx) == len(vals):
            i = max(range(len(vals)), key=vals.__getitem__)
            busiest = f", busiest {names.get(idx[i], idx[i])} {vals[i]:.2f} cycles"
    return f"{int(cycles.group(1)) / int(iters.group(1)):.2f} cycles/iteration{busiest}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "object", help="an object file, e.g. build/aarch64/CMakeFiles/bitnet_kernels.dir/cpp/ternary_neon.cpp.o"
    )
    ap.add_argument(
        "--objdump",
        default="aarch64-linux-gnu-objdump",
        help="the objdump to use (default aarch64-linux-gnu-objdump; objdump for x86 objects)",
    )
    ap.add_argument("--show", type=int, default=None, metavar="N", help="also print the instructions of loop N")
    ap.add_argument(
        "--mca",
        default=None,
        metavar="CPU",
        help="also print llvm-mca's predicted cycles per iteration for CPU (e.g. znver3)",
    )
    ap.add_argument("--llvm-mca", default="llvm-mca", help="the llvm-mca to use with --mca (default llvm-mca)")
    args = ap.parse_args(argv)
    if args.mca and shutil.which(args.llvm_mca) is None:
        print(f"error: {args.llvm_mca} not found; install llvm or drop --mca", file=sys.stderr)
        return 2
    if shutil.which(args.objdump) is None:
        print(f"error: {args.objdump} not found; install binutils-aarch64-linux-gnu or pass --objdump", file=sys.stderr)
        return 2
    try:
        insns = disassemble(args.objdump, args.object)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loops = innermost_loops(insns)
    if not loops:
        print(f"error: no loops found in {args.object}", file=sys.stderr)
        return 2
    for n, (first, last) in enumerate(loops):
        body = insns[first : last + 1]
        counts = Counter(mnem for _, _, mnem, _ in body)
        macs = ", ".join(f"{k} {counts[k]}" for k in MULTIPLY_ADDS if counts[k])
        memory = sum(1 for _, _, mnem, ops in body if touches_memory(mnem, ops))
        stack = sum(1 for _, _, mnem, ops in body if touches_memory(mnem, ops) and touches_stack(ops))
        print(f"loop {n}: {body[0][0][:60]:60} {len(body):4} insns, {memory:3} memory ({stack} stack), {macs}")
        if args.mca:
            print(f"    llvm-mca -mcpu={args.mca}: {mca(args.llvm_mca, args.mca, body)}")
        if n == args.show:
            for _, addr, mnem, ops in body:
                print(f"    {addr:6x}  {mnem:10} {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
