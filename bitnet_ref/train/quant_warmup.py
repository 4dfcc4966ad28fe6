"""The quantization warmup: how strongly the BitLinears quantize at each step, lambda(step) in [0, 1].

A full-precision model fine-tuned to 1.58 bits loses what it knew when the quantization arrives all at once
(Hugging Face's "Fine-tuning LLMs to 1.58bit": Llama3-8B's loss jumps to ~13, above ln V). Blending it in,
x + lambda * (quant(x) - x) with the straight-through estimator (``quant.blended_linear``), over the first N
steps lets the model follow. With t = min(step / N, 1), the shapes the study compared:

    linear       t                                          (the study's lambda = min(step / 1000, 1))
    exponential  1 - (1 - t)^k                              (the study's "exponential" scheduler, k in 4..10)
    sigmoid      (s(t) - s(0)) / (s(1) - s(0)),  s(t) = 1 / (1 + exp(-k (t - 1/2)))   (k in 15..100)

The sigmoid is the study's, shifted and scaled so that it starts at exactly 0 and ends at exactly 1 (they
differ by at most s(0) / (1 - 2 s(0)), s(0) = 1 / (1 + exp(k / 2)): 5.5e-4 at k = 15). ``step`` counts
updates: the update numbered ``step`` (1-based) and the evaluation after it run at lambda(step), so
evaluation 0 of a warmed run is the full-precision model and lambda is exactly 1 from update N on. N = 0 is
abrupt quantization: 1 at every step.

``on`` says what is warmed: "both" (default), or only "weights" or "activations", the other at 1 throughout.
This module only computes numbers; the trainer sets them on the model (``Transformer.set_quant_strength``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("linear", "exponential", "sigmoid")
TARGETS = ("both", "weights", "activations")
DEFAULT_K = {"linear": None, "exponential": 6.0, "sigmoid": 20.0}  # middles of the ranges the study tried
MAX_K = 200.0  # the study's largest sigmoid k is 100; far beyond, the curve is a step and exp() overflows


@dataclass(frozen=True)
class QuantWarmup:
    steps: int = 0  # N; 0 = abrupt
    shape: str = "linear"
    k: float | None = None  # the shape's steepness (None = DEFAULT_K); linear has none
    on: str = "both"

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"quantization warmup steps must be a whole number >= 0, got {self.steps!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"quantization warmup shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.on not in TARGETS:
            raise ValueError(f"quantization warmup applies to one of {', '.join(TARGETS)}, got {self.on!r}")
        if self.k is not None:
            if self.shape == "linear":
                raise ValueError("the linear quantization warmup has no steepness k")
            if not isinstance(self.k, (int, float)) or isinstance(self.k, bool) or not 0 < self.k <= MAX_K:
                raise ValueError(f"quantization warmup k must be a number in (0, {MAX_K:g}], got {self.k!r}")

    @property
    def steepness(self) -> float | None:
        return DEFAULT_K[self.shape] if self.k is None else float(self.k)


def quant_lambda(step: int, w: QuantWarmup) -> float:
    """lambda after ``step`` updates (step >= 0): 0 at step 0 when warming, exactly 1 from step N on."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a whole number >= 0, got {step!r}")
    if step >= w.steps:  # also N = 0: abrupt
        return 1.0
    t = step / w.steps  # in [0, 1)
    if w.shape == "linear":
        return t
    k = w.steepness
    if w.shape == "exponential":
        return 1.0 - (1.0 - t) ** k

    def s(u):
        return 1.0 / (1.0 + math.exp(-k * (u - 0.5)))

    lo, hi = s(0.0), s(1.0)
    return min(1.0, max(0.0, (s(t) - lo) / (hi - lo)))


def strengths(step: int, w: QuantWarmup) -> tuple[float, float]:
    """(weights, activations) quantization strength after ``step`` updates."""
    lam = quant_lambda(step, w)
    return (lam if w.on != "activations" else 1.0, lam if w.on != "weights" else 1.0)
