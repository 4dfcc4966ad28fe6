"""The runtimes crosscheck can run, each as ``logits(model_path, token_ids, *, incremental, threads) -> (T, V)``.

A runtime is given token ids and returns the logits it computes at every position: with ``incremental=False`` the
whole sequence in one batch (its prefill path), with ``incremental=True`` one token at a time through its KV
cache (its decode path); ``threads`` is its thread count. They run inside crosscheck's child process (child.py),
never in the checker itself.

- ``llama.cpp``: llama-cpp-python (``pip install -e ".[llama]"``), F32 KV cache (its default F16 cache would be a
  difference of its own), ``logits_all``, the batch as large as the sequence for the prefill;
- ``transformers``: ``AutoModelForCausalLM`` in float32 on a Hugging Face directory, with ``past_key_values``
  for the incremental path;
- ``bitnet_ref``: bitnet_ref's exact packed path of the file (the recipe, per-token int8);
- ``bitnet_ref-fused``: bitnet_ref's fused whole-token C++ step (runtime/fused.py), which runs positions one at a
  time either way;
- a user's own: ``module:function`` (or ``PATH:function``, PATH a Python file) with that signature; ``incremental`` and
  ``threads`` are passed only if the function accepts them (else those checks are skipped, and said so).

``EXPECTS`` says which activation quantization each built-in computes, so the reference it is compared with does
the same (runtime/act_modes.py): "file" is what the file's own runtime computes, per tensor type.
What this is not: the comparison (agreement.py) or the process handling (child.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

import numpy as np

BUILTIN = ("llama.cpp", "transformers", "bitnet_ref", "bitnet_ref-fused")
EXPECTS = {"llama.cpp": "file", "transformers": "token", "bitnet_ref": "token", "bitnet_ref-fused": "token"}
GGML_TYPE_F32 = 0


def llama_cpp_logits(model_path: str, ids: list[int], *, incremental: bool = False, threads: int = 1) -> np.ndarray:
    import llama_cpp

    n = len(ids)
    llm = llama_cpp.Llama(
        model_path=model_path,
        n_ctx=max(n, 16),
        n_batch=1 if incremental else max(n, 1),
        n_ubatch=1 if incremental else max(n, 1),
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    if incremental:
        for t in ids:
            llm.eval([t])
    else:
        llm.eval(ids)
    return np.array(llm.scores[:n], dtype=np.float32)


def transformers_logits(model_path: str, ids: list[int], *, incremental: bool = False, threads: int = 1) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        if not incremental:
            return model(torch.tensor([ids])).logits[0].float().numpy()
        past, out = None, []
        for t in ids:
            r = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
            past = r.past_key_values
            out.append(r.logits[0, -1].float().numpy())
        return np.stack(out)


def _bitnet_ref(model_path: str, ids: list[int], incremental: bool, threads: int, fused: bool) -> np.ndarray:
    import torch

    from bitnet_ref.decode.loader import load_file

    torch.set_num_threads(threads)
    model = load_file(model_path, threads=threads, fused=fused).model
    idx = torch.tensor([ids])
    with torch.no_grad():
        if not incremental:
            return model(idx)[0][0].numpy()
        cache = model.new_cache(1, len(ids))
        return torch.cat([model(idx[:, t : t + 1], cache=cache)[0][0] for t in range(len(ids))]).numpy()


def bitnet_ref_logits(model_path: str, ids: list[int], *, incremental: bool = False, threads: int = 1) -> np.ndarray:
    return _bitnet_ref(model_path, ids, incremental, threads, fused=False)


def bitnet_ref_fused_logits(
    model_path: str, ids: list[int], *, incremental: bool = False, threads: int = 1
) -> np.ndarray:
    return _bitnet_ref(model_path, ids, incremental, threads, fused=True)


FUNCTIONS = {
    "llama.cpp": llama_cpp_logits,
    "transformers": transformers_logits,
    "bitnet_ref": bitnet_ref_logits,
    "bitnet_ref-fused": bitnet_ref_fused_logits,
}


def resolve(spec: str):
    """The function a runtime name or ``module:function`` / ``PATH:function`` spec names; ValueError (one
    line) if it cannot be imported or is not callable."""
    if spec in FUNCTIONS:
        return FUNCTIONS[spec]
    mod, sep, fn = spec.rpartition(":")
    if not sep or not mod or not fn:
        raise ValueError(f"runtime {spec!r}: give one of {', '.join(BUILTIN)} or module:function")
    try:
        if mod.endswith(".py"):
            s = importlib.util.spec_from_file_location(Path(mod).stem, mod)
            if s is None or s.loader is None:
                raise ImportError(f"cannot load {mod}")
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod)
    except Exception as e:  # a user's module may raise anything on import
        raise ValueError(f"runtime {spec!r}: cannot import {mod} ({type(e).__name__}: {str(e)[:120]})") from None
    f = getattr(module, fn, None)
    if not callable(f):
        raise ValueError(f"runtime {spec!r}: {mod} has no function {fn!r}")
    return f


def offers(f, keyword: str) -> bool:
    """True if the runtime function takes ``keyword`` (or **kwargs)."""
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def available(name: str) -> str | None:
    """None if a built-in runtime can run here, else why not (one phrase)."""
    need = {"llama.cpp": "llama_cpp", "transformers": "transformers"}.get(name)
    if need and importlib.util.find_spec(need) is None:
        return f"{need} is not installed"
    return None
