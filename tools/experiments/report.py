"""The report of tools/experiments/experiments.py: each arm's numbers, the plots, and the answers to the debugging
report's five open questions (docs/debugging.md says what that report was).

``summarize`` turns one arm's run (read by the doctor) into the numbers the report quotes; ``write_report``
writes OUT/report.md (and the plots when matplotlib is importable). Kept apart from experiments.py, which
defines and runs the arms, so each reads in one sitting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_ref import machine
from bitnet_ref.doctor import verdicts as D
from bitnet_ref.doctor.run import Run
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import NEAR_UNIGRAM_FRAC

EXPECTED_CAUSE = {
    "no-ste": "missing_ste",
    "clamp-ste": "clamp_ste",
    "quant-head": "quant_head",
    "no-subln": "no_subln",
    "no-dequant": "missing_dequant",
    "const-wd": "const_wd",
}


# ---------------------------------------------------------------------------- measuring


@dataclass
class Arm:
    """One arm of the experiments: its trainer flags, and what running it produced (``result``)."""

    name: str
    title: str
    args: list
    steps: int
    result: dict = field(default_factory=dict)


def summarize(arm: Arm, run: Run, uni: float) -> dict:
    """The numbers the report quotes for one arm."""
    ev = [
        (
            r["step"],
            *(
                number_or_none(r.get(k))
                for k in ("val_loss", "unique_tokens", "top_token_share", "health_flip_rate", "health_frac_zero")
            ),
        )
        for r in run.evals
    ]
    ev = [e for e in ev if e[1] is not None]
    s = {
        "evals": ev,
        "final_val": ev[-1][1] if ev else None,
        "final_unique": ev[-1][2] if ev else None,
        "final_top": ev[-1][3] if ev else None,
    }
    after0 = [e for e in ev if e[0] > 0 and e[2] is not None]
    if after0:
        lo = min(after0, key=lambda e: (e[2], e[0]))
        s.update(min_unique=lo[2], min_step=lo[0], min_val=lo[1])
    cross = next((e for e in ev if e[1] < uni), None)
    s["cross_step"] = cross[0] if cross else None
    flips = [(e[0], e[4]) for e in ev if e[4] is not None]
    s["flips"] = flips
    s["frac_zero"] = next((e[5] for e in reversed(ev) if e[5] is not None), None)
    losses = [number_or_none(r.get("loss")) for r in run.steps if number_or_none(r.get("loss")) is not None]
    s["train_steps"] = [
        (r["step"], number_or_none(r.get("loss"))) for r in run.steps if number_or_none(r.get("loss")) is not None
    ]
    s["final_train"] = sum(losses[-20:]) / len(losses[-20:]) if losses else None
    return s


def s_curve(ev: list) -> str | None:
    """Describe where the val loss fell fastest per step, and whether a late drop followed a plateau."""
    pts = [(s, v) for s, v, *_ in ev if s > 0]
    if len(pts) < 4:
        return None
    rates = [((a[0] + b[0]) / 2, (a[1] - b[1]) / (b[0] - a[0])) for a, b in zip(pts, pts[1:])]
    half = len(rates) // 2
    late_best = max(rates[half:], key=lambda r: r[1])
    before = rates[half - 1][1] if half >= 1 else None
    late_drop = before is not None and late_best[1] > 1.5 * max(before, 1e-9) and late_best[1] > 0
    return f"val-loss decrease per step: {', '.join(f'{r * 1e3:.2f}e-3@{int(m)}' for m, r in rates)}; " + (
        f"a late drop after a slower stretch (S-curve-like) around step {int(late_best[0])}"
        if late_drop
        else "no late drop after a plateau: the decrease only slows"
    )


# ---------------------------------------------------------------------------- plots


def make_plots(arms: list, out: Path, uni: float, ln_v: float) -> str | None:
    """PNG per arm plus an overview; returns None when done, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or the project's [plot] extra)"
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    for a in arms:
        s = a.result.get("summary")
        if not s:
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        st = s["train_steps"]
        if st:
            k = max(1, len(st) // 50)
            xs = [st[i][0] for i in range(k - 1, len(st), k)]
            ys = [sum(v for _, v in st[i - k + 1 : i + 1]) / k for i in range(k - 1, len(st), k)]
            ax1.plot(xs, ys, lw=1, label="train (smoothed)")
        ax1.plot([e[0] for e in s["evals"]], [e[1] for e in s["evals"]], "o-", ms=3, label="val")
        ax1.axhline(uni, color="gray", ls="--", lw=0.8, label="unigram entropy")
        ax1.axhline(ln_v, color="gray", ls=":", lw=0.8, label="ln V")
        ax1.set(xlabel="step", ylabel="loss (nats)", title=a.name)
        ax1.legend(fontsize=7)
        u = [(e[0], e[2]) for e in s["evals"] if e[2] is not None]
        ax2.plot([x for x, _ in u], [y for _, y in u], "o-", ms=3, color="C3")
        ax2.set(xlabel="step", ylabel="unique tokens (greedy probe)", title=a.title)
        fig.tight_layout()
        fig.savefig(pdir / f"{a.name}.png", dpi=80)
        plt.close(fig)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, a in enumerate(arms):
        s = a.result.get("summary")
        if s and len(s["evals"]) > 2:
            style = dict(ms=2, lw=1, label=a.name, ls="--" if a.name.startswith("abl-") else "-", color=f"C{i % 10}")
            ax1.plot([e[0] for e in s["evals"]], [e[1] for e in s["evals"]], marker="o", **style)
            ax2.plot([e[0] for e in s["evals"]], [e[2] for e in s["evals"]], marker="o", **style)
    ax1.axhline(uni, color="gray", ls="--", lw=0.8)
    ax1.set(xlabel="step", ylabel="val loss (nats)", title="val loss (dashed: unigram entropy)")
    ax2.set(xlabel="step", ylabel="unique tokens", title="greedy-probe unique tokens (log scale)", yscale="log")
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(pdir / "overview.png", dpi=80)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------- report


def _f(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _u(x):
    return "n/a" if x is None else str(int(x))


def _traj(s: dict, n: int = 14) -> str:
    ev = [e for e in s.get("evals", []) if e[2] is not None]
    if len(ev) > n:
        idx = sorted({round(i * (len(ev) - 1) / (n - 1)) for i in range(n)})
        ev = [ev[i] for i in idx]
    return ", ".join(f"{_u(e[2])}@{e[0]}" for e in ev) or "n/a"


def answers(by: dict, uni: float, quick: bool) -> list[str]:
    """The debugging report's five open questions, answered from the arms' numbers."""
    g = lambda name: by.get(name, Arm(name, "", [], 0)).result.get("summary") or {}
    t1, t2, t4, half, ref, fp = g("t1-stage1"), g("t2-lr3"), g("t4-long"), g("t1-half"), g("ref"), g("fp")
    t3, t5 = g("t3-end-only"), g("t5-fractions")
    out = []

    def after_min(s):
        ev = [e for e in s.get("evals", []) if e[2] is not None and e[0] >= s.get("min_step", 0)]
        return ", ".join(f"{_u(e[2])}@{e[0]}" for e in ev[:8])

    out.append(
        f"1. **Does the reduced-LR run recover further at later steps?** t2-lr3 (LR/3): unique tokens "
        f"{_traj(t2)}. Its minimum after step 0 was {_u(t2.get('min_unique'))} at step {t2.get('min_step')} "
        f"(val loss {_f(t2.get('min_val'))}, unigram entropy {uni:.3f}); from there: {after_min(t2)}. "
        + (
            "Yes: it keeps rising after the minimum."
            if (t2.get("final_unique") or 0) > (t2.get("min_unique") or 0)
            else "No: it ends at its minimum."
        )
    )
    out.append(
        f"2. **Final token count at the end of both runs:** t1-stage1 (standard LR) ends with "
        f"{_u(t1.get('final_unique'))} unique tokens at val loss {_f(t1.get('final_val'))}; t2-lr3 with "
        f"{_u(t2.get('final_unique'))} at val loss {_f(t2.get('final_val'))} (unigram entropy {uni:.3f}, "
        f"FP baseline {_f(fp.get('final_val'))}, reference two-stage recipe {_f(ref.get('final_val'))})."
    )
    dips, at_level, back = [], 0, 0
    names = ("t1-stage1", "t2-lr3", "t4-long", "ref", "fp")
    for name in names:
        s = g(name)
        if s.get("min_unique") is None:
            continue
        at_uni = s.get("min_val") is not None and s["min_val"] >= NEAR_UNIGRAM_FRAC * uni
        at_level += at_uni
        back += (s.get("final_unique") or 0) > s["min_unique"]
        dips.append(
            f"{name}: minimum {_u(s['min_unique'])} at step {s['min_step']} (val loss {_f(s['min_val'])}"
            f"{', still at unigram level' if at_uni else ', already below unigram level'}), "
            f"{_u(s.get('final_unique'))} at the end; val loss below the unigram entropy "
            + (f"from step {s['cross_step']}" if s.get("cross_step") is not None else "at no evaluation")
        )
    fp_min = g("fp").get("min_unique")
    out.append(
        "3. **Is the 2-token collapse permanent or temporary?** " + "; ".join(dips) + ". "
        f"In {at_level} of {len(dips)} arms the minimum came while the val loss was still at unigram level, "
        "where a model that knows little more than token frequencies decodes greedily to its most frequent "
        f"token ({'spaces, in this corpus' if vocab_note(by) is None else 'a whitespace or punctuation token'}); "
        + (
            f"the full-precision baseline dips too (to {_u(fp_min)}), so the dip is not a ternary effect; "
            if fp_min is not None and fp_min <= 2
            else ""
        )
        + f"{back} of {len(dips)} arms ended above their minimum. "
        "Greedy repetition that persists after the loss is well below the unigram entropy is what the "
        "doctor calls a collapse; none of these arms shows one unless its verdict says so."
    )
    sc = s_curve(t4.get("evals", []))
    out.append(
        "4. **Does training beyond the dip show S-curve recovery?** "
        f"t4-long ({by['t4-long'].steps if 't4-long' in by else '?'} "
        f"steps, stage 1 only): unique tokens {_traj(t4)}; val loss {_f(t4.get('final_val'))} at the end. "
        + (sc + "." if sc else "Too few evaluations to tell.")
        + f" For the two-stage reference: {s_curve(ref.get('evals', [])) or 'n/a'}."
    )
    lens = [
        (n, s) for n, s in (("t1-half", half), ("t1-stage1", t1), ("t4-long", t4)) if s.get("final_val") is not None
    ]
    mono = all(b[1]["final_val"] <= a[1]["final_val"] + 0.01 for a, b in zip(lens, lens[1:]))
    same = [s.get("final_val") for s in (ref, t3, t5) if s.get("final_val") is not None]
    out.append(
        "5. **Does the non-monotonic performance (longer run ends worse) persist?** Stage-1-only runs of "
        "increasing length end at: "
        + "; ".join(
            f"{n} ({by[n].steps} steps) val loss {_f(s['final_val'])}, {_u(s.get('final_unique'))} unique tokens"
            for n, s in lens
        )
        + (". The val loss improves monotonically with length" if mono else ". NOT monotonic in val loss")
        + " (unique tokens from a greedy probe are a noisy, low-resolution signal). Evaluation timing does not "
        f"change the model: ref, t3-end-only and t5-fractions train identically and end at val loss "
        f"{' / '.join(_f(v, 4) for v in same)}"
        + (" (identical)" if len(same) == 3 and max(same) - min(same) < 1e-6 else "")
        + "."
    )
    return out


def correct_bitnet(by: dict, uni: float, ln_v: float, mode: dict, quick: bool) -> str:
    ref = by["ref"].result.get("summary") or {}
    fp = by["fp"].result.get("summary") or {}
    d = by["ref"].result.get("diagnosis") or {}
    flips = ref.get("flips") or []
    cfg = (by["ref"].result.get("run").header.get("config") or {}) if by["ref"].result.get("run") else {}
    width = (
        f"{'quick-mode ' if quick else ''}model (d_model {cfg.get('d_model', '?')}, {cfg.get('n_layers', '?')} "
        f"layers, vocab {cfg.get('vocab_size', '?')})"
    )
    txt = (
        f"With the reference recipe, the {width} trained for {mode['steps']} steps ends at val loss "
        f"{_f(ref.get('final_val'))} nats: {(ref.get('final_val') or 0) / uni:.2f}x the unigram entropy ({uni:.3f}) "
        f"and far below ln V ({ln_v:.3f}); the same model in full precision ends at {_f(fp.get('final_val'))}. "
        f"Greedy unique tokens: {_traj(ref)}. "
    )
    if flips:
        txt += (
            f"The ternary flip rate falls from {flips[0][1]:.3f} (share of codes changed since the previous eval, "
            f"step {flips[0][0]}) to {flips[-1][1]:.4f} (step {flips[-1][0]}), and the share of 0 codes stays "
            f"at {_f(ref.get('frac_zero'))}"
            + (
                " (about a third, as the FAQ describes trained models). "
                if 0.25 <= (ref.get("frac_zero") or 0) <= 0.42
                else ". "
            )
        )
    txt += (
        f"The doctor's verdict: **{d.get('verdict', 'n/a')}**"
        + (f" (cause: {d['cause']})" if d.get("cause") else "")
        + ". "
    )
    gap = (ref.get("final_val") or 0) - (fp.get("final_val") or 0)
    below = (ref.get("final_val") or uni) < uni
    txt += (
        f"In plain words: a correct BitNet of this width {'learns past' if below else 'does not get past'} the "
        f"unigram level in {mode['steps']} steps, ending {abs(gap):.3f} nats "
        f"{'above' if gap > 0 else 'below'} its full-precision twin. "
    )
    near_lnv = [a.name for a in by.values() if (a.result.get("diagnosis") or {}).get("verdict") == "not_learning"]
    txt += "No arm here stays near ln V. " if not near_lnv else f"Arms that stay near ln V: {', '.join(near_lnv)}. "
    txt += (
        "A loss stuck near ln V, as in the debugging report (10.2-11.0 nats with ln 50257 = 10.82), means the model "
        "has not learned even token frequencies; that is the doctor's 'not learning', not an S-curve plateau."
    )
    if quick:
        txt += " (Quick mode: run the full mode for the 256-wide numbers.)"
    return txt


def vocab_note(by: dict) -> str | None:
    """The tokenizer line of the reference arm's run (None for bytes)."""
    run = by["ref"].result.get("run") if "ref" in by else None
    tok = run.header.get("tokenizer") if run else None
    return f"{tok['spec']} (sha256 {tok['sha256'][:16]}, vocab {tok['vocab_size']})" if isinstance(tok, dict) else None


def write_report(arms: list, out: Path, mode_name: str, mode: dict, plots: bool = True) -> Path:
    by = {a.name: a for a in arms}
    order = ["ref", "fp", "t1-stage1", "t2-lr3", "t3-end-only", "t4-long", "t5-fractions", "t1-half"]
    arms = sorted(arms, key=lambda a: (order.index(a.name) if a.name in order else len(order), a.name))
    ref_run = by["ref"].result.get("run")
    ln_v, uni = D.baselines(ref_run) if ref_run else (None, None)
    uni, ln_v = uni or float("nan"), ln_v or float("nan")
    plot_note = make_plots(arms, out, uni, ln_v) if plots else "plots were not requested (--no-plots)"
    quick = mode_name == "quick"
    header = ref_run.header if ref_run else {}
    tok = vocab_note(by)
    L = [
        f"# The debugging report's experiments at this machine's scale ({mode_name} mode"
        + (f", tokenizer {mode.get('tokenizer')})" if tok else ", bytes)"),
        "",
    ]
    shape = {k: header.get("config", {}).get(k) for k in ("d_model", "n_layers", "n_heads", "ffn_hidden", "context")}
    L.append(
        f"Model preset **{mode['preset']}** ({json.dumps(shape)}), "
        f"{mode['steps']} steps (t4-long: {2 * mode['steps']}, t1-half: {mode['steps'] // 2}), batch {mode['batch']}, "
        f"seed 1337 for every arm. Data: {header.get('data', {}).get('source', 'n/a')}; "
        f"ln V = {ln_v:.3f} nats, unigram entropy = {uni:.3f} nats. "
        + (f"Tokenizer: {tok}, trained on the training split. " if tok else "Tokens: UTF-8 bytes. ")
        + f"Parameters: {header.get('params', 0) / 1e6:.2f} M, of which BitLinear "
        f"{header.get('params_bitlinear', 0) / 1e6:.2f} M and embeddings/head/norms "
        f"{header.get('params_other', 0) / 1e6:.2f} M. "
        f"Device: {header.get('device', '?')}; machine: {machine.summary()}"
        + (" (it wrote this report; reused arms ran earlier)." if any(a.result.get("reused") for a in arms) else ".")
    )
    L.append("")
    L.append(
        "The debugging report's setup (GPT-2 vocabulary, loss 10.2-11.0 = ln 50257 = 10.82) never left the ln V level: "
        "its runs had not learned token frequencies yet. The arms below separate the effects it mixed: "
        "stage-1-only vs the two-stage schedule, the LR, evaluation timing, run length, and each known bug."
    )
    L += [
        "",
        "## Headline table",
        "",
        "| arm | what | steps | final val loss | x unigram | unique tokens (min@step -> final) | top-token share | "
        "flip rate at end | doctor verdict | cause |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in arms:
        s, d = a.result.get("summary") or {}, a.result.get("diagnosis") or {}
        if not s:
            L.append(f"| {a.name} | {a.title} | {a.steps} | failed (exit {a.result.get('rc')}) | | | | | | |")
            continue
        fl = s["flips"][-1][1] if s.get("flips") else None
        mn = f"{_u(s.get('min_unique'))}@{s.get('min_step')} -> " if s.get("min_unique") is not None else ""
        L.append(
            f"| {a.name} | {a.title} | {a.steps} | {_f(s['final_val'])} | {_f((s['final_val'] or 0) / uni, 2)} | "
            f"{mn}{_u(s['final_unique'])} | {_f(s.get('final_top'), 2)} | {_f(fl, 4)} | {d.get('verdict')} | "
            f"{d.get('cause') or '-'} |"
        )
    L += [
        "",
        "## The doctor's verdicts",
        "",
        "`python -m bitnet_ref.doctor arms/<arm> --baseline arms/fp` for every arm. For the ablations the expected "
        "cause is the bug switched on; the doctor never reads the run's ablation list.",
        "",
        "| arm | verdict | cause | expected cause | right? | also flagged | first evidence line |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in arms:
        d = a.result.get("diagnosis") or {}
        abl = a.name[4:] if a.name.startswith("abl-") else None
        exp = EXPECTED_CAUSE.get(abl, "?") if abl else "none"
        got = d.get("cause") or "none"
        ok = "yes" if got == exp else "no"
        others = ", ".join(f["cause"] for f in d.get("findings", [])[1:]) or "-"
        first = next((e for e in d.get("evidence", []) if not e.startswith(("final", "unique", "FP baseline"))), "-")
        first = first[:160].replace("|", "\\|")  # a pipe inside a cell would split the table row
        L.append(f"| {a.name} | {d.get('verdict', 'n/a')} | {got} | {exp} | {ok} | {others} | {first} |")
    L += ["", "## The debugging report's five open questions, answered with these runs", ""]
    L += answers(by, uni, quick)
    L += ["", "## What a correct BitNet of this width does", "", correct_bitnet(by, uni, ln_v, mode, quick)]
    L += ["", "## Plots", ""]
    if plot_note:
        L.append(f"No plots: {plot_note}. Every number above comes from `arms/<arm>/metrics.jsonl`.")
    else:
        L.append("![overview](plots/overview.png)")
        L.append("")
        L += [f"- {a.name}: ![{a.name}](plots/{a.name}.png)" for a in arms if a.result.get("summary")]
    L += ["", "## Runs", "", "| arm | exit | seconds | command |", "|---|---|---|---|"]
    for a in arms:
        r = a.result
        secs = "reused" if r.get("reused") else _f(r.get("seconds"), 0)
        L.append(f"| {a.name} | {r.get('rc')} | {secs} | `python -m bitnet_ref.train {' '.join(a.args)}` |")
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path
