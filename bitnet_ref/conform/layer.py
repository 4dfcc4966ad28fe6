"""The layer under test: builds a user's BitLinear, loads a probe weight into it and runs a probe through it.

A layer holds its weight one of two ways. Most hold a latent weight: one floating-point parameter of shape
(out, in) that the layer quantizes in its forward; the probe weight is copied into it. A layer that holds codes
instead (transformers' packed ``BitLinear``, an offline ``AutoBitLinear``, a converted checkpoint's ``codes *
beta``) needs a loader (loaders.py): it quantizes the probe weight the reference way and writes the codes and
scale in the layer's own format. Its weight quantizer is then the loader's, not the layer's, and it has no
latent weight to train; the checks say so instead of judging them.

The bias is the one beside the weight: the ``bias`` attribute of the module that owns the latent weight (the
layer itself for a loaded layer), so a norm's ``bias`` of the same length (in == out) is never taken for it.
Not a check: it reports what it ran and what came out; checks.py judges.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import torch

_GPU_WORDS = re.compile(r"cuda|triton|gpu|nvidia|\bnccl\b", re.IGNORECASE)
_MISSING_ARG = re.compile(r"missing (\d+ )?required (positional|keyword-only) arguments?: (.+)$")


class ConformError(Exception):
    """Unusable input to the checker (module, class, constructor, weight parameter); the message is one line."""


class ProbeError(Exception):
    """The layer could not be run on a probe (raised, returned no tensor or the wrong shape); one line."""

    def __init__(self, message, needs_gpu=False):
        super().__init__(message)
        self.needs_gpu = needs_gpu


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def constructor_hint(e: BaseException) -> str:
    """For a constructor that wants arguments the checker does not pass (e.g. transformers' BitLinear(in, out,
    bias)): how to pass them."""
    m = _MISSING_ARG.search(str(e)) if isinstance(e, TypeError) else None
    if not m:
        return ""
    names = re.findall(r"'(\w+)'", m.group(3))
    example = ", ".join(f'"{n}": {"false" if n == "bias" else "..."}' for n in names) or '"name": ...'
    return (
        f"; the checker builds CLASS(in_features, out_features, **init_kwargs): pass the rest with "
        f"--init-kwargs '{{{example}}}' (init_kwargs= in Python)"
    )


class LayerUnderTest:
    """Builds the user's layer, finds its weight (or loads codes through a loader) and bias, and runs probes."""

    def __init__(
        self, factory, in_features, out_features, init_kwargs=None, device="cpu", weight_name=None, loader=None
    ):
        self.factory, self.k, self.n = factory, in_features, out_features
        self.init_kwargs, self.device, self.weight_name = dict(init_kwargs or {}), torch.device(device), weight_name
        self.loader = loader  # loaders.Loader, or None for a layer with a latent weight
        self.label = getattr(factory, "__qualname__", None) or repr(factory)
        self.as_3d = False  # run 2-D probes as (1, T, in): set when the layer accepts only 3-D input
        self.last_weight = None  # the latent weight after the last run's forward and backward
        self.last_dtype = None  # the dtype of the last run's output
        self.last_output_grad = False  # whether the last run's output carried a gradient

    @property
    def latent(self) -> bool:
        """True when the layer holds a latent weight it quantizes itself (no loader)."""
        return self.loader is None

    def build(self, k=None, dtype=None):
        """A fresh layer with in_features k, in train mode on the device; (layer, weight or None, bias or None).

        dtype: the input dtype the layer is built for; a loader may build a layer in it (transformers' layers
        take their compute dtype from the model's).
        """
        k = k or self.k
        kwargs = {**(self.loader.build_kwargs(dtype or torch.float32) if self.loader else {}), **self.init_kwargs}
        try:
            with torch.random.fork_rng(devices=[]):  # the same init every time, the caller's RNG untouched
                torch.manual_seed(0)
                layer = self.factory(k, self.n, **kwargs)
        except Exception as e:  # a user's constructor: anything it raises is a finding, not a crash
            raise ProbeError(
                f"{self.label}({k}, {self.n}) raised {one_line(e)}{constructor_hint(e)}",
                needs_gpu=bool(_GPU_WORDS.search(str(e))),
            ) from None
        if not isinstance(layer, torch.nn.Module):
            raise ConformError(f"{self.label}({k}, {self.n}) returned a {type(layer).__name__}, not a torch.nn.Module")
        try:
            layer = layer.to(self.device).train()
        except Exception as e:
            raise ProbeError(
                f"moving the layer to {self.device} raised {one_line(e)}", needs_gpu=bool(_GPU_WORDS.search(str(e)))
            ) from None
        if self.loader is not None:
            self.loader.check(layer, k, self.n)
            return layer, None, self._bias(layer)
        weight, owner = self._weight(layer, k)
        return layer, weight, self._bias(owner)

    def _weight(self, layer, k):
        """(the latent weight, the module that owns it)."""
        owners = {
            f"{prefix}.{name}" if prefix else name: (p, m)
            for prefix, m in layer.named_modules()
            for name, p in m.named_parameters(recurse=False)
        }
        if self.weight_name is not None:
            if self.weight_name not in owners:
                raise ConformError(
                    f"the layer has no parameter named {self.weight_name!r}; it has: {', '.join(owners) or 'none'}"
                )
            p, owner = owners[self.weight_name]
            if tuple(p.shape) != (self.n, k):
                raise ConformError(
                    f"parameter {self.weight_name!r} has shape {tuple(p.shape)}, expected (out, in) = ({self.n}, {k})"
                )
            return p, owner
        found = [(n, p, m) for n, (p, m) in owners.items() if tuple(p.shape) == (self.n, k) and p.is_floating_point()]
        if len(found) == 1:
            return found[0][1], found[0][2]
        if not found:
            seen = ", ".join(f"{n} {tuple(p.shape)}" for n, (p, _) in owners.items()) or "no parameters at all"
            raise ConformError(
                f"the layer has no floating-point parameter of shape (out, in) = ({self.n}, {k}) (it has {seen}); "
                f"a layer that holds codes and a scale needs a loader (--load, see docs/conform.md), and a "
                f"weight of another shape needs matching --in/--out"
            )
        names = ", ".join(n for n, _, _ in found)
        raise ConformError(
            f"several parameters have shape ({self.n}, {k}): {names}; name the latent weight with "
            f"--weight-name (weight_name= in Python)"
        )

    def _bias(self, owner):
        b = getattr(owner, "bias", None)
        ok = isinstance(b, torch.Tensor) and b.is_floating_point() and tuple(b.shape) == (self.n,)
        return b if ok else None

    def has_bias(self) -> bool:
        return self.build()[2] is not None

    def extra_parameters(self, w, x) -> list:
        """The trainable tensors beyond the latent weight and bias: [{name, shape, kind, used}], where used says
        whether moving the tensor moves the output on probe weight w and input x."""
        layer, wp, bp = self.build()
        skip = {id(t) for t in (wp, bp) if t is not None}
        if self.loader is not None:
            skip.add(id(getattr(layer, "weight", None)))  # an offline layer's codes, written by the loader
        owner = {id(t): m for m in layer.modules() for t in m.parameters(recurse=False)}
        extras = [(n, t) for n, t in layer.named_parameters() if t.requires_grad and id(t) not in skip]
        if not extras:
            return []
        xin = (x[None] if self.as_3d and x.dim() == 2 else x).to(self.device)
        with torch.no_grad():
            if wp is None:
                self.loader.load(layer, w.to(self.device))
            else:
                wp.copy_(w.to(wp.dtype))
            if bp is not None:
                bp.zero_()
            try:
                y0, found = layer(xin), []
                for name, t in extras:  # a ramp, not a constant: a uniform gain is invisible after absmax scaling
                    kind, saved = self._kind(name, t, owner), t.clone()
                    t.add_(0.375 * torch.linspace(0.5, 1.5, t.numel(), device=t.device).reshape(t.shape).to(t.dtype))
                    moved = not torch.equal(layer(xin), y0)
                    t.copy_(saved)
                    found.append({"name": name, "shape": tuple(t.shape), "kind": kind, "used": moved})
            except Exception as e:  # the user's forward
                raise ProbeError(f"forward raised {one_line(e)}") from None
        return found

    def _kind(self, name, t, owner) -> str:
        m = owner.get(id(t))
        in_norm = "norm" in type(m).__name__.lower() or "norm" in name.lower()
        if t.dim() == 1 and t.numel() == self.k and bool((t == 1).all()):
            return "a norm gain (ones at initialisation)" if in_norm else "a per-feature gain on the input"
        if t.dim() == 1 and t.numel() == self.k and bool((t == 0).all()) and name.endswith("bias"):
            return (
                "a norm bias: it shifts every token before the quantizer (the official model's norms have none)"
                if in_norm
                else "a per-feature shift of the input"
            )
        return "a tensor the reference has no counterpart for"

    def run(self, w, x, *, bias=None, grad=False, dtype=None, autocast=False, layout=None):
        """Layer output for probe weight w (n, k) and input x (..., k) as float64 on the CPU.

        grad: a tensor g like the output: also backpropagate sum(y * g) and return (y, x.grad, weight.grad),
        a missing gradient as None (the weight gradient is None for a loaded layer). The bias is zeroed unless
        given. layout "3d" runs a 2-D probe as (1, T, in), "as is" as it comes; the default follows as_3d.
        """
        if (layout or ("3d" if self.as_3d else "as is")) == "3d" and x.dim() == 2:
            g3 = grad if grad is False else grad[None]
            out = self.run(w, x[None], bias=bias, grad=g3, dtype=dtype, autocast=autocast, layout="as is")
            if grad is False:
                return out[0]
            return out[0][0], None if out[1] is None else out[1][0], out[2]
        layer, wp, bp = self.build(w.shape[-1], dtype)
        with torch.no_grad():
            if wp is None:
                self.loader.load(layer, w.to(self.device))
            else:
                wp.copy_(w.to(wp.dtype))
            if bp is not None:
                bp.copy_(bias.to(bp.dtype) if bias is not None else torch.zeros_like(bp))
        xd = x.detach().to(self.device, dtype or torch.float32).clone()  # the layer may write to it
        if grad is not False:
            xd.requires_grad_(True)
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16) if autocast else nullcontext():
                y = layer(xd)
            if not isinstance(y, torch.Tensor):
                raise ProbeError(f"forward returned a {type(y).__name__}, not a tensor")
            want = (*x.shape[:-1], self.n)
            if tuple(y.shape) != want:
                raise ProbeError(f"forward on input {tuple(x.shape)} returned shape {tuple(y.shape)}, expected {want}")
            self.last_dtype, self.last_output_grad = y.dtype, y.requires_grad
            if grad is False:
                return y.detach().double().cpu()
            if y.requires_grad:
                (y.float() * grad.to(y.device, torch.float32)).sum().backward()
        except ProbeError:
            raise
        except Exception as e:  # the user's forward/backward: a finding, reported in one line
            raise ProbeError(
                f"forward on input {tuple(x.shape)} ({xd.dtype}) raised {one_line(e)}",
                needs_gpu=bool(_GPU_WORDS.search(str(e))),
            ) from None
        cpu = lambda t: None if t is None else t.detach().double().cpu()
        self.last_weight = None if wp is None else cpu(wp).clone()
        return y.detach().double().cpu(), cpu(xd.grad), None if wp is None else cpu(wp.grad)
