"""The report of warmup.py: each arm's numbers, the plots, and the study's answers set against ours.

``write_report`` reads every arm's run directory (through the doctor's reader), measures the shock where the
quantization came in (``doctor.quant_shock.measure_shock``, the doctor's own measurement), collects the decode
probe's reports, asks the doctor for its verdict, and writes OUT/report.md and OUT/plots/*.png.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bitnet_ref import machine
from bitnet_ref.doctor.quant_shock import measure_shock
from bitnet_ref.doctor.run import load_run
from bitnet_ref.doctor.verdicts import diagnose
from bitnet_ref.metrics_log import number_or_none

TIE = 0.03  # nats: val-loss differences below this are called ties (one seed; not measured, an assumption)


def _rolling(xs: list, k: int = 10) -> list:
    return [sum(xs[max(0, i - k + 1) : i + 1]) / len(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def summarize(d: Path, base) -> dict:
    run = load_run(d)
    steps = [(r["step"], number_or_none(r.get("loss")), number_or_none(r.get("quant_lambda"))) for r in run.steps]
    evals = [(r["step"], number_or_none(r.get("val_loss")), number_or_none(r.get("unique_tokens"))) for r in run.evals]
    probes = []
    for f in sorted(d.glob("probe-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        p = json.loads(f.read_text())
        if "error" not in p:
            probes.append(
                (
                    int(f.stem.split("-")[1]),
                    p["verdict"]["verdict"],
                    p["context"]["val_loss_measured"],
                    p["diversity"]["unique_tokens"],
                    p["parity"]["ok"],
                )
            )
    shock = measure_shock(run)
    ys = _rolling([loss for _, loss, _ in steps])
    full = next((i for i, (_, _, lam) in enumerate(steps) if lam is not None and lam >= 1.0), None)
    peak = None
    if shock is not None and full is not None:  # the highest loss where the quantization came in (the study's view)
        near = [(ys[i], f"mean train loss of steps {max(1, i - 8)}-{i + 1}") for i in range(min(len(ys), full + 21))]
        near += [(v, f"val loss at step {st}") for st, v, _ in evals if v is not None and st <= full + 21 and st > 0]
        if any(r.get("step") == 0 and r.get("quant_lambda") == 1.0 for r in run.evals):
            near.append((evals[0][1], "val loss at step 0"))
        peak = max(near)
    return {
        "peak": peak,
        "run": run,
        "steps": steps,
        "evals": evals,
        "probes": probes,
        "shock": shock,
        "final_val": evals[-1][1] if evals else None,
        "final_unique": evals[-1][2] if evals else None,
        "diagnosis": diagnose(run, base).as_dict(),
        "init": run.header.get("init"),
    }


# ---------------------------------------------------------------------------- plots


def make_plots(arms: dict, out: Path, mode: dict, ln_v: float, uni: float) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or the project's [plot] extra)"
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    F, conts = mode["fp_steps"], [n for n in arms if n not in ("fp", "scratch")]
    colors = {n: f"C{i % 10}" for i, n in enumerate(arms)}

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for n, s in arms.items():
        xs = [st for st, *_ in s["steps"]]
        ys = _rolling([loss for _, loss, _ in s["steps"]])
        off = F if n in conts else 0
        style = dict(lw=1.8 if n in ("fp", "scratch") else 1, color=colors[n], label=n)
        a1.plot([x + off for x in xs], ys, **style)
        if n in conts:
            k = min(len(xs), 80)
            a2.plot(xs[:k], ys[:k], **style)
    a1.axhline(ln_v, color="gray", ls=":", lw=0.8)
    a1.axhline(uni, color="gray", ls="--", lw=0.8)
    start = next((s["shock"].start for s in arms.values() if s["shock"]), None)
    if start is not None:
        a2.axhline(start, color="k", ls="--", lw=0.8, label="the FP start, unquantized")
    a1.axvline(F, color="k", lw=0.6)
    a1.set(
        xlabel="total steps (continuations start at the FP run's end)",
        ylabel="train loss, mean of 10 steps",
        title="from full precision to ternary (dotted: ln V, dashed: unigram entropy)",
    )
    a2.set(
        xlabel="step of the continuation",
        ylabel="train loss, mean of 10 steps",
        title="where the quantization comes in (first 80 steps)",
    )
    a1.legend(fontsize=7, ncol=2)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(pdir / "overview.png", dpi=80)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.2))
    for n in conts:
        s = arms[n]
        a1.plot([st for st, *_ in s["steps"]], [lam for *_, lam in s["steps"]], color=colors[n], label=n)
        a2.plot([e[0] for e in s["evals"]], [e[1] for e in s["evals"]], "o-", ms=3, color=colors[n], label=n)
    sc = arms.get("scratch")
    if sc:
        a2.plot(
            [e[0] - F for e in sc["evals"] if e[0] >= F],
            [e[1] for e in sc["evals"] if e[0] >= F],
            "k--",
            lw=1,
            label="scratch (same total steps)",
        )
    a1.set(xlabel="step of the continuation", ylabel="lambda", title="quantization strength per step")
    a2.set(xlabel="step of the continuation", ylabel="val loss", title="val loss at each evaluation")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(pdir / "lambda-and-val.png", dpi=80)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.2))
    for n, s in arms.items():
        off = F if n in conts else 0
        a1.plot(
            [e[0] + off for e in s["evals"]], [e[2] for e in s["evals"]], "o-", ms=2, lw=1, color=colors[n], label=n
        )
        if s["probes"]:
            a2.plot([p[0] + off for p in s["probes"]], [p[2] for p in s["probes"]], "o-", color=colors[n], label=n)
    a1.set(xlabel="total steps", ylabel="unique tokens", title="greedy probe (trainer): unique tokens")
    a2.set(xlabel="total steps", ylabel="val loss (packed ternary decode)", title="decode probe: measured loss")
    a1.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(pdir / "unique-and-probe.png", dpi=80)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------- the study's answers


def _f(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"


def answers(arms: dict, mode: dict, ln_v: float) -> list[str]:
    g = arms.get
    short, long_ = mode["short"], mode["long"]
    ab, sc = g("abrupt"), g("scratch")
    warmed = {n: s for n, s in arms.items() if n.split("-")[0] in ("linear", "exponential", "sigmoid")}
    out = []
    if ab and ab["shock"]:
        sh = ab["shock"]
        out.append(
            f"1. **Abrupt quantization sends the loss above ln V (study: ~13 nats for Llama3-8B, ln V 11.8).** "
            f"Here the loss climbs from {sh.start:.3f} (the FP start, unquantized) to {ab['peak'][0]:.3f} "
            f"({ab['peak'][1]}); its largest jump is {sh.jump:+.3f} nats ({sh.what}), {sh.frac:.0%} of the way to ln V "
            f"{ln_v:.3f}. "
            + (
                "**Matches.**"
                if ab["peak"][0] >= ln_v
                else "**Does not match in size**: the jump is real but far "
                "from ln V; the model keeps most of what it knew."
            )
        )
    lin = g(f"linear-{long_}")
    if ab and lin:
        out.append(
            f"2. **A linear warmup recovers (study: WikiText ppl 12.2 after 10B tokens).** linear-{long_} ends at val "
            f"loss {_f(lin['final_val'])}, linear-{short} at {_f(g(f'linear-{short}', {}).get('final_val'))}, "
            f"abrupt at {_f(ab['final_val'])}; the FP start was {_f(ab['shock'].start if ab['shock'] else None)}. "
            + _cmp(lin["final_val"], ab["final_val"], f"linear-{long_}", "abrupt")
        )
    ex, li = g(f"exponential-{long_}"), lin
    if ex and li and ex["shock"] and li["shock"]:
        out.append(
            f"3. **An exponential lambda removes the spike but ends worse (study: no spike, ppl ~15 vs 12.2).** "
            f"Largest jump where the quantization comes in: exponential-{long_} {ex['shock'].jump:+.3f} nats "
            f"({ex['shock'].frac:.0%} of the way to ln V), linear-{long_} {li['shock'].jump:+.3f} "
            f"({li['shock'].frac:.0%}), abrupt {ab['shock'].jump:+.3f} ({ab['shock'].frac:.0%}). Final val loss: "
            f"exponential-{long_} {_f(ex['final_val'])}, linear-{long_} {_f(li['final_val'])}. "
            + (
                "Spike: "
                + ("smaller than linear's" if ex["shock"].frac < li["shock"].frac else "not smaller than linear's")
                + "; end: "
                + _cmp(ex["final_val"], li["final_val"], f"exponential-{long_}", f"linear-{long_}")
            )
        )
    pairs = [(f"sigmoid-{n}", f"linear-{n}") for n in (short, long_) if g(f"sigmoid-{n}") and g(f"linear-{n}")]
    if pairs:
        jumps = {n: _max_jump(arms[n]) for pair in pairs for n in pair}
        worse = [sg for sg, li in pairs if jumps[sg] > jumps[li] + TIE]
        out.append(
            "4. **A sigmoid lambda is unstable (study: instability around its steep middle).** Largest rise of the "
            "10-step mean train loss within 10 steps during the warmup: "
            + ", ".join(f"{sg} {jumps[sg]:+.3f} vs {li} {jumps[li]:+.3f} nats" for sg, li in pairs)
            + "; the doctor's largest jump: "
            + ", ".join(f"{n} {arms[n]['shock'].frac:.1%}" for pair in pairs for n in pair if arms[n]["shock"])
            + " of the way to ln V. "
            + (
                f"**Matches, mildly**: {', '.join(worse)} disturbs the loss more than the linear ramp of the same "
                "length (its steep middle is nearly abrupt), but it recovers and stays below the doctor's threshold."
                if worse
                else "**Does not match**: no instability beyond the linear ramp's at this scale."
            )
        )
    if ab and warmed:
        best = min(warmed, key=lambda n: warmed[n]["final_val"])
        gain = ab["final_val"] - warmed[best]["final_val"]
        out.append(
            "5. **Small models barely benefit from the warmup (study: SmolLM-135M's curves 'closely align').** "
            f"The best warmed arm ({best}) ends {gain:+.3f} nats below abrupt ({_f(warmed[best]['final_val'])} vs "
            f"{_f(ab['final_val'])}). "
            + (
                "**Matches**: a tie at this scale."
                if abs(gain) < TIE
                else "**Does not match**: the warmup makes a difference here."
                if gain > 0
                else "**Matches, more than**: abrupt ends better."
            )
        )
    if sc and warmed and ab:
        conts = [*warmed.values(), ab]
        better = sum(s["final_val"] < sc["final_val"] - TIE for s in conts)
        out.append(
            "6. **Fine-tuning from full precision beats ternary from scratch (study: ppl 12.2 vs at best 26).** "
            f"At the same total steps ({mode['fp_steps'] + mode['cont_steps']}), scratch ends at "
            f"{_f(sc['final_val'])}; the continuations end between {_f(min(s['final_val'] for s in conts))} and "
            f"{_f(max(s['final_val'] for s in conts))}: {better} of {len(conts)} beat it by more than {TIE} nats. "
            + (
                "**Matches.**"
                if better == len(conts)
                else "**Matches for some arms only.**"
                if better
                else "**Does not match**: scratch ends better, by "
                f"{min(s['final_val'] for s in conts) - sc['final_val']:.3f} to "
                f"{max(s['final_val'] for s in conts) - sc['final_val']:.3f} nats."
                if all(s["final_val"] > sc["final_val"] + TIE for s in conts)
                else "**Does not match**: a tie at this scale."
            )
        )
    xn = g(f"extra-norm-{long_}")
    if xn and lin:
        out.append(
            f"7. **An extra RMSNorm before each linear helps (arXiv 2505.08823; transformers #38087).** "
            f"extra-norm-{long_} (the per-linear-norm layout, linear warmup {long_}) ends at {_f(xn['final_val'])}, "
            f"linear-{long_} (official layout) at {_f(lin['final_val'])}. "
            + _cmp(xn["final_val"], lin["final_val"], f"extra-norm-{long_}", f"linear-{long_}")
            + " Our official layout already normalises before every linear (sub-norms before o_proj and down_proj); "
            "the study added norms to a Llama, which has none there."
        )
    return out


def _cmp(a, b, na, nb) -> str:
    if a is None or b is None:
        return "n/a."
    if abs(a - b) < TIE:
        return f"{na} and {nb} tie (within {TIE} nats)."
    return f"{na if a < b else nb} ends better by {abs(a - b):.3f} nats."


def _max_jump(s: dict) -> float:
    """The largest rise of the 10-step mean train loss over 10 steps, during the warmup (lambda < 1)."""
    ys = _rolling([loss for _, loss, _ in s["steps"]])
    lam = [lm for *_, lm in s["steps"]]
    end = next((i for i, v in enumerate(lam) if v is not None and v >= 1.0), len(lam))
    return max((ys[i + 10] - ys[i] for i in range(0, max(0, end - 10))), default=0.0)


# ---------------------------------------------------------------------------- the report


def write_report(out: Path, mode_name: str, mode: dict, table: dict, results: dict, seconds: float) -> Path:
    fp_dir = out / "arms" / "fp"
    base = load_run(fp_dir) if results.get("fp", {}).get("rc") == 0 else None
    arms = {
        n: summarize(out / "arms" / n, base if n != "fp" else None) for n in table if results.get(n, {}).get("rc") == 0
    }
    any_run = next(iter(arms.values()))["run"]
    ln_v, uni = any_run.header.get("ln_vocab"), any_run.header.get("unigram_entropy")
    why_no_plots = make_plots(arms, out, mode, ln_v, uni)
    cfg = any_run.header.get("config", {})
    cpu_total = sum(r.get("cpu_seconds") or 0 for r in results.values())
    lines = [
        "# From full precision to 1.58 bits, at this machine's scale",
        "",
        f"> Generated on {time.strftime('%Y-%m-%d')} by `python tools/experiments/warmup.py --out OUT"
        + (" --quick" if mode_name == "quick" else "")
        + f"` ({mode_name} mode) in {seconds / 60:.0f} min wall, {cpu_total / 60:.0f} min of CPU summed over the "
        f"arms (2 at a time, one torch thread each) on {machine.summary()}; load average at the end "
        f"{os.getloadavg()[0]:.1f} (the machine is shared).",
        "",
        f"Model: d_model {cfg.get('d_model')}, {cfg.get('n_layers')} layers, {cfg.get('n_heads')} heads, FFN "
        f"{cfg.get('ffn_hidden')} ({cfg.get('ffn_act')}), context {cfg.get('context')}, byte-level vocabulary "
        f"{cfg.get('vocab_size')} (ln V {ln_v:.3f}, unigram entropy {uni:.3f}); batch {mode['batch']} sequences. "
        f"FP source: {mode['fp_steps']} steps; every continuation {mode['cont_steps']} steps; scratch "
        f"{mode['fp_steps'] + mode['cont_steps']} steps. Same seed, schedule recipe (two-stage LR/WD, LR warmup "
        "10% of each run's steps) and data order everywhere. One seed: differences below "
        f"{TIE} nats are called ties (an assumption, not measured).",
        "",
        "The scale, plainly: a 0.9M-parameter byte-level model and a few hundred steps per arm, so that the whole "
        "experiment takes minutes of one core on this shared 2-core machine. The study fine-tuned an 8B model on "
        "10B tokens; nothing here is at that scale, and a model this small learns about as fast ternary as in full "
        "precision (compare fp and scratch over their first steps in the first plot).",
        "",
        "## Arms",
        "",
        "| arm | start (FP, unquantized) | highest loss where quantization comes in | largest jump (doctor) | "
        "% of the way to ln V | final val loss | final unique tokens | decode probe at the end (verdict, measured "
        "loss) | doctor (vs fp) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, s in arms.items():
        sh, pr, d = s["shock"], (s["probes"][-1] if s["probes"] else None), s["diagnosis"]
        peak = f"{s['peak'][0]:.3f} ({s['peak'][1]})" if s["peak"] else "-"
        jump = f"{sh.jump:+.3f} ({sh.what})" if sh else "-"
        lines.append(
            f"| {n} | {_f(sh.start) if sh else '-'} | {peak} | {jump} | {f'{sh.frac:.0%}' if sh else '-'} | "
            f"{_f(s['final_val'])} | "
            f"{'n/a' if s['final_unique'] is None else int(s['final_unique'])} | "
            f"{f'{pr[1]}, {pr[2]:.3f}' if pr else '-'} | {d['verdict']}"
            + (f" / {d['cause']}" if d["cause"] else "")
            + " |"
        )
    lines += ["", "## Over the steps", ""]
    for n, s in arms.items():
        ev = ", ".join(f"{v:.2f}@{st}" for st, v, _ in s["evals"][:: max(1, len(s["evals"]) // 8)] if v is not None)
        pr = ", ".join(f"{p[2]:.2f}@{p[0]} ({p[1]}, {p[3]} unique)" for p in s["probes"])
        lines.append(f"- **{n}**: val loss {ev}" + (f"; decode probe {pr}" if pr else ""))
    lines += ["", "## The study's answers at our scale", "", *answers(arms, mode, ln_v), "", "## The doctor", ""]
    for n, s in arms.items():
        d = s["diagnosis"]
        lines.append(
            f"- **{n}**: {d['verdict']}"
            + (f", cause {d['cause']}" if d["cause"] else "")
            + (f": {d['evidence'][0]}" if d["evidence"] else "")
        )
    lines += ["", "## Plots", ""]
    if why_no_plots:
        lines.append(f"No plots: {why_no_plots}.")
    else:
        lines += [f"![{p}](plots/{p}.png)" for p in ("overview", "lambda-and-val", "unique-and-probe")]
    path = out / "report.md"
    text = "\n".join(lines) + "\n"
    for where in (str(out.resolve()), str(out)):  # run paths relative to the output directory: no machine paths
        text = text.replace(where + "/", "OUT/")
    path.write_text(text)
    return path
