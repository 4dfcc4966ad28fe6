"""The package's import graph: no cycles, and no subsystem importing one above it.

Every import is read from the AST of every module, function-level imports included (a lazy import is still a
dependency). The layers, lowest first, are written down once here and in docs/modules.md:

    core (bitnet_ref/*.py)  <  data  <  train
    core  <  runtime  <  formats  <  decode  <  doctor
                                          decode  <  crosscheck   (reads formats, runs runtime and decode)
    core  <  conform
    core  <  watch  <  doctor
    formats  <  train    (a warm start, --init-from, reads a Hugging Face Llama through formats/)

``watch`` (the health hooks for other trainers' loops) stands on the core alone: it records what health.py and
diversity.py measure into the metrics.jsonl schema the doctor reads; the doctor may use it, never the reverse.

A module may import its own subpackage and the layers below it. ``train`` reading ``formats`` joins the first
two chains: formats/ is where other tools' files are read, and the trainer's warm start is one more consumer of
it, as decode/ is (formats/ never imports train/, so no cycle can form). The package's ``__init__.py`` (its
lazy ``load``) and the two commands kept at their old names (``bitnet_ref.export``, ``bitnet_ref.decode_probe``) are
entry points that stand above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bitnet_ref"
ENTRY_POINTS = {"bitnet_ref", "bitnet_ref.export", "bitnet_ref.decode_probe"}
# what each layer may import besides itself
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "train": {"core", "data", "formats"},
    "runtime": {"core"},
    "formats": {"core", "data", "runtime"},
    "decode": {"core", "data", "runtime", "formats"},
    "doctor": {"core", "data", "train", "runtime", "formats", "decode", "watch"},
    "crosscheck": {"core", "data", "runtime", "formats", "decode"},
    "conform": {"core"},
    "watch": {"core"},
}
EXTENSIONS = {"bitnet_ref._core", "bitnet_ref._bench"}  # the C++ modules: leaves, importable from anywhere


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) else "core"


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``mod`` imports, anywhere in its body."""
    out = set()
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known and n not in EXTENSIONS:
                n = n.rpartition(".")[0]
            if n and n in known and n != mod:
                out.add(n)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_every_subpackage_has_a_layer():
    subpackages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert subpackages == set(ALLOWED) - {"core"}


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_import():
    bad = []
    for mod, deps in graph().items():
        if mod in ENTRY_POINTS:
            continue
        for d in deps:
            if d in ENTRY_POINTS and d != "bitnet_ref":
                bad.append(f"{mod} -> {d} (a command kept for its old name)")
            elif d != "bitnet_ref" and layer(d) != layer(mod) and layer(d) not in ALLOWED[layer(mod)]:
                bad.append(f"{mod} ({layer(mod)}) -> {d} ({layer(d)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_private_name_crosses_a_module():
    bad = []
    for mod, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bitnet_ref"):
                bad += [
                    f"{mod}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                    and not a.name.startswith("__")
                    and f"bitnet_ref.{a.name}" not in EXTENSIONS
                ]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("cyclic", [{"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a": {"a2"}, "a2": {"a"}}])
def test_the_cycle_finder_finds_cycles(cyclic):
    assert find_cycle(cyclic) is not None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
