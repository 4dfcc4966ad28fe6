"""Training-health metrics for BitNet b1.58 runs: what the ternary layers are doing, cheaply.

What it is: pure functions on tensors (code fractions, flip rate, threshold share, gradient split by
code, update ratio, next-token entropy, lattice/level probes) plus ``HealthTracker``, a small state
object the trainer calls at evaluation points. Everything it returns is plain JSON (floats, ints, None)
and goes into the eval records of metrics.jsonl:

- ``layers``: ``{bitlinear_name: {...}}``, per BitLinear:
  ``frac_neg``/``frac_zero``/``frac_pos``  ternary code shares;
  ``flip_rate``   share of codes changed since the previous evaluation (None at the first one);
  ``flip_steps``  training steps since that evaluation;
  ``beta``        absmean scale; ``w_rms`` latent-weight RMS;
  ``near_thr``    share of latent weights with ||w|/beta - 0.5| < 0.05 (one nudge from flipping);
  ``near_clip``   the same around 1.5; ``beyond_clip`` share with |w|/beta > 1.5 (clip region);
  ``grad_norm``   L2 norm of the latent weight's gradient (0 when it got none);
  ``grad_rms_zero``/``grad_rms_sat``  per-element gradient RMS on 0 codes / on +-1 codes;
  ``grad_dead_zero``/``grad_dead_sat``/``grad_dead_clip``  share of exactly-zero gradients on 0 codes,
                  on +-1 codes, and in the clip region; ``grad_zero`` the same over the whole matrix;
  ``update_ratio`` ||w_after - w_before|| / ||w_before|| over one optimizer step;
  ``act_in_rms``  RMS of the activation quantizer's input (~1 behind an RMSNorm);
  ``out_ratio``   RMS of the BitLinear output / RMS of an FP linear with the same latent weights on the
                  same input (~1 when both scales are multiplied back).
  Gradient and update fields are None when the trainer did not call ``after_backward``/``after_step``.
- flat summary keys: ``health_<field>`` is the mean over layers of each field above; ``health_entropy``
  and ``health_top1`` are the mean next-token entropy (nats) and top-1 probability on the validation
  batch; ``health_embed_levels`` is the mean count of distinct values in a token's embedding vector as
  the first block receives it (<= 3: a ternary embedding); ``health_logit_lattice`` is the share of
  logits lying on an integer lattice of their row (~1: an int8 x ternary output head, ~0: an FP head);
  ``health_logit_float_grid`` is the share of logits exactly representable with FLOAT_GRID_BITS significand
  bits (~1: logits rounded to a coarse float format such as bf16/fp16/fp8; ~0: fp32 logits, and an int8 x
  ternary head, whose lattice unit is an arbitrary fp32 scale).
- ``groups``: ``{group: {"grad_norm", "grad_zero", "update_ratio", "w_rms", "numel"}}`` for every parameter group
  (``latent``: BitLinear weights; ``norm``: RMSNorm gains; ``embed``: token embedding; ``head``: the output
  head when untied): where the gradient flow stops and which parameters the optimizer does not move.

What it is not: a profiler, or a judge. ``bitnet_ref.doctor`` turns these numbers into a verdict.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitnet_ref.model import BitLinear
from bitnet_ref.quant import weight_quant

THRESHOLD = 0.5  # |w|/beta where round() switches between 0 and +-1
CLIP = 1.5  # |w|/beta beyond which round() gives +-2 and the clamp saturates
MARGIN = 0.05  # "near a threshold" means within this distance, in units of beta (issue 6)
LEVELS_SAMPLE = 64  # token rows sampled for the embedding-level and logit-lattice probes
LATTICE_TOL = 0.02  # a logit is "on the lattice" within this fraction of the lattice unit
FLOAT_GRID_BITS = 11  # significand bits of fp16 (bf16 has 8, fp8 e4m3 4): a "coarse float" logit fits in them
GRAD_FIELDS = (
    "grad_norm",
    "grad_rms_zero",
    "grad_rms_sat",
    "grad_dead_zero",
    "grad_dead_sat",
    "grad_dead_clip",
    "grad_zero",
)
GROUPS = ("latent", "norm", "embed", "head")


# ---------------------------------------------------------------------------- pure functions


def code_fractions(codes: torch.Tensor) -> dict:
    """Shares of -1, 0 and +1 among ternary codes (any shape, int or float)."""
    n = codes.numel()
    if n == 0:
        raise ValueError("code_fractions: empty tensor")
    c = codes.reshape(-1)
    return {
        "frac_neg": (c < 0).sum().item() / n,
        "frac_zero": (c == 0).sum().item() / n,
        "frac_pos": (c > 0).sum().item() / n,
    }


def flip_rate(prev: torch.Tensor, codes: torch.Tensor) -> float:
    """Share of codes that differ between two snapshots of the same layer."""
    if prev.shape != codes.shape:
        raise ValueError(f"flip_rate: shapes differ, {tuple(prev.shape)} vs {tuple(codes.shape)}")
    return (prev != codes).sum().item() / max(codes.numel(), 1)


def threshold_share(w: torch.Tensor, beta: float, threshold: float = THRESHOLD, margin: float = MARGIN) -> float:
    """Share of latent weights whose |w|/beta lies within `margin` of `threshold`.

    At 0.5 these are the weights one small update away from changing code; at 1.5 the ones at the edge
    of the clip region.
    """
    r = w.detach().double().abs() / beta
    return ((r - threshold).abs() < margin).sum().item() / max(w.numel(), 1)


def rms(t: torch.Tensor) -> float:
    """Root mean square of all elements (computed in float64)."""
    return t.detach().double().pow(2).mean().sqrt().item()


def grad_split(grad: torch.Tensor | None, w: torch.Tensor, beta: float) -> dict:
    """Gradient norm of a latent weight, and how it is spread over 0 codes, +-1 codes and the clip region.

    A missing STE shows as no gradient anywhere; the clamp-STE bug as exactly-zero gradients in the clip
    region (|w|/beta > 1.5) while the 0 codes still get gradient. `grad` None (the weight got no gradient)
    counts as all zeros.
    """
    r = w.detach().double().abs() / beta
    zero = r < THRESHOLD  # same rule as round(): |w|/beta < 0.5 -> code 0 (ties aside)
    sat = ~zero
    clip = r > CLIP
    g = torch.zeros_like(r) if grad is None else grad.detach().double()

    def part(mask: torch.Tensor) -> tuple[float | None, float | None]:
        k = int(mask.sum().item())
        if k == 0:
            return None, None
        sel = g[mask]
        return sel.pow(2).mean().sqrt().item(), (sel == 0).sum().item() / k

    rz, dz = part(zero)
    rs, ds = part(sat)
    _, dc = part(clip)
    return {
        "grad_norm": g.pow(2).sum().sqrt().item(),
        "grad_rms_zero": rz,
        "grad_rms_sat": rs,
        "grad_dead_zero": dz,
        "grad_dead_sat": ds,
        "grad_dead_clip": dc,
        "grad_zero": (g == 0).sum().item() / max(g.numel(), 1),
    }


def update_ratio(before: torch.Tensor, after: torch.Tensor) -> float:
    """||after - before|| / ||before||: how far one optimizer step moved a weight, relatively."""
    denom = before.double().norm().item()
    diff = (after.double() - before.double()).norm().item()
    if denom == 0:
        return math.inf if diff > 0 else 0.0
    return diff / denom


def next_token_stats(logits: torch.Tensor) -> tuple[float, float]:
    """Mean entropy (nats) and mean top-1 probability of softmax(logits) over all positions."""
    logp = F.log_softmax(logits.detach().float(), dim=-1)  # (..., V)
    p = logp.exp()
    ent = -(p * logp).sum(-1)  # (...)
    return ent.mean().item(), p.max(-1).values.mean().item()


def distinct_levels(rows: torch.Tensor, resolution: float = 1e-4) -> float:
    """Mean number of distinct values per row: <= 3 for a ternary (scaled) row, ~row length for FP.

    Values are compared at `resolution` times the row's absmax, so that an STE's float residue
    (w + (q - w).detach() is q only up to rounding) does not count as extra levels.
    """
    rows = rows.detach().double().reshape(rows.shape[0], -1)
    counts = []
    for r in rows:
        top = r.abs().max()
        counts.append(torch.unique((r / top / resolution).round()).numel() if top > 0 else 1)
    return sum(counts) / max(len(counts), 1)


def lattice_share(rows: torch.Tensor, tol: float = LATTICE_TOL) -> float | None:
    """Mean share of each row's values lying on an integer lattice (offset: the row minimum).

    The lattice unit is the smallest gap between sorted values that is clearly above float noise.
    Products of int8 activations and ternary weights (one scale per row) land on such a lattice, so a
    quantized output head gives ~1; real-valued logits give about 2 * tol. Constant rows are skipped;
    None if every row is.
    """
    shares = []
    for r in rows.detach().double().reshape(rows.shape[0], -1):
        v = torch.sort(r).values
        span = (v[-1] - v[0]).item()
        if span <= 0:
            continue
        noise = 1e-6 * v.abs().max().item()  # float32 accumulation error, generously
        gaps = v.diff()
        gaps = gaps[gaps > max(noise, 1e-9 * span)]
        u0 = gaps.min().item()
        unit = gaps[gaps < 1.5 * u0].mean().item()  # average the one-unit gaps: less noisy than the minimum
        n = round(span / unit)  # the span is a whole number of units; try the neighbours too
        best = 0.0
        for units in (n - 1, n, n + 1):
            if units >= 1:
                k = (v - v[0]) / (span / units)
                best = max(best, ((k - k.round()).abs() < tol).double().mean().item())
        shares.append(best)
    return sum(shares) / len(shares) if shares else None


def float_grid_share(values: torch.Tensor, bits: int = FLOAT_GRID_BITS) -> float | None:
    """Share of the nonzero finite values exactly representable with ``bits`` significand bits.

    fp32 values from real arithmetic need all 24 bits (share ~2^(bits-24)); values rounded to bf16 (8 bits),
    fp16 (11) or an fp8-like format (4) all fit. Products k x s of integers k and an fp32 scale s do not,
    so this tells a coarse float format from the integer lattice of an int8 x ternary head. None if no value counts.
    """
    v = values.detach().float().reshape(-1)
    v = v[torch.isfinite(v) & (v != 0)]
    if v.numel() == 0:
        return None
    m, _ = torch.frexp(v.double())  # v = m * 2^e, 0.5 <= |m| < 1
    scaled = m * 2.0**bits
    return (scaled == scaled.round()).double().mean().item()


def param_groups_of(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by role (GROUPS); a tied head is the embedding; anything else goes to norm."""
    return param_groups(
        model, [m for _, m in _bitlinears(model)], getattr(model, "tok_emb", None), getattr(model, "head", None)
    )


def param_groups(model: nn.Module, ternary: list, emb: nn.Module | None, head: nn.Module | None) -> dict:
    """``param_groups_of`` for any model: the ternary layers' weights are ``latent``, ``emb``'s weight ``embed``,
    ``head``'s weight ``head`` (unless it is the embedding's: tied), every other parameter ``norm``."""
    latent = [m.weight for m in ternary]
    embed = [emb.weight] if emb is not None else []
    heads = [head.weight] if head is not None and all(head.weight is not p for p in embed) else []
    taken = {id(p) for p in latent + embed + heads}
    norm = [p for p in model.parameters() if id(p) not in taken]
    return {"latent": latent, "norm": norm, "embed": embed, "head": heads}


def group_grads(params: list) -> dict:
    """Gradient norm and exactly-zero share over a group's elements (a missing gradient counts as zeros)."""
    n = sum(p.numel() for p in params)
    sq = zeros = 0.0
    for p in params:
        if p.grad is None:
            zeros += p.numel()
        else:
            g = p.grad.detach().double()
            sq += g.pow(2).sum().item()
            zeros += (g == 0).sum().item()
    return {"grad_norm": math.sqrt(sq), "grad_zero": zeros / n if n else None, "numel": n}


def mean_over(layers: dict, key: str) -> float | None:
    """Mean of one per-layer field over the layers where it is a finite number; None if none are."""
    vals = [
        v[key]
        for v in layers.values()
        if isinstance(v.get(key), (int, float)) and not isinstance(v.get(key), bool) and math.isfinite(v[key])
    ]
    return sum(vals) / len(vals) if vals else None


# ---------------------------------------------------------------------------- the tracker


def _bitlinears(model: nn.Module) -> list[tuple[str, BitLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]


def _logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    logits, _ = model(idx)
    return logits


def _first_block(model: nn.Module) -> tuple[nn.Module, bool] | None:
    blocks = getattr(model, "blocks", None)
    return (blocks[0], True) if isinstance(blocks, nn.ModuleList) and len(blocks) else None


def _embedding_hook(at: tuple[nn.Module, bool] | None, seen: dict) -> list:
    """A hook putting the token embedding into ``seen["emb"]``: the input of ``at[0]`` (at[1] True) or its output."""
    if at is None:
        return []
    if at[1]:
        return [at[0].register_forward_pre_hook(lambda mod, i: seen.__setitem__("emb", i[0]))]
    return [at[0].register_forward_hook(lambda mod, i, o: seen.__setitem__("emb", o))]


def ternary_state(module: nn.Module) -> tuple[torch.Tensor, float]:
    """(int8 codes on the CPU, beta) of a ternary layer: its own ``ternary_state()`` where it has one (BitLinear),
    else the b1.58 absmean rule (quant.weight_quant) applied to its ``weight``."""
    own = getattr(module, "ternary_state", None)
    if callable(own):
        codes, beta = own()
    else:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{type(module).__name__} has no weight tensor to read ternary codes from")
        with torch.no_grad():
            codes, beta = weight_quant(weight.detach().float())
    return codes.detach().to("cpu", torch.int8), float(beta)


class HealthTracker:
    """What the health metrics need between calls: the codes at the previous evaluation, the gradient
    statistics of the last backward pass, and a weight snapshot across one optimizer step.

    Trainer usage (on steps that end in an evaluation; calling it every step is correct too, just slower):
        loss.backward(); tracker.after_backward(model); opt.step(); tracker.after_step(model)
        record.update(tracker.evaluate(model, val_x, step))

    The defaults read bitnet_ref's Transformer; for any other model (bitnet_ref.watch) pass ``layers`` (model ->
    [(name, ternary module)]), ``groups`` (model -> GROUPS dict), ``logits`` ((model, idx) -> (B, T, V) logits)
    and ``embedding`` (model -> (module, pre) whose forward input (pre=True) or output is the token embedding,
    or None).
    """

    def __init__(
        self,
        layers: Callable | None = None,
        groups: Callable | None = None,
        logits: Callable | None = None,
        embedding: Callable | None = None,
    ) -> None:
        self.layers_of = layers or _bitlinears
        self.groups_of = groups or param_groups_of
        self.logits_of = logits or _logits
        self.embedding_of = embedding or _first_block
        self.prev_codes: dict[str, torch.Tensor] = {}  # name -> int8 codes at the previous evaluation
        self.prev_step: int | None = None
        self.grads: dict[str, dict] = {}  # name -> grad_split() of the last after_backward
        self.before: dict[str, torch.Tensor] = {}  # name -> weight snapshot taken in after_backward
        self.updates: dict[str, float] = {}  # name -> update_ratio of the last after_step
        self.groups: dict[str, dict] = {}  # group -> group_grads() (+ update_ratio after after_step)
        self.group_before: dict[str, list] = {}  # group -> weight snapshots taken in after_backward

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        """After backward(), before optimizer.step(): gradient statistics and a weight snapshot."""
        self.grads, self.before = {}, {}
        for name, m in self.layers_of(model):
            w = m.weight.detach().to("cpu", torch.float32, copy=True)
            _, beta = ternary_state(m)
            grad = None if m.weight.grad is None else m.weight.grad.to("cpu")
            self.grads[name] = grad_split(grad, w, beta)
            self.before[name] = w
        self.groups, self.group_before = {}, {}
        for g, params in self.groups_of(model).items():
            if params:
                self.groups[g] = group_grads(params)
                self.group_before[g] = [p.detach().to("cpu", torch.float32, copy=True) for p in params]

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """Right after the optimizer.step() that followed after_backward()."""
        self.updates = {}
        for name, m in self.layers_of(model):
            if name in self.before:
                self.updates[name] = update_ratio(self.before[name], m.weight.detach().to("cpu", torch.float32))
        for g, params in self.groups_of(model).items():
            if g in self.group_before and g in self.groups:
                before = torch.cat([t.reshape(-1) for t in self.group_before[g]])
                after = torch.cat([p.detach().to("cpu", torch.float32).reshape(-1) for p in params])
                self.groups[g]["update_ratio"] = update_ratio(before, after)
                self.groups[g]["w_rms"] = rms(before)  # update RMS = ratio x this: the step AdamW took
        self.before, self.group_before = {}, {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, idx: torch.Tensor, step: int | None = None) -> dict:
        """All health metrics at this evaluation point: {"layers": {...}, "health_*": ...}.

        `idx` is a (B, T) batch of validation tokens; one forward pass over it (with hooks) measures the
        activation side, the embedding, the logits and the next-token distribution. Gradient and update
        fields come from the last after_backward/after_step calls and are consumed here.
        """
        acts: dict[str, dict] = {}
        seen: dict[str, torch.Tensor] = {}
        hooks = []
        for name, m in self.layers_of(model):
            store = acts.setdefault(name, {})
            norm = getattr(m, "norm", None) or getattr(m, "rms_norm", None)  # bitnet_ref / transformers
            if isinstance(norm, nn.Module):  # its output is what the activation quantizer sees
                hooks.append(norm.register_forward_hook(lambda mod, i, o, s=store: s.__setitem__("act_in", o)))
            else:
                hooks.append(m.register_forward_pre_hook(lambda mod, i, s=store: s.__setitem__("act_in", i[0])))
            hooks.append(m.register_forward_hook(lambda mod, i, o, s=store: s.__setitem__("out", o)))
        hooks += _embedding_hook(self.embedding_of(model), seen)
        was_training = model.training
        model.eval()
        try:
            logits = self.logits_of(model, idx)  # (B, T, V)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)

        layers: dict[str, dict] = {}
        for name, m in self.layers_of(model):
            codes, beta = ternary_state(m)
            w = m.weight.detach().float()
            rec = code_fractions(codes)
            prev = self.prev_codes.get(name)
            fresh = prev is not None and prev.shape == codes.shape
            rec["flip_rate"] = flip_rate(prev, codes) if prev is not None and fresh else None
            rec["flip_steps"] = (
                step - self.prev_step if fresh and step is not None and self.prev_step is not None else None
            )
            self.prev_codes[name] = codes
            rec["beta"] = beta
            rec["w_rms"] = rms(w)
            rec["near_thr"] = threshold_share(w, beta, THRESHOLD)
            rec["near_clip"] = threshold_share(w, beta, CLIP)
            rec["beyond_clip"] = (w.abs() / beta > CLIP).sum().item() / w.numel()
            rec.update(self.grads.get(name, dict.fromkeys(GRAD_FIELDS)))
            rec["update_ratio"] = self.updates.get(name)
            a = acts[name]
            rec["act_in_rms"] = rec["out_ratio"] = None
            if "act_in" in a and "out" in a:
                x = a["act_in"].float()  # (B, T, in)
                rec["act_in_rms"] = rms(x)
                ref = rms(F.linear(x, w.to(x.device)))  # FP linear, same latent weights, same input
                rec["out_ratio"] = rms(a["out"]) / ref if ref > 0 else None
            layers[name] = rec
        self.prev_step = step
        groups = {g: {"update_ratio": None, "w_rms": None, **v} for g, v in self.groups.items()}
        self.grads, self.updates, self.groups = {}, {}, {}

        out: dict = {"layers": layers, "groups": groups}
        for k in sorted({k for rec in layers.values() for k in rec} - {"flip_steps"}):
            out[f"health_{k}"] = mean_over(layers, k)
        out["health_entropy"], out["health_top1"] = next_token_stats(logits)
        emb = seen.get("emb")
        out["health_embed_levels"] = (
            distinct_levels(emb.reshape(-1, emb.shape[-1])[:LEVELS_SAMPLE]) if emb is not None else None
        )
        out["health_logit_lattice"] = lattice_share(logits.reshape(-1, logits.shape[-1])[:LEVELS_SAMPLE])
        out["health_logit_float_grid"] = float_grid_share(logits.reshape(-1, logits.shape[-1])[:LEVELS_SAMPLE])
        return finite_or_none(out)


def finite_or_none(obj):
    """The same nested dict/list with NaN/inf replaced by None (metrics.jsonl is strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
