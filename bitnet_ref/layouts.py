"""Moving a model's state dict from one norm layout to another (``model.LAYOUTS``), exactly or not at all.

Every layout holds the same linears, embedding, final norm and head under the same names; they differ only in
where the RMSNorm gains sit. Per block there are four places a gain can be: before q/k/v, before o_proj, before
gate/up and before down_proj. ``official`` has one shared gain at each; ``per-linear-norm`` one per linear (so
q, k and v may carry different gains); ``llama`` has only the first and third (no sub-norms).

``relayout`` moves the gains and says what it had to add:

- a place the source lacks (a Llama's sub-norms) gets a new RMSNorm at unit gain, and a note says so: the
  forward is then *not* the source's (a unit-gain RMSNorm still rescales each token), which is why the llama
  layout exists;
- shared gains are copied to each linear that reads them (exact);
- per-linear gains become one shared gain only when they are equal, and a place the target lacks can only be
  dropped when the source has none there either; anything else is refused (ValueError, one line), because the
  result would compute something else.

What this is not: a converter between file formats (``formats/``) or between quantization settings.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from bitnet_ref.model import LAYOUTS, ModelConfig

# the four places a gain can sit in a block: (part, linears that read it, official-layout module, is a sub-norm)
PLACES = (
    ("attn", ("q_proj", "k_proj", "v_proj"), "attn_norm", False),
    ("attn", ("o_proj",), "attn.sub_norm", True),
    ("ffn", ("gate_proj", "up_proj"), "ffn_norm", False),
    ("ffn", ("down_proj",), "ffn.sub_norm", True),
)
SUB_NORM_NAMES = {"attn.sub_norm": "attn_sub_norm (before o_proj)", "ffn.sub_norm": "ffn_sub_norm (before down_proj)"}


def _has_place(layout: str, sub: bool) -> bool:
    return not (sub and layout == "llama")


def _gains(cfg: ModelConfig, state: dict, i: int, place) -> list | None:
    """The gains of one place in block i, one per linear reading it (None: the source has no norm there)."""
    part, projs, module, sub = place
    if not _has_place(cfg.layout, sub):
        return None
    if cfg.layout == "per-linear-norm":
        return [state[f"blocks.{i}.{part}.{p}.norm.weight"] for p in projs]
    return [state[f"blocks.{i}.{module}.weight"]] * len(projs)


def relayout(cfg: ModelConfig, state: dict, layout: str) -> tuple[ModelConfig, dict, list[str]]:
    """(the config in ``layout``, the state dict moved into it, notes on what was added); ValueError if the
    move cannot keep every gain."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if "no-subln" in cfg.ablate:
        raise ValueError("a no-subln model has no RMSNorm gains to move between layouts")
    out = {k: v for k, v in state.items() if not _is_gain(k)}
    added: dict[str, int] = {}
    for i in range(cfg.n_layers):
        for place in PLACES:
            part, projs, module, sub = place
            gains = _gains(cfg, state, i, place)
            if not _has_place(layout, sub):
                if gains is not None:
                    raise ValueError(
                        f"the {layout} layout has no {SUB_NORM_NAMES[module]}; the {cfg.layout} source's "
                        "would be dropped, which changes what the model computes"
                    )
                continue
            if gains is None:
                gains = [torch.ones(cfg.ffn_hidden if part == "ffn" else cfg.d_model)] * len(projs)
                added[module] = added.get(module, 0) + 1
            if layout == "per-linear-norm":
                out.update({f"blocks.{i}.{part}.{p}.norm.weight": g.clone() for p, g in zip(projs, gains)})
            elif any(not torch.equal(gains[0], g) for g in gains[1:]):
                raise ValueError(
                    f"layer {i}: the RMSNorm gains of {'/'.join(projs)} differ, and the {layout} block has one "
                    "shared norm there"
                )
            else:
                out[f"blocks.{i}.{module}.weight"] = gains[0].clone()
    notes = [
        f"{SUB_NORM_NAMES[m]}: not in the {cfg.layout} source, starts at unit gain in all {n} layers (a unit-gain "
        "RMSNorm still normalises, so the first forward is not the source's)"
        for m, n in added.items()
    ]
    return ModelConfig.from_dict({**asdict(cfg), "layout": layout}), out, notes


def _is_gain(name: str) -> bool:
    """A block RMSNorm gain (not the final ``norm``), in any layout."""
    return name.startswith("blocks.") and name.endswith("norm.weight")
