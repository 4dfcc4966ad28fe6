"""The documentation says what the code is: the module map is current, and what the text cites exists.

- docs/modules.md's generated block equals what ``python tests/_module_map.py`` would write now;
- every file path cited in a comment or docstring (bitnet_ref/, tests/, tools/, cpp/), in docs/, README.md and
  the build files exists in the repository, and every ``bitnet_ref.x.y`` or ``module.name`` reference names a
  real module and something defined in it, so a move or a rename cannot leave the text behind;
- no machine paths (/work/..., /root/..., /tmp/...) and no "the seed" (the project's words are "the debugging
  report": docs/modules.md says what it was);
- the commands, imports and console scripts README.md and docs/ show exist, and their links reach a file and a
  heading;
- README.md stays within 200 lines, and its set-up command is the one .ci/run runs.

A cited path resolves against the repository root, the citing file's folder, bitnet_ref/, cpp/ or tests/. Bare
``name.md`` is not checked (run outputs such as ``report.md`` are named that way); paths under runs/ and build/
are outputs of commands, and an upper-case first folder (OUT/, RUN/) is a placeholder. Files of other projects
are cited with the project's name (EXTERNAL).
"""

from __future__ import annotations

import ast
import difflib
import io
import re
import tokenize
from pathlib import Path

import _module_map
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bitnet_ref"

# files of other projects, cited in comments beside the project's name
EXTERNAL = {
    "src/models/bitnet.cpp",  # llama.cpp's bitnet graph
    "src/llama-graph.cpp",  # llama.cpp
    "ggml-common.h",  # ggml's block structs (TQ2_0)
    "integrations/bitnet.py",  # transformers' BitNet integration
    "src/ggml-bitnet-mad.cpp",  # microsoft/BitNet (bitnet.cpp)
    "utils/convert-hf-to-gguf-bitnet.py",  # microsoft/BitNet's converter (bitnet-b1.58, I2_S)
    "utils/codegen_tl2.py",  # microsoft/BitNet's kernel-header generator
    "include/bitnet-lut-kernels.h",  # microsoft/BitNet's generated kernel header
    "setup_env.py",  # microsoft/BitNet's setup script
    "ggml/include/gguf.h",  # llama.cpp's GGUF container
    "linux/arch/arm64/include/uapi/asm/hwcap.h",  # the Linux kernel's HWCAP bits
    "avx512fintrin.h",  # GCC's intrinsics header
    # public BitLinear layers read and checked in docs/conformance-real-code.md, each cited with its repository
    "bitnet/bitlinear.py",  # kyegomez/BitNet
    "bitnet/bitbnet_b158.py",  # kyegomez/BitNet
    "experiments/bitnet/bitnet.py",  # joey00072/ohara
    "bitnet_llama/module.py",  # Beomi/BitNet-Transformers
    "bitlinear/bitlinear.py",  # schneiderkamplab/bitlinear
    "prototype/quantized_training/bitnet.py",  # pytorch/ao
    "gpu/model.py",  # microsoft/BitNet
    "convert_checkpoint.py",  # microsoft/BitNet
    "integration/BitNet/utils_quant.py",  # microsoft/BitBLAS
    "layers/bitnet.py",  # tiiuae/onebitllms
    "fla/modules/fused_bitlinear.py",  # fla-org/flash-linear-attention
}
PROJECT_NAMES = {"llama.cpp", "bitnet.cpp"}
# dotted names that are not module references: GGUF metadata keys and the checkpoint format tag, HF tensor
# names (model.layers.N...), and a Tokenizer's method
NOT_MODULE_REFS = re.compile(
    r"^(bitnet_ref\.(ckpt|config|approximate|format_version)|model\.(embed_tokens|layers|norm)|tokenizer\.decode)$"
)

PATH = re.compile(r"(?<![\w./*-])((?:[\w.*-]+/)*[\w*-]+\.(?:py|h|cpp|md|sh|cmake|toml))(?![\w/])")
DOTTED = re.compile(r"(?<![\w./])((?:bitnet_ref\.)?[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\.([A-Za-z_]\w*)\b")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|tmp|home|Users|mnt)/")
SEED = re.compile(r"\bseed's\b|\bthe seed\b(?! of\b)", re.IGNORECASE)
LINK = re.compile(r"\]\((?!https?:|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)")
COMMAND = re.compile(r"python -m (bitnet_ref(?:\.\w+)*)")
IMPORT = re.compile(r"(?:^|[;\"'] ?)\s*(?:from (bitnet_ref[\w.]*) import ([\w, ]+)|import (bitnet_ref[\w.]*))")
SCRIPT = re.compile(r"(?<![\w./-])(bitnet-[a-z]+(?:-[a-z]+)*)(?![\w./-])")
NOT_A_NAME = {
    "py",
    "h",
    "cpp",
    "md",
    "json",
    "jsonl",
    "log",
    "pt",
    "bin",
    "gguf",
    "txt",
    "o",
    "so",
    "safetensors",
    "png",
}


def python_text(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    src = path.read_text(encoding="utf-8")
    out = [
        (t.start[0], t.string)
        for t in tokenize.generate_tokens(io.StringIO(src).readline)
        if t.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    out += [(first.lineno + i, s) for i, s in enumerate(first.value.value.splitlines())]
    return out


def cpp_text(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment of a C++ file."""
    out, in_block = [], False
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if in_block:
            out.append((i, line))
            in_block = "*/" not in line
        elif "/*" in line:
            out.append((i, line[line.index("/*") :]))
            in_block = "*/" not in line[line.index("/*") :]
        elif "//" in line:
            out.append((i, line[line.index("//") :]))
    return out


def whole_text(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text(encoding="utf-8").splitlines(), 1))


def prose_text(path: Path) -> list[tuple[int, str]]:
    """A document's lines, without docs/modules.md's generated block (copies of docstrings checked at the source)."""
    lines, out, generated = whole_text(path), [], False
    for i, text in lines:
        generated = (generated or text == _module_map.BEGIN) and text != _module_map.END
        if not generated and text != _module_map.END:
            out.append((i, text))
    return out


def cited_texts() -> dict[Path, list[tuple[int, str]]]:
    """Every piece of prose this test reads, by file."""
    out: dict[Path, list[tuple[int, str]]] = {}
    for folder in ("bitnet_ref", "tests", "tools", "cpp"):
        for p in sorted((ROOT / folder).rglob("*")):
            if p == Path(__file__).resolve():  # this file names what it forbids
                continue
            if p.suffix == ".py":
                out[p] = python_text(p)
            elif p.suffix in (".h", ".cpp"):
                out[p] = cpp_text(p)
    for p in [
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "README.md",
        ROOT / "CMakeLists.txt",
        ROOT / ".ci" / "run",
    ]:
        if p.is_file():
            out[p] = prose_text(p)
    return out


def resolves(ref: str, cited_in: Path) -> bool:
    if ref in EXTERNAL or ref in PROJECT_NAMES or ref.startswith(("runs/", "build/")) or ref.split("/")[0].isupper():
        return True  # another project's file, a command's output, or a placeholder such as OUT/report.md
    if "/" not in ref and ref.endswith(".md"):
        return True
    bases = [ROOT, cited_in.parent, PKG, ROOT / "cpp", ROOT / "tests"]
    if "*" in ref:
        found = [p for b in bases for p in b.glob(ref)]
    else:
        found = [b / ref for b in bases if (b / ref).exists()]
    return any(p.resolve().is_relative_to(ROOT) for p in found)  # ../ may not leave the repository


def where(p: Path, line: int) -> str:
    return f"{p.relative_to(ROOT).as_posix()}:{line}"


def module_names() -> dict[str, set[str]]:
    """Every package module by dotted name, with the names it defines (and its submodules)."""
    mods: dict[str, set[str]] = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        names: set[str] = set()
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = names
    for m in list(mods):
        parent, _, leaf = m.rpartition(".")
        if parent in mods:
            mods[parent].add(leaf)
    return mods


def bad_dotted(ref: str, name: str, mods: dict[str, set[str]], by_leaf: dict[str, list[str]]) -> bool:
    if name in NOT_A_NAME or NOT_MODULE_REFS.match(f"{ref}.{name}"):
        return False
    if ref.startswith("bitnet_ref"):
        if f"{ref}.{name}".split(".")[1] in ("_core", "_bench"):  # the C++ extensions: no Python source to read
            return False
        return ref not in mods or name not in mods[ref]
    candidates = by_leaf.get(ref.rpartition(".")[2]) if "." not in ref else None
    return candidates is not None and not any(name in mods[c] for c in candidates)


def test_module_map_is_current():
    on_disk = _module_map.DOC.read_text(encoding="utf-8")
    fresh = _module_map.regenerate(on_disk)
    if on_disk != fresh:
        diff = difflib.unified_diff(on_disk.splitlines(), fresh.splitlines(), "on disk", "generated", n=0, lineterm="")
        pytest.fail(
            "docs/modules.md is out of date: run `python tests/_module_map.py` and commit it\n" + "\n".join(diff)
        )


def test_every_cited_path_exists():
    bad = []
    for p, lines in cited_texts().items():
        for i, text in lines:
            bad += [f"{where(p, i)}: {m.group(1)}" for m in PATH.finditer(text) if not resolves(m.group(1), p)]
    assert not bad, "cited paths that do not exist in the repository:\n" + "\n".join(bad)


def test_every_module_reference_names_something_real():
    mods = module_names()
    by_leaf: dict[str, list[str]] = {}
    for m in mods:
        by_leaf.setdefault(m.rpartition(".")[2], []).append(m)
    bad = []
    for p, lines in cited_texts().items():
        for i, text in lines:
            for m in DOTTED.finditer(text):
                ref, name = m.group(1), m.group(2)
                if bad_dotted(ref, name, mods, by_leaf):
                    bad.append(f"{where(p, i)}: {ref}.{name}")
    assert not bad, "references to modules or names that do not exist:\n" + "\n".join(bad)


def test_no_machine_paths_and_no_seed():
    bad = []
    for p, lines in cited_texts().items():
        for i, text in lines:
            if MACHINE_PATH.search(text):
                bad.append(f"{where(p, i)}: a machine path: {text.strip()[:100]}")
            if SEED.search(text):
                bad.append(f"{where(p, i)}: 'the seed' (say 'the debugging report'): {text.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_documented_commands_and_imports_exist():
    """``python -m bitnet_ref...``, ``from bitnet_ref... import ...`` and the ``bitnet-*`` console scripts that
    README.md and docs/ show are runnable modules, real names and scripts pyproject.toml installs."""
    mods = module_names()
    scripts = set(re.findall(r"^(bitnet-[a-z-]+) = ", (ROOT / "pyproject.toml").read_text(), re.M))
    bad = []
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for i, text in whole_text(p):
            for m in COMMAND.finditer(text):
                if not runnable(m.group(1), mods):
                    bad.append(f"{where(p, i)}: python -m {m.group(1)} is not a runnable module")
            for m in IMPORT.finditer(text):
                module, names = m.group(1) or m.group(3), m.group(2)
                wanted = [n.split()[0] for n in (names or "").split(",") if n.strip()]  # "name as alias" -> name
                missing = [n for n in wanted if n not in mods.get(module, ())]
                if module not in mods or missing:
                    bad.append(f"{where(p, i)}: {m.group(0).strip()} ({module} has no {missing or 'module'})")
            bad += [f"{where(p, i)}: no console script {s}" for s in SCRIPT.findall(text) if s not in scripts]
    assert not bad, "\n".join(bad)


def runnable(module: str, mods: dict[str, set[str]]) -> bool:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__main__.py").is_file():
        return True
    return module in mods and '__name__ == "__main__"' in path.with_suffix(".py").read_text(encoding="utf-8")


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            out.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return out


def test_markdown_links_reach_a_file_and_a_heading():
    bad = []
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for i, text in whole_text(p):
            for target, anchor in LINK.findall(text):
                doc = (p.parent / target).resolve() if target else p
                if not doc.exists() or not doc.resolve().is_relative_to(ROOT):
                    bad.append(f"{where(p, i)}: {target} does not exist")
                elif anchor and doc.suffix == ".md" and anchor not in anchors(doc):
                    bad.append(f"{where(p, i)}: {target}#{anchor}: no such heading")
    assert not bad, "\n".join(bad)


def test_readme_is_short_and_its_setup_command_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 200, f"README.md has {len(readme)} lines; move detail into docs/ (at most 200)"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert len(ci) == 1, ci
    setup = [line.split("#")[0].strip() for line in readme if line.startswith("pip install torch")]
    assert setup[:1] == ci, f"README's set-up command {setup[:1]} differs from .ci/run's {ci}"
