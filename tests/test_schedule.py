"""The two-stage schedule: the properties issue 3 promises, for any valid configuration, plus worked examples."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitnet_ref.train.schedule import ScheduleConfig, lr_at, stage_at, wd_at


@st.composite
def configs(draw, **fixed):
    lr = draw(st.floats(1e-5, 1e-1))
    kw = dict(
        steps=draw(st.integers(1, 400)),
        lr=lr,
        lr2=draw(st.floats(1e-6, 1.0)) * lr,
        warmup=draw(st.integers(0, 500)),
        wd=draw(st.floats(0, 0.5)),
        stage_split=draw(st.floats(0, 1)),
        stage1_only=draw(st.booleans()),
    )
    kw.update(fixed)
    return ScheduleConfig(**kw)


def curve(cfg):
    return [lr_at(s, cfg) for s in range(cfg.steps)], [wd_at(s, cfg) for s in range(cfg.steps)]


@settings(max_examples=300)
@given(configs())
def test_lr_bounds_and_stage_monotonicity(cfg):
    lrs, _ = curve(cfg)
    stages = [stage_at(s, cfg) for s in range(cfg.steps)]
    assert all(0 < v <= cfg.lr for v in lrs)  # never negative (nor zero), never above the peak
    assert stages == sorted(stages) and set(stages) <= {1, 2}  # stage 1 then stage 2, never back
    W = cfg.warmup_steps
    for s in range(1, cfg.steps):
        if stages[s] != stages[s - 1]:
            continue
        if s < W:
            assert lrs[s] > lrs[s - 1]  # warmup rises strictly
        else:
            assert lrs[s] <= lrs[s - 1]  # each stage decays after warmup


@settings(max_examples=300)
@given(configs(stage1_only=False))
def test_drop_at_the_stage_boundary(cfg):
    S = cfg.stage2_start
    if 0 < S < cfg.steps and cfg.lr > cfg.lr2:
        assert lr_at(S, cfg) == pytest.approx(cfg.lr2)
        assert lr_at(S - 1, cfg) > lr_at(S, cfg)


@settings(max_examples=300)
@given(configs())
def test_weight_decay(cfg):
    _, wds = curve(cfg)
    for s, v in enumerate(wds):
        if stage_at(s, cfg) == 2:
            assert v == 0.0  # exactly zero, not small
        else:
            assert 0 <= v <= cfg.wd
    if cfg.stage2_start > 0:
        assert wds[0] == cfg.wd  # the cosine starts at its peak
    assert all(a >= b for a, b in zip(wds, wds[1:]))


@settings(max_examples=200)
@given(configs(stage1_only=True))
def test_stage1_only_never_enters_stage_2(cfg):
    assert all(stage_at(s, cfg) == 1 for s in range(cfg.steps))
    lrs, _ = curve(cfg)
    after_warmup = lrs[cfg.warmup_steps :]
    assert all(v > cfg.lr2 for v in after_warmup) or cfg.lr == cfg.lr2  # heads for lr2, never reaches it


@given(configs(const_wd=True))
def test_const_wd(cfg):
    assert curve(cfg)[1] == [cfg.wd] * cfg.steps


@pytest.mark.parametrize("stage1_only", [False, True])
@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_one_step(stage1_only, warmup):
    cfg = ScheduleConfig(steps=1, warmup=warmup, stage1_only=stage1_only)
    assert 0 < lr_at(0, cfg) <= cfg.lr and 0 <= wd_at(0, cfg) <= cfg.wd
    with pytest.raises(ValueError):
        lr_at(1, cfg)


def test_worked_example():
    cfg = ScheduleConfig(steps=100, lr=1.5e-3, lr2=1e-3, warmup=10, wd=0.1)
    assert cfg.stage2_start == 50
    assert lr_at(0, cfg) == pytest.approx(1.5e-4)  # (0 + 1) / 10 of the peak
    assert lr_at(9, cfg) == pytest.approx(1.5e-3)  # warmup ends at the peak
    # then the line from (10, 1.5e-3) to (100, 1e-3): at step 49, 1.5e-3 - 0.5e-3 * 39 / 90
    assert lr_at(49, cfg) == pytest.approx(1.5e-3 - 0.5e-3 * 39 / 90)
    assert lr_at(50, cfg) == pytest.approx(1e-3)  # the drop
    assert lr_at(99, cfg) == pytest.approx(1e-3 / 50)  # one step before reaching 0
    assert wd_at(0, cfg) == pytest.approx(0.1)
    assert wd_at(25, cfg) == pytest.approx(0.05)  # half way down the half cosine
    assert wd_at(49, cfg) == pytest.approx(0.05 * (1 + math.cos(math.pi * 49 / 50)))
    assert wd_at(50, cfg) == 0.0 and wd_at(99, cfg) == 0.0


def test_warmup_longer_than_the_run_is_clipped():
    cfg = ScheduleConfig(steps=20, warmup=375, stage1_only=True)
    assert cfg.warmup_steps == 20
    assert lr_at(19, cfg) == pytest.approx(cfg.lr)
    cfg = ScheduleConfig(steps=20, warmup=375)  # clipped to stage 1's 10 steps, then the drop
    assert lr_at(9, cfg) == pytest.approx(cfg.lr) and lr_at(10, cfg) == pytest.approx(cfg.lr2)


@pytest.mark.parametrize(
    "bad",
    [
        dict(steps=0),
        dict(steps=1.5),
        dict(steps=True),
        dict(steps=10, lr=0.0),
        dict(steps=10, lr=-1e-3),
        dict(steps=10, lr2=0.0),
        dict(steps=10, lr=1e-3, lr2=2e-3),
        dict(steps=10, warmup=-1),
        dict(steps=10, wd=-0.1),
        dict(steps=10, stage2_wd=-1.0),
        dict(steps=10, stage_split=1.5),
        dict(steps=10, lr=float("nan")),
        dict(steps=10, wd=float("inf")),
    ],
)
def test_rejects_bad_config(bad):
    with pytest.raises(ValueError):
        ScheduleConfig(**bad)
