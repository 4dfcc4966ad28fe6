"""The official BitNet b1.58 two-stage learning-rate and weight-decay schedule, as pure functions of the step.

With N = steps and S = round(stage_split * N) the first stage-2 step (S = N with stage1_only):

Stage 1, steps [0, S):
    LR  linear warmup lr * (step + 1) / W over W = min(warmup, S) steps (so lr_at(0) > 0 and a warmup longer
        than stage 1 is clipped to it, reaching the peak on stage 1's last step), then a linear decay from lr
        on the line that would reach lr2 only at step N: stage 1 always ends above lr2 (FAQ Fig. 1: "standard
        linear decay from a high peak").
    WD  half cosine from wd at step 0 down toward 0 at step S (2B4T: "cosine schedule reaching a peak of 0.1").
Stage 2, steps [S, N):
    LR  drops to lr2 and decays linearly toward 0, which it would reach at step N: every step's LR is > 0.
    WD  stage2_wd (0 by default: "effectively disabled").
stage1_only: stage 1 stretched over the whole run (S = N), the debugging report's diagnostic; stage 2 is never entered.
const_wd: WD = wd at every step (ablation `const-wd`).

This module only computes numbers; the trainer applies them to the optimizer's param groups.
"""

import math
from dataclasses import dataclass


@dataclass
class ScheduleConfig:
    steps: int
    lr: float = 1.5e-3
    lr2: float = 1e-3
    warmup: int = 100
    wd: float = 0.1
    stage2_wd: float = 0.0
    stage_split: float = 0.5
    stage1_only: bool = False
    const_wd: bool = False

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"schedule: {msg}")

        for k in ("steps", "warmup"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(f"{k} must be an integer, got {v!r}")
        if self.steps < 1:
            bad(f"steps must be at least 1, got {self.steps}")
        if self.warmup < 0:
            bad(f"warmup must be >= 0, got {self.warmup}")
        for k in ("lr", "lr2", "wd", "stage2_wd", "stage_split"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                bad(f"{k} must be a finite number, got {v!r}")
        if self.lr <= 0 or self.lr2 <= 0:
            bad(f"lr and lr2 must be > 0, got lr={self.lr}, lr2={self.lr2}")
        if self.lr2 > self.lr:
            bad(f"lr2 ({self.lr2}) must not exceed lr ({self.lr}): stage 2 starts at a lower peak")
        if self.wd < 0 or self.stage2_wd < 0:
            bad(f"wd and stage2_wd must be >= 0, got wd={self.wd}, stage2_wd={self.stage2_wd}")
        if not 0 <= self.stage_split <= 1:
            bad(f"stage_split must be in [0, 1], got {self.stage_split}")

    @property
    def stage2_start(self) -> int:
        """First stage-2 step (== steps when stage 2 is never entered)."""
        if self.stage1_only:
            return self.steps
        return min(self.steps, int(math.floor(self.stage_split * self.steps + 0.5)))

    @property
    def warmup_steps(self) -> int:
        """Warmup actually used: clipped to the length of stage 1."""
        return min(self.warmup, self.stage2_start)


def _check(step: int, cfg: ScheduleConfig):
    if not 0 <= step < cfg.steps:
        raise ValueError(f"step {step} is outside [0, {cfg.steps})")


def stage_at(step: int, cfg: ScheduleConfig) -> int:
    _check(step, cfg)
    return 1 if step < cfg.stage2_start else 2


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    _check(step, cfg)
    N, S, W = cfg.steps, cfg.stage2_start, cfg.warmup_steps
    if step >= S:  # stage 2: lr2 -> 0 at step N
        return cfg.lr2 * ((N - step) / (N - S))  # fractions first: a factor of exactly 1.0 gives exactly lr2
    if step < W:
        return cfg.lr * ((step + 1) / W)
    lr = cfg.lr + (cfg.lr2 - cfg.lr) * ((step - W) / (N - W))  # step < S <= N, so this stays above lr2...
    if lr <= cfg.lr2 < cfg.lr:  # ...except where lr - lr2 is within float rounding: then the next float above
        lr = math.nextafter(cfg.lr2, math.inf)
    return lr


def wd_at(step: int, cfg: ScheduleConfig) -> float:
    _check(step, cfg)
    if cfg.const_wd:
        return cfg.wd
    S = cfg.stage2_start
    if step >= S:
        return cfg.stage2_wd
    return cfg.wd * (0.5 * (1.0 + math.cos(math.pi * step / S)))  # exactly wd at step 0
