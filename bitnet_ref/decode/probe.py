"""The decode probe: what does a checkpoint generate when it runs as a real ternary model, and is it healthy?

``python tools/decode_probe.py RUN/ckpt.pt`` (or ``python -m bitnet_ref.decode_probe``, ``python -m
bitnet_ref.decode``) loads the checkpoint through loader.py, which swaps in the packed int8 x 2-bit layers
(runtime/packed.py), decodes prompts from the checkpoint's validation data (default: the trainer's own probe
prompts, so the numbers match its last eval line), and reports:

- the diversity probe of diversity.py over the generated tokens;
- the model's next-token distribution along the samples: mean entropy (nats) and mean top-1 probability;
- context: step, last validation loss (stored), validation loss measured now on ``data.corpus.VAL_WINDOWS`` windows by
  the decoding model, ln(vocab), unigram entropy of the training data;
- a verdict, healthy / collapsed / not learning, with a one-line reason;
- speed: decode tokens/s of the packed and the fake-quant torch model on the same prompts, in this run;
- parity: packed vs fake-quant torch forward, greedy tokens and the largest logit difference;
- recompute: each cached path (packed and fake-quant) against a full recompute of the same tokens with no cache
  (``generate.recompute_check``): greedy samples identical to ``generate_reference``'s, the largest logit
  difference, tokens the full forward does not rank first. Parity compares two cached paths, so a fault both
  share (a RoPE offset, a cache mask) shows only here.

The report prints as a table, or ``--json`` as one object, and is written atomically to ``decode_probe.json``
beside the checkpoint (``--no-save`` skips that); the doctor reads its ``parity`` and ``recompute`` objects.
Exit status: 0 done, 1 parity or recompute failure (a decode path disagrees with training: a bug), 2 bad input.

Verdict rules, first match wins (each upper-case name is a number in thresholds.py, documented there):

0. **cache mismatch**: a cached path disagrees with the full recompute (``RECOMPUTE_REL_TOL``): whatever the
   samples look like, they are not what the model computes; the verdict the samples would get is a note.
1. **collapsed**: the model is near-certain of one token whatever the context: mean top-1 probability along the
   samples >= ``COLLAPSE_TOP1`` and the generated tokens are >= ``COLLAPSE_TOP_SHARE`` one token or at most
   ``COLLAPSE_UNIQUE`` distinct tokens over all samples.
2. **not learning**: validation loss > unigram entropy - ``PROBE_LOSS_MARGIN`` nats: the model does no better
   than a context-free table of token frequencies (a loss within the margin of ln V is no better than uniform
   guessing, and the reason says so). The doctor tells those two apart (its not_learning and stuck_unigram) and
   judges a run's final loss against fractions of them instead (``NEAR_LN_V_FRAC``, ``NEAR_UNIGRAM_FRAC``).
3. **healthy** otherwise: it beats the unigram baseline and is not stuck on one token. Greedy decoding of a small
   model still repeats itself (a loop such as "te te te"); when one token is >= ``REPETITIVE_TOP_SHARE`` of the
   output, a note says so (the doctor notes the same), but repetition under greedy decoding alone is not collapse.

Why these: the unigram entropy is the loss of the best model that ignores context, so beating it is the
least that "has learned something" can mean; the margin covers the noise of a few validation windows.
Collapse is about the model's distribution, not its argmax: a weak model's greedy output loops at low
confidence and sampling from it is diverse; a collapsed one puts nearly all its probability on the same token.

What this is not: a quality benchmark (a healthy verdict says the model is learning, not that it is good).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from functools import partial
from pathlib import Path

import torch

from bitnet_ref import generate as G
from bitnet_ref.checkpoint import CheckpointError, build_model
from bitnet_ref.cli import OneLineParser, run_quietly, whole_at_least
from bitnet_ref.data import corpus as D
from bitnet_ref.data.corpus import val_windows
from bitnet_ref.data.rebuild import reload
from bitnet_ref.decode.loader import BACKENDS, load_for_decode
from bitnet_ref.diversity import diversity, probe_prompts
from bitnet_ref.files import atomic_write
from bitnet_ref.runtime import kernels
from bitnet_ref.runtime import packed as P
from bitnet_ref.runtime.assemble import ACT_CHOICES
from bitnet_ref.runtime.int8_head import HEAD_FORMATS
from bitnet_ref.thresholds import (
    COLLAPSE_TOP1,
    COLLAPSE_TOP_SHARE,
    COLLAPSE_UNIQUE,
    PROBE_LOSS_MARGIN,
    RECOMPUTE_REL_TOL,
    REPETITIVE_TOP_SHARE,
)

REPORT_NAME = "decode_probe.json"
PARITY_MAX_PARAMS = 500_000_000  # a file's torch reference holds its codes as int8: one byte a weight


class ProbeError(ValueError):
    """A user-facing problem with the probe's inputs; one line."""


# ---------------------------------------------------------------------------------------------- the verdict


def verdict(*, val_loss, unigram_entropy, ln_vocab, div: dict, mean_top1: float) -> dict:
    """healthy / collapsed / not learning (or "unknown" with no loss at all), a one-line reason, and notes."""
    notes = []
    one_token = div["top_token_share"] >= COLLAPSE_TOP_SHARE or div["unique_tokens"] <= COLLAPSE_UNIQUE
    if mean_top1 >= COLLAPSE_TOP1 and one_token:
        v = "collapsed"
        reason = (
            f"the model is near-certain of one token whatever the context: mean top-1 probability "
            f"{mean_top1:.2f} >= {COLLAPSE_TOP1} and one token is {div['top_token_share']:.0%} of the output "
            f"({div['unique_tokens']} distinct)"
        )
    elif val_loss is None or unigram_entropy is None:
        v, reason = "unknown", "no validation loss or unigram entropy to judge learning by (data unavailable)"
    elif val_loss > unigram_entropy - PROBE_LOSS_MARGIN:
        v = "not learning"
        near_uniform = ln_vocab is not None and val_loss >= ln_vocab - PROBE_LOSS_MARGIN
        reason = (
            f"val loss {val_loss:.3f} is not below the unigram entropy {unigram_entropy:.3f} - "
            f"{PROBE_LOSS_MARGIN}"
            + (
                f" and is at ln V = {ln_vocab:.3f}: no better than uniform guessing"
                if near_uniform
                else ": no better than a context-free token-frequency table"
            )
        )
    else:
        v = "healthy"
        reason = (
            f"val loss {val_loss:.3f} is {unigram_entropy - val_loss:.3f} nats below the unigram entropy "
            f"{unigram_entropy:.3f}, and no single token dominates with high confidence "
            f"(mean top-1 {mean_top1:.2f})"
        )
    if v != "collapsed" and div["top_token_share"] >= REPETITIVE_TOP_SHARE:
        notes.append(
            f"output is repetitive: one token is {div['top_token_share']:.0%} of it, longest run "
            f"{div['max_repeat_run']} (usual for greedy decoding of a small model; --temperature shows "
            "its distribution)"
        )
    return {"verdict": v, "reason": reason, "notes": notes, "thresholds": thresholds()}


def thresholds() -> dict:
    """The numbers the verdict went by, as recorded in decode_probe.json (the keys predate thresholds.py)."""
    return {
        "collapse_top1": COLLAPSE_TOP1,
        "collapse_top_share": COLLAPSE_TOP_SHARE,
        "collapse_unique": COLLAPSE_UNIQUE,
        "learn_margin_nats": PROBE_LOSS_MARGIN,
        "repetitive_top_share": REPETITIVE_TOP_SHARE,
        "recompute_rel_tol": RECOMPUTE_REL_TOL,
    }


def recompute(paths: dict, prompts, max_new_tokens: int) -> dict:
    """``generate.recompute_check`` for each named cached path ({name: model}), and whether all agree."""
    out = {name: G.recompute_check(m, prompts, max_new_tokens) for name, m in paths.items()}
    return {**out, "ok": all(r["ok"] for r in out.values())}


def recompute_verdict(v: dict, rec: dict) -> dict:
    """The verdict when a cached path disagrees with the full recompute: "cache mismatch", the old one a note."""
    if rec.get("ok") is not False:
        return v
    name, r = next((n, r) for n, r in rec.items() if isinstance(r, dict) and not r["ok"])
    first = r.get("first_disagreement")
    reason = (
        f"cached greedy decoding ({name}) is not what a full recompute of the same tokens gives: "
        f"{r['samples_identical']}/{r['samples']} samples identical, max relative logit difference "
        f"{r['max_rel_logit_diff']:.3g} (tolerance {r['rel_tol']}), {r['disagreements']} token(s) the full "
        "forward does not rank first"
        + (f" (first: sample {first['sample']}, position {first['position']})" if first else "")
        + ": a KV-cache/position bug in the decode path"
    )
    notes = [f"without the cache fault the samples would be judged {v['verdict']}: {v['reason']}", *v["notes"]]
    return {**v, "verdict": "cache mismatch", "reason": reason, "notes": notes}


# ---------------------------------------------------------------------------------------------- the report


def probe_model(
    model, prompts, max_new_tokens, *, temperature=0.0, top_k=None, seed=0, windows=None, ckpt=None
) -> dict:
    """Generation, diversity, next-token stats, measured loss and verdict for one model (no parity, no I/O)."""
    ckpt = ckpt or {}
    g = G.generate(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    div = diversity(g.tokens)
    mean_ent = sum(map(sum, g.entropy)) / g.n_new
    mean_top1 = sum(map(sum, g.top1)) / g.n_new
    per = G.window_losses(model, windows[:, :-1], windows[:, 1:]) if windows is not None else None  # (n,)
    measured = float(per.mean()) if per is not None else None
    se = float(per.std() / len(per) ** 0.5) if per is not None and len(per) > 1 else None
    stored = ckpt.get("last_val_loss")
    loss = measured if measured is not None else stored
    uni = ckpt.get("unigram_entropy")
    lnv = ckpt.get("ln_vocab", math.log(model.cfg.vocab_size))
    return {
        "generation": g,
        "diversity": div,
        "next_token": {"mean_entropy": mean_ent, "mean_top1": mean_top1},
        "context": {
            "step": ckpt.get("step"),
            "last_val_loss": stored,
            "val_loss_measured": measured,
            "val_loss_se": se,  # standard error over the windows (each window's mean loss one sample)
            "val_loss_tokens": None if windows is None else int(windows[:, 1:].numel()),
            "ln_vocab": lnv,
            "unigram_entropy": uni,
            "gain_over_unigram": None if loss is None or uni is None else uni - loss,
        },
        "verdict": verdict(val_loss=loss, unigram_entropy=uni, ln_vocab=lnv, div=div, mean_top1=mean_top1),
    }


def run_tokenizer(checkpoint, ckpt: dict):
    """The tokenizer a ``--tokenizer`` run was trained with: the tokenizer.json beside its checkpoint, checked
    against the sha256 the checkpoint records. None for byte-level and token-file runs."""
    info = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    tok = info.get("tokenizer") if isinstance(info.get("tokenizer"), dict) else None
    if tok is None:
        return None
    from bitnet_ref.data.tokenizer import load_codec

    where = Path(checkpoint)
    path = (where if where.is_dir() else where.parent) / "tokenizer.json"
    if not path.is_file():
        return None  # the data reload below rebuilds it from the recorded spec, if the data is still there
    codec = load_codec(path)
    if codec.sha256 != tok.get("sha256"):
        raise ProbeError(
            f"{path} is not the tokenizer this checkpoint was trained with (sha256 "
            f"{codec.sha256[:16]}, recorded {str(tok.get('sha256'))[:16]})"
        )
    return codec


def _prompts_from_args(args, ckpt, cfg, codec=None):
    """(prompts, source line, corpus or None, data_note). ``codec``: a Hugging Face directory's tokenizer."""
    info = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else None
    corpus, note = None, None
    try:
        if info is None:
            raise D.DataError("the checkpoint records no training data")
        corpus = reload(info)
    except (D.DataError, KeyError, TypeError, OSError) as e:
        note = f"validation data unavailable: {e}"
    tc = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
    byte_level = (info or {}).get("kind", "stdlib") in ("stdlib", "text") and cfg.vocab_size == 256
    if args.prompt is not None or args.prompt_file is not None:
        if args.prompt_file is not None:
            try:
                text = Path(args.prompt_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ProbeError(
                    f"cannot read --prompt-file {args.prompt_file}: {getattr(e, 'strerror', None) or e}"
                ) from None
            src = f"--prompt-file {args.prompt_file}"
        else:
            text, src = args.prompt, "--prompt"
        toks = _encode_prompt(text, byte_level, cfg.vocab_size, codec)
        room = cfg.context - args.max_new_tokens
        if room < 1:
            raise ProbeError(
                f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in context {cfg.context}"
            )
        if len(toks) > room:
            toks, src = toks[-room:], src + f" (last {room} tokens kept: context {cfg.context})"
        return [toks] * (args.samples or 1), src, corpus, note
    if corpus is None:
        raise ProbeError(f"{note}; pass --prompt TEXT or --prompt-file F")
    n = args.samples or int(tc.get("probe_prompts", 4))
    length = min(int(tc.get("probe_prompt_len", 16)), cfg.context - args.max_new_tokens)
    if length < 1:
        raise ProbeError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in context {cfg.context}")
    try:
        prompts = probe_prompts(corpus.val, n, length)
    except ValueError as e:
        raise ProbeError(str(e)) from None
    return prompts, f"validation data: {n} prompts of {length} tokens ({corpus.source})", corpus, note


def _encode_prompt(text, byte_level, vocab, codec=None):
    if codec is not None:
        try:
            toks = codec.encode(text)
        except ValueError as e:
            raise ProbeError(str(e)) from None
        if any(not 0 <= t < vocab for t in toks):
            raise ProbeError(f"prompt token ids must be in [0, {vocab})")
    elif byte_level:
        toks = [int(t) for t in D.encode(text)]
    else:
        try:
            toks = [int(t) for t in text.split()]
        except ValueError:
            raise ProbeError(
                "this checkpoint uses token ids, not bytes: give the prompt as space-separated ids"
            ) from None
        if any(not 0 <= t < vocab for t in toks):
            raise ProbeError(f"prompt token ids must be in [0, {vocab})")
    if not toks:
        raise ProbeError("the prompt is empty")
    return toks


def run(args) -> dict:
    """The whole probe for parsed CLI args; returns the JSON-able report.

    Raises CheckpointError, DecodeError or ProbeError (one line) for unusable input."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        if kernels.available():
            kernels.set_threads(args.threads)
    if args.backend == "packed" and not kernels.available():
        raise G.DecodeError(
            f"--backend packed needs the C++ extension bitnet_ref._core ({kernels.import_error()}); "
            "build it with `pip install --no-build-isolation -e .` in the repository, or use --backend torch"
        )
    loaded = load_for_decode(
        args.checkpoint,
        args.backend,
        args.device,
        threads=args.threads,
        format=args.format,
        head=args.head,
        fused=args.fused,
        act=args.act,
    )
    ckpt, cfg, model = loaded.ckpt, loaded.cfg, loaded.model
    if args.max_new_tokens is None:  # the trainer's probe length, so the numbers match its eval lines
        tc = ckpt.get("train_config") if isinstance(ckpt.get("train_config"), dict) else {}
        args.max_new_tokens = max(1, min(int(tc.get("probe_tokens", 48) or 48), cfg.context - 1))
    codec = loaded.tokenizer or run_tokenizer(args.checkpoint, ckpt)
    prompts, source, corpus, data_note = _prompts_from_args(args, ckpt, cfg, codec)
    codec = codec or (corpus.tokenizer if corpus is not None else None)
    byte_level = cfg.vocab_size == 256 and codec is None and (corpus is None or corpus.byte_level)
    windows = val_windows(corpus.val, cfg.context) if corpus is not None and len(corpus.val) > cfg.context else None

    # a packed twin and a fake-quant reference on the CPU, for parity and the speed comparison
    exact = loaded.backend == "packed" and args.head == "fp32" and not args.fused and args.act == "token"
    if loaded.file_model is not None:  # codes and no latents: the plain-torch recipe model of the codes
        reference, packed, why_not = _file_twins(loaded, args, exact)
    else:
        reference, packed, why_not = build_model(ckpt, args.checkpoint), None, None
        if cfg.quant == "ternary" and kernels.available():
            packed = model if exact else P.to_packed(build_model(ckpt), threads=args.threads, format=args.format)
    for m in filter(None, (model, packed, reference)):  # warm-up: thread pool, allocator, first-call paths
        G.generate(m, [prompts[0][:1]], 2)

    main = probe_model(
        model,
        prompts,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        windows=windows,
        ckpt=ckpt,
    )
    g = main.pop("generation")
    speed = {
        "batch": len(prompts),
        "new_tokens": args.max_new_tokens,
        "threads": args.threads or 1,
        "kernel": kernels.backend() if kernels.available() else None,
        "format": args.format if packed is not None else None,
        "head": args.head,
        "fused": args.fused,
        "decoded_tok_s": g.tok_per_s,
    }
    if packed is not None and reference is not None:
        par, gp, gr = G.parity(packed, reference, prompts, args.max_new_tokens, return_generations=True)
        speed.update(
            packed_tok_s=gp.tok_per_s,
            torch_tok_s=gr.tok_per_s,
            packed_over_torch=gp.tok_per_s / gr.tok_per_s,
            weight_bytes_per_token={
                "packed": P.weight_bytes_per_token(packed)["total"],
                "torch": P.weight_bytes_per_token(reference)["total"],
            },
        )
    else:
        why = why_not or (
            "quant='none' checkpoint: nothing is packed"
            if cfg.quant != "ternary"
            else f"C++ extension unavailable ({kernels.import_error()})"
        )
        par = {
            "tokens_identical": None,
            "max_abs_logit_diff": None,
            "max_rel_logit_diff": None,
            "ok": None,
            "skipped": why,
        }
        speed.update(torch_tok_s=g.tok_per_s if loaded.backend == "torch" else None)
        if reference is None:
            speed.update(torch_tok_s=None)
    paths = {"packed": packed} if packed is not None else {}
    if reference is not None:  # a file read without latents has no fake-quant twin
        paths["fake_quant"] = reference
    rec = recompute(paths, prompts, args.max_new_tokens)
    if model is not packed and loaded.backend == "packed":
        rec["note"] = "the samples were decoded by the fused step or the int8 head: the check covers the exact paths"
    main["verdict"] = recompute_verdict(main["verdict"], rec)
    report = {
        "checkpoint": str(args.checkpoint),
        "backend": loaded.backend,
        "backend_reason": loaded.reason,
        "config": {
            k: getattr(cfg, k)
            for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context", "vocab_size", "quant", "ablate")
        },
        "decoding": {
            "mode": "greedy" if args.temperature <= 0 else "sample",
            "temperature": args.temperature,
            "top_k": args.top_k,
            "seed": args.seed,
            "samples": len(prompts),
            "prompt_tokens": [len(p) for p in prompts],
            "max_new_tokens": args.max_new_tokens,
            "prompts": source,
            "data_note": data_note,
            "device": args.device,
        },
        **main,
        "speed": speed,
        "parity": par,
        "recompute": rec,
        "tokenizer": codec.source if codec is not None else ("bytes" if byte_level else "token ids"),
        "samples": [
            {"prompt": D.text(p, byte_level, codec), "output": D.text(t, byte_level, codec)}
            for p, t in zip(prompts, g.tokens)
        ],
    }
    return _jsonable(report)


def _file_twins(loaded, args, exact: bool):
    """(reference, packed twin, why parity is skipped) for a file read without latents: the reference is the
    plain-torch recipe model of the file's codes (runtime/assemble.ternary_reference), the twin the exact packed
    path; above PARITY_MAX_PARAMS the int8 codes of the torch reference are not held (parity skipped)."""
    from bitnet_ref.decode.loader import read_file

    fm = loaded.file_model
    if fm.cfg.num_params() > PARITY_MAX_PARAMS:
        return (
            None,
            None,
            f"{fm.cfg.num_params():,} parameters: the torch reference of the codes is not built above "
            f"{PARITY_MAX_PARAMS:,}",
        )
    if any(s.block_scales is not None for s in fm.linears.values()):
        return None, None, "the file's blocks carry different scales: the recipe has one per tensor (see crosscheck)"
    if isinstance(fm.floats["tok_emb.weight"], torch.Tensor):
        full = fm
    else:
        full = read_file(args.checkpoint)
    packed = loaded.model if exact else full.model(threads=args.threads)
    return full.reference(), packed, None


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def save_report(report: dict, checkpoint) -> Path:
    """Write ``decode_probe.json`` beside the checkpoint atomically (``files.atomic_write``)."""
    where = Path(checkpoint).resolve()
    out = (where if where.is_dir() else where.parent) / REPORT_NAME  # a Hugging Face directory holds its own
    atomic_write(out, lambda f: f.write(json.dumps(report, indent=1) + "\n"), binary=False)
    return out


def _f(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def format_report(r: dict) -> str:
    c, d, n, s, p, v = r["context"], r["diversity"], r["next_token"], r["speed"], r["parity"], r["verdict"]
    dec, cfg = r["decoding"], r["config"]
    rows = [
        f"checkpoint   {r['checkpoint']}  (step {c['step']}, d_model {cfg['d_model']}, {cfg['n_layers']} layers, "
        f"quant {cfg['quant']}{', ablate ' + ','.join(cfg['ablate']) if cfg['ablate'] else ''})",
        f"backend      {r['backend']}" + (f"  ({r['backend_reason']})" if r["backend_reason"] else ""),
        f"decoding     {dec['mode']}"
        + (f" T={dec['temperature']} top-k={dec['top_k']} seed={dec['seed']}" if dec["mode"] == "sample" else "")
        + f", {dec['samples']} samples x {dec['max_new_tokens']} new tokens; prompts from {dec['prompts']}",
    ]
    if dec["data_note"]:
        rows.append(f"note         {dec['data_note']}")
    rows += [
        "",
        "context      val loss (stored) {}   val loss (measured, {} tokens) {}{}   unigram entropy {}   ln V {}".format(
            _f(c["last_val_loss"]),
            c["val_loss_tokens"] or 0,
            _f(c["val_loss_measured"]),
            f" +- {c['val_loss_se']:.3f}" if c.get("val_loss_se") is not None else "",
            _f(c["unigram_entropy"]),
            _f(c["ln_vocab"]),
        ),
        f"diversity    unique {d['unique_tokens']}   distinct-1 {d['distinct_1']:.3f}   distinct-2 "
        f"{d['distinct_2']:.3f}   max run {d['max_repeat_run']}   top share {d['top_token_share']:.2f}   "
        f"entropy {d['token_entropy']:.3f} nats",
        f"next token   mean entropy {n['mean_entropy']:.3f} nats   mean top-1 probability {n['mean_top1']:.3f}",
        f"speed        packed {_f(s.get('packed_tok_s'), '.0f')} tok/s   "
        f"torch fake-quant {_f(s.get('torch_tok_s'), '.0f')}"
        f" tok/s   (decode, batch {s['batch']}, {s['threads']} thread(s), kernel {s['kernel']}"
        + (f", {s['format']}-bit format)" if s.get("format") else ")"),
    ]
    if s.get("fused") or s.get("head") == "int8":
        rows.append(
            f"             samples above decoded {_f(s.get('decoded_tok_s'), '.0f')} tok/s with "
            + " and ".join(
                x
                for x in ("the fused C++ step" if s["fused"] else "", "the int8 head" if s["head"] == "int8" else "")
                if x
            )
            + "; parity below is the exact packed path's"
        )
    if p.get("skipped"):
        rows.append(f"parity       skipped: {p['skipped']}")
    elif p["ok"]:
        rows.append(
            f"parity       ok: greedy tokens identical ({p['samples_identical']}/{p['samples']}), "
            f"max |logit diff| {p['max_abs_logit_diff']:.3g} (rel {p['max_rel_logit_diff']:.3g})"
            + (", bit for bit" if p["bitwise"] else "")
        )
    else:
        bar = "!" * 78
        rows += [
            bar,
            "PARITY FAILURE: the packed path does not compute what the training forward computes",
            f"  greedy tokens identical: {p['tokens_identical']} ({p['samples_identical']}/{p['samples']} samples"
            + (
                f", first mismatch: sample {p['first_mismatch']['sample']} position {p['first_mismatch']['position']}"
                if "first_mismatch" in p
                else ""
            )
            + ")",
            f"  max |logit diff| {p['max_abs_logit_diff']:.6g}, relative {p['max_rel_logit_diff']:.3g} "
            f"(tolerance {p['rel_tol']})",
            bar,
        ]
    rows += recompute_rows(r.get("recompute") or {})
    rows += ["", f"verdict      {v['verdict'].upper()}: {v['reason']}"]
    rows += [f"             note: {x}" for x in v["notes"]]
    rows.append("")
    for i, smp in enumerate(r["samples"]):
        rows.append(f"sample {i}     {smp['prompt']!r} -> {smp['output']!r}")
    return "\n".join(rows)


def recompute_rows(rec: dict) -> list:
    """The report's recompute line: each cached path against the full recompute, or a banner when one fails."""
    parts = [
        f"{name} {r['samples_identical']}/{r['samples']} samples identical, max rel logit diff "
        f"{r['max_rel_logit_diff']:.3g}"
        for name, r in rec.items()
        if isinstance(r, dict)
    ]
    if not parts:
        return []
    if rec.get("ok"):
        return [f"recompute    ok: cached decoding = a full recompute with no cache ({'; '.join(parts)})"]
    bar = "!" * 78
    return [
        bar,
        "CACHE MISMATCH: cached decoding does not compute what a full recompute of the same tokens computes",
        *(f"  {p}" for p in parts),
        bar,
    ]


# ---------------------------------------------------------------------------------------------- CLI


def _temperature(v):
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {v}")
    return x


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description="Decode a bitnet_ref checkpoint with the packed ternary kernel; report "
        "token diversity, next-token statistics, a healthy/collapsed/not-learning verdict, speed and "
        "packed-vs-training parity.",
    )
    p.add_argument(
        "checkpoint",
        help="a ckpt.pt written by python -m bitnet_ref.train, a Hugging Face BitNet directory (config.json + "
        "safetensors; its tokenizer.json, if any, encodes --prompt), or a BitNet GGUF (llama.cpp's TQ1_0/TQ2_0, "
        "bitnet.cpp's I2_S, F16 ternary; its vocabulary encodes --prompt)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="packed",
        help="packed: int8 x 2-bit C++ kernel (default); torch: the training-time fake-quant forward",
    )
    p.add_argument(
        "--format",
        choices=kernels.FORMATS,
        default="2",
        help="packed format: 2 bits a weight (default) or 1.6 (five weights a byte); same logits",
    )
    p.add_argument(
        "--head",
        choices=HEAD_FORMATS,
        default="fp32",
        help="output head for the samples: fp32 (default, bit-exact) or int8 rows (a quarter of the "
        "bytes; logits within ~1%%); parity always checks the exact packed path",
    )
    p.add_argument(
        "--fused",
        action="store_true",
        help="decode the samples through the fused whole-token C++ step (faster; close to, not bit-exact "
        "with, the packed path); parity always checks the exact packed path",
    )
    p.add_argument(
        "--act",
        choices=ACT_CHOICES,
        default="token",
        help="how the linears quantize activations: token (the recipe, default), file (what a GGUF's own runtime "
        "computes: llama.cpp per 256-block on TQ weights, float on F16), block, tensor or none",
    )
    p.add_argument(
        "--samples",
        type=whole_at_least(1),
        help="number of prompts/samples (default: the trainer's probe count, or 1 with --prompt)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=whole_at_least(1),
        default=None,
        help="tokens generated per sample (default: the trainer's probe length, 48)",
    )
    p.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=whole_at_least(1), help="sample from the k most likely tokens (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default 0)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one prompt text (default: prompts from the checkpoint's validation data)")
    src.add_argument("--prompt-file", help="a UTF-8 file whose whole text is one prompt")
    p.add_argument(
        "--device", default="cpu", help="cpu (default; the packed kernel is CPU-only) or cuda[:N] for --backend torch"
    )
    p.add_argument("--threads", type=whole_at_least(1), help="kernel and torch CPU threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--no-save", action="store_true", help=f"do not write {REPORT_NAME} beside the checkpoint")
    return p


def main(argv=None, prog=None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.threads is None:
        args.threads = 1
    # torch warns about a plain-pickle file's protocol before refusing it; the one error line says enough
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    try:
        report = run(args)
    except (CheckpointError, G.DecodeError, ProbeError, D.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_save:
        try:
            where = save_report(report, args.checkpoint)
        except OSError as e:
            print(f"warning: could not write {REPORT_NAME} beside the checkpoint: {e.strerror or e}", file=sys.stderr)
        else:
            report["saved_to"] = str(where)
    print(json.dumps(report) if args.json else format_report(report))
    return 1 if report["parity"]["ok"] is False or report["recompute"]["ok"] is False else 0


def cli(prog=None) -> int:
    """The console-script entry (bitnet-decode-probe): main on sys.argv, quiet when the reader stops early (| head)."""
    return run_quietly(partial(main, prog=prog))


if __name__ == "__main__":
    sys.exit(cli(prog="python -m bitnet_ref.decode_probe"))
