"""Root causes, not first symptoms: "this layer gets no gradient" followed upstream to what starves it.

causes.grad_flow sees where the gradient flow stops at the last eval that measured gradients. ``chain_lines``
says why, as a chain of evidence from the per-layer and per-group histories of the eval records and from the
checkpoint, for each BitLinear with no gradient and each parameter group with none or not moved:

- since when: the first eval at which it had none, and what it had before;
- its input: an activation-quantizer input RMS of ~0 (<= ACT_DEAD) means nothing reaches it, and the norm in
  front of it is looked up in ckpt.pt (a gain of exactly 0 passes nothing, forward or back);
- what it feeds: q/k/v feed o_proj, gate/up feed down_proj (through a sub-norm in the official layout); a
  consumer whose ternary codes are all 0 (share of 0 codes >= ALL_ZERO_CODES) or a norm gain of 0 between them
  passes no gradient back;
- neither: the gradient is cut at the layer itself (a detach, a hook, requires_grad=False), and the checkpoint
  says whether its weights ever left a trivial value;
- a group that gets a gradient but is not moved: whether AdamW holds state for tensors of its shapes at all, or
  the param group holding them has LR 0 (ckpt.pt's optimizer state).

What this is not: a rule of its own (it adds lines to grad_flow's evidence) or a model of every architecture (it
knows bitnet_ref's layer names, both layouts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitnet_ref.doctor.records import fmt
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import ACT_DEAD, ALL_ZERO_CODES, GRAD_ZERO

if TYPE_CHECKING:
    from bitnet_ref.doctor.run import Run

FEEDS = {"q_proj": "o_proj", "k_proj": "o_proj", "v_proj": "o_proj", "gate_proj": "down_proj", "up_proj": "down_proj"}
BLOCK_NORM = {"q_proj": "attn_norm", "k_proj": "attn_norm", "v_proj": "attn_norm"}
BLOCK_NORM.update(gate_proj="ffn_norm", up_proj="ffn_norm")


def _state(run: Run) -> dict:
    ck = run.ckpt if run.ckpt and "error" not in run.ckpt else {}
    return ck.get("model") if isinstance(ck.get("model"), dict) else {}


def input_norm(name: str, state: dict) -> str | None:
    """The checkpoint key of the RMSNorm gain in front of BitLinear ``name`` (either layout), if it has one."""
    if name.count(".") < 2:
        return None  # not a name of bitnet_ref's model
    parent, leaf = name.rsplit(".", 1)
    block = parent.rsplit(".", 1)[0]
    shared = f"{block}.{BLOCK_NORM[leaf]}.weight" if leaf in BLOCK_NORM else f"{parent}.sub_norm.weight"
    return next((k for k in (f"{name}.norm.weight", shared) if k in state), None)


def _zero_tensor(state: dict, key: str | None) -> bool:
    t = state.get(key) if key else None
    return t is not None and t.numel() > 0 and float(t.float().abs().max()) <= GRAD_ZERO


def _layer(rec: dict, name: str) -> dict:
    v = (rec.get("layers") or {}).get(name)
    return v if isinstance(v, dict) else {}


def _since(run: Run, name: str) -> str:
    """When the layer's gradient stopped, from the eval records that measured one."""
    seen = [
        (r.get("step"), g) for r in run.evals if (g := number_or_none(_layer(r, name).get("grad_norm"))) is not None
    ]
    first = next((i for i, (_, g) in enumerate(seen) if g <= GRAD_ZERO), None)
    if first is None:
        return ""
    if first == 0:
        return f" (at every eval that measured gradients, from step {seen[0][0]})"
    return f" (since step {seen[first][0]}; {fmt(seen[first - 1][1])} at step {seen[first - 1][0]})"


def _why_layer(run: Run, rec: dict, name: str) -> str:
    """The next link of the chain for one starved BitLinear."""
    state, here = _state(run), _layer(rec, name)
    leaf = name.rsplit(".", 1)[-1]
    act = number_or_none(here.get("act_in_rms"))
    if act is not None and act <= ACT_DEAD:
        norm = input_norm(name, state)
        if _zero_tensor(state, norm):
            return (
                f"its input is zero (RMS {fmt(act)}) <- {norm} is exactly 0 in ckpt.pt ({state[norm].numel()} gains)"
                + _frozen(run, norm)
            )
        return f"its input is zero (RMS {fmt(act)}): nothing reaches it from the layer in front"
    if leaf in FEEDS:
        consumer = f"{name.rsplit('.', 1)[0]}.{FEEDS[leaf]}"
        c = _layer(rec, consumer)
        norm = input_norm(consumer, state)
        if (number_or_none(c.get("frac_zero")) or 0) >= ALL_ZERO_CODES:
            zero_w = " (its weights are exactly 0 in ckpt.pt)" if _zero_tensor(state, f"{consumer}.weight") else ""
            return (
                f"it feeds {consumer}, whose ternary codes are all 0{zero_w}: that layer's output is 0 whatever "
                "its input, so it passes no gradient back"
            )
        if _zero_tensor(state, norm):
            return (
                f"it feeds {consumer} through {norm}, which is exactly 0 in ckpt.pt: no gradient passes it"
                + _frozen(run, norm)
            )
    zero_w = _zero_tensor(state, f"{name}.weight")
    return (
        "its input is live"
        + (f" (RMS {fmt(act)})" if act is not None else "")
        + " and what it feeds passes gradient: the gradient is cut at the layer itself (a detach, a hook, "
        "requires_grad=False)" + ("; its weights are exactly 0 in ckpt.pt, never moved" if zero_w else "")
    )


def _moments(run: Run) -> dict | None:
    """Parameter name -> whether ckpt.pt's AdamW holds moments for it, when its param groups are the trainer's
    (train.loop.param_groups on the checkpoint's model, group sizes matching); else None."""
    from bitnet_ref.model import ModelConfig, Transformer
    from bitnet_ref.train.loop import param_groups

    ck = run.ckpt if run.ckpt and "error" not in run.ckpt else {}
    opt = ck.get("optimizer")
    try:
        model = Transformer(ModelConfig.from_dict(ck["config"]))
        ours, theirs = param_groups(model), opt["param_groups"]
    except (KeyError, TypeError, ValueError):
        return None
    if [len(g["params"]) for g in ours] != [len(g.get("params") or []) for g in theirs]:
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    state = opt.get("state") or {}
    return {
        names[id(p)]: bool(state.get(pid))
        for g, h in zip(ours, theirs)
        for p, pid in zip(g["params"], h["params"])
        if id(p) in names
    }


def _frozen(run: Run, key: str) -> str:
    """The last link for a parameter stuck at 0: no AdamW moments means it never got a gradient of its own."""
    held = (_moments(run) or {}).get(key)
    if held is False:
        return ", and AdamW holds no moments for it: it never got a gradient of its own (frozen: requires_grad=False)"
    if held:
        return ", though AdamW updates it: something sets it back to 0 (zeroed each step?)"
    return ""


def _optimizer_shapes(run: Run) -> tuple[dict, list]:
    """(shape -> count of AdamW moments in ckpt.pt, [(group index, lr, shapes)]) ."""
    opt = (run.ckpt or {}).get("optimizer") if run.ckpt and "error" not in run.ckpt else None
    if not isinstance(opt, dict):
        return {}, []
    state, counts, groups = opt.get("state") or {}, {}, []
    for i, g in enumerate(opt.get("param_groups") or []):
        shapes = []
        for pid in g.get("params") or []:
            m = (state.get(pid) or {}).get("exp_avg")
            if m is not None:
                shapes.append(tuple(m.shape))
                counts[tuple(m.shape)] = counts.get(tuple(m.shape), 0) + 1
        groups.append((i, number_or_none(g.get("lr")), shapes))
    return counts, groups


def _why_group(run: Run, group: str) -> str | None:
    """The next link for a parameter group with no gradient or not moved (latent: the BitLinear weights)."""
    state = _state(run)
    if group == "norm":
        gains = [t for k, t in state.items() if k.endswith("norm.weight")]
        if gains and all(bool((t == 1).all()) for t in gains):
            return f"all {len(gains)} norm gains are exactly 1.0 in ckpt.pt: never moved from their initial value"
        return None
    if group != "latent":
        return None
    shapes = {tuple(t.shape) for k, t in state.items() if k.endswith("_proj.weight")}
    counts, groups = _optimizer_shapes(run)
    if counts and shapes and not shapes & set(counts):
        return "ckpt.pt's AdamW holds no moments of any BitLinear weight's shape: they are not in the optimizer"
    for i, lr, gshapes in groups:
        if lr == 0 and shapes & set(gshapes):
            return f"ckpt.pt's AdamW param group {i} ({len(gshapes)} tensors of the BitLinear shapes) has lr 0.0"
    return None


def chain_lines(run: Run, rec: dict, layers: list, groups: list) -> list:
    """'chain:' evidence lines for the starved BitLinears ``layers`` and the parameter ``groups`` at eval ``rec``."""
    lines = []
    for name in layers:
        lines.append(f"chain: {name} gets no gradient{_since(run, name)} <- {_why_layer(run, rec, name)}")
    for g in groups:
        why = _why_group(run, g)
        if why:
            lines.append(f"chain: parameter group {g} <- {why}")
    return lines


def starved(rec: dict) -> list:
    """BitLinears with no gradient at eval ``rec`` while others have one."""
    norms = {k: number_or_none(v.get("grad_norm")) for k, v in (rec.get("layers") or {}).items() if isinstance(v, dict)}
    if not any(n is not None and n > GRAD_ZERO for n in norms.values()):
        return []
    return [k for k, n in norms.items() if n is not None and n <= GRAD_ZERO]
