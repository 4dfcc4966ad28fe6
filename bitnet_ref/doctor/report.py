"""``bitnet-doctor RUN --report report.html``: the diagnosis as one page to look at.

One self-contained HTML file: the verdict and cause at the top (in a coloured box: green healthy, amber a
recovered dip, red anything else), the evidence and notes, then the evidence as plots, each drawn only where the
run has the figures: the losses against ln V and the unigram entropy (with the bands the verdicts use), unique
tokens and top-token share, LR and weight decay, per-layer ternary health over the evaluations (share of 0
codes, flip rate per step, update ratio), the gradient flow per parameter group, TRL's entropy and token accuracy
for logs that have them, and the greedy samples (the decode probe's too, when decode_probe.json is there). It
works alike for bitnet_ref runs, bitnet_ref.watch runs and foreign logs read with ``--log``.

The plots are PNG images inside the page (data: URIs, drawn by matplotlib, the ``plot`` extra); the page loads
nothing else: no scripts, fonts or style sheets from anywhere, and a Content-Security-Policy that forbids them.
What this is not: an interactive dashboard (TensorBoard and W&B are), or a second diagnosis: every word on it
comes from the doctor's.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from bitnet_ref.doctor.run import DoctorError, Run
from bitnet_ref.doctor.verdicts import baselines
from bitnet_ref.files import atomic_write
from bitnet_ref.metrics_log import number_or_none
from bitnet_ref.thresholds import NEAR_LN_V_FRAC, NEAR_UNIGRAM_FRAC

COLOURS = {"healthy": "#1b7a3a", "transient_dip": "#a15c00"}  # anything else: UNHEALTHY
UNHEALTHY = "#b3261e"
TRAIN_BLUE = "#1f5fa8"  # the train-loss curve (tests/test_report.py looks for it on screen)
MAX_LAYER_LINES = 16  # more layers than this: their median and range instead of one line each
CSS = """
body{font-family:sans-serif;margin:24px auto;max-width:1100px;color:#1d1d1d;background:#fff}
#verdict{color:#fff;padding:16px 20px;border-radius:6px}
#verdict h1{margin:0 0 6px 0;font-size:28px} #verdict p{margin:4px 0;font-size:17px}
ul{line-height:1.45} h2{margin-top:32px;border-bottom:1px solid #ccc}
img{max-width:100%;display:block;margin:8px 0}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
pre{white-space:pre-wrap;margin:0;font-size:13px}
"""


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DoctorError("--report draws its plots with matplotlib: pip install matplotlib (the plot extra)") from None
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _series(recs: list, key: str) -> tuple[list, list]:
    pts = [(r.get("step"), number_or_none(r.get(key))) for r in recs]
    pts = [(s, v) for s, v in pts if isinstance(s, (int, float)) and v is not None and math.isfinite(v)]
    return [s for s, _ in pts], [v for _, v in pts]


# ---------------------------------------------------------------------------------------------- the plots


def loss_plot(run: Run):
    plt = _plt()
    steps, evals = run.steps, run.evals
    xs, ys = _series(steps, "loss")
    xv, yv = _series(evals, "val_loss")
    if not ys and not yv:
        return None
    ln_v, uni = baselines(run)
    fig, ax = plt.subplots(figsize=(10, 4))
    if ys:
        ax.plot(xs, ys, lw=1.2, color=TRAIN_BLUE, label="train loss")
    if yv:
        ax.plot(xv, yv, "o-", lw=2, color="#e07b00", label="val loss")
    top = max(ys + yv + [ln_v or 0])
    if ln_v:
        ax.axhline(ln_v, color="#b3261e", ls="--", lw=1, label=f"ln V = {ln_v:.2f}")
        ax.axhspan(NEAR_LN_V_FRAC * ln_v, max(top, ln_v) * 1.02, color="#b3261e", alpha=0.08, label="not learning")
    if uni:
        hi = NEAR_LN_V_FRAC * ln_v if ln_v else uni * 1.2
        ax.axhline(uni, color="#a15c00", ls="--", lw=1, label=f"unigram entropy = {uni:.2f}")
        ax.axhspan(NEAR_UNIGRAM_FRAC * uni, hi, color="#a15c00", alpha=0.08, label="unigram level")
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def diversity_plot(run: Run):
    xu, yu = _series(run.evals, "unique_tokens")
    if not yu:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(xu, yu, "o-", color="#1f5fa8", label="unique tokens (greedy samples)")
    ax.set_ylabel("unique tokens")
    ax.set_xlabel("step")
    xt, yt = _series(run.evals, "top_token_share")
    if yt:
        ax2 = ax.twinx()
        ax2.plot(xt, yt, "s--", color="#b3261e", label="top-token share")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("top-token share")
        ax2.legend(fontsize=8, loc="lower right")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def schedule_plot(run: Run):
    xl, yl = _series(run.steps, "lr")
    xw, yw = _series(run.steps, "wd")
    if not yl and not yw:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 2.8))
    if yl:
        ax.plot(xl, yl, color="#1f5fa8", label="learning rate")
        ax.set_ylabel("learning rate")
    if yw:
        ax2 = ax.twinx()
        ax2.plot(xw, yw, color="#a15c00", label="weight decay")
        ax2.set_ylabel("weight decay")
        ax2.legend(fontsize=8, loc="upper center")
    ax.set_xlabel("step")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _per_layer(evals: list, key: str, per_step: bool = False) -> dict:
    """{layer: ([steps], [values])}; a flip rate divided by the steps it covers when ``per_step``."""
    out: dict = {}
    for r in evals:
        for name, v in (r.get("layers") or {}).items():
            x = number_or_none(v.get(key)) if isinstance(v, dict) else None
            if x is None:
                continue
            if per_step:
                k = number_or_none(v.get("flip_steps"))
                if not k:
                    continue
                x = x / k
            s, vals = out.setdefault(name, ([], []))
            s.append(r.get("step"))
            vals.append(x)
    return out


def _draw_layers(ax, series: dict, title: str, log: bool = False) -> None:
    if len(series) <= MAX_LAYER_LINES:
        for name, (s, v) in series.items():
            ax.plot(s, v, lw=1, marker=".", label=name)
        if len(series) <= 8:
            ax.legend(fontsize=6)
    else:  # many layers: median and the range over them at each step
        import statistics

        steps = sorted({x for s, _ in series.values() for x in s})
        at = {x: [v for s, vs in series.values() for sx, v in zip(s, vs) if sx == x] for x in steps}
        ax.plot(steps, [statistics.median(at[x]) for x in steps], color="#1f5fa8", label="median over layers")
        ax.fill_between(steps, [min(at[x]) for x in steps], [max(at[x]) for x in steps], alpha=0.2, label="range")
        ax.legend(fontsize=6)
    ax.set_title(title, fontsize=10)
    if log and any(v > 0 for _, vs in series.values() for v in vs):
        ax.set_yscale("log")


def health_plot(run: Run):
    panels = [
        (_per_layer(run.evals, "frac_zero"), "share of 0 codes", False),
        (_per_layer(run.evals, "flip_rate", per_step=True), "flip rate per step", True),
        (_per_layer(run.evals, "update_ratio"), "update ratio", True),
        (_per_layer(run.evals, "act_in_rms"), "activation-quantizer input RMS", False),
    ]
    panels = [p for p in panels if p[0]]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels) + 1, 3.2), squeeze=False)
    for ax, (series, title, log) in zip(axes[0], panels):
        _draw_layers(ax, series, title, log)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def gradient_plot(run: Run):
    groups: dict = {}
    for r in run.evals:
        for g, v in (r.get("groups") or {}).items():
            if isinstance(v, dict):
                for key in ("grad_norm", "update_ratio"):
                    x = number_or_none(v.get(key))
                    if x is not None:
                        s, vals = groups.setdefault((key, g), ([], []))
                        s.append(r.get("step"))
                        vals.append(x)
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key in zip(axes, ("grad_norm", "update_ratio")):
        for (k, g), (s, v) in sorted(groups.items()):
            if k == key:
                ax.plot(s, [max(x, 1e-16) for x in v], marker=".", label=g)
        ax.set_yscale("log")
        ax.set_title(
            {"grad_norm": "gradient norm per group", "update_ratio": "update ratio per group"}[key], fontsize=10
        )
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def trl_plot(run: Run):
    xe, ye = _series(run.steps, "entropy")
    xa, ya = _series(run.steps, "mean_token_accuracy")
    if not ye and not ya:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 2.8))
    if ye:
        ax.plot(xe, ye, color="#1f5fa8", label="entropy of the predictions (nats)")
    xs, ys = _series(run.steps, "loss")
    if ys:
        ax.plot(xs, ys, color="#777", lw=1, label="train loss")
    if ya:
        ax2 = ax.twinx()
        ax2.plot(xa, ya, color="#a15c00", label="mean token accuracy")
        ax2.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("step")
    ax.legend(fontsize=8, loc="upper right")
    return fig


PLOTS = (
    ("Loss against ln V and the unigram entropy", loss_plot),
    ("Token diversity of greedy samples", diversity_plot),
    ("Learning rate and weight decay", schedule_plot),
    ("Ternary health per layer", health_plot),
    ("Gradient flow per parameter group", gradient_plot),
    ("Entropy and token accuracy (TRL)", trl_plot),
)


# ---------------------------------------------------------------------------------------------- the page


def visible(text: str) -> str:
    """A sample with its spaces and line breaks shown: a model repeating " " or "\\n" is collapsed too."""
    return text.replace(" ", "\u00b7").replace("\n", "\u21b5")


def _samples(run: Run) -> str:
    rows = []
    with_samples = [r for r in run.evals if isinstance(r.get("samples"), list) and r["samples"]]
    for r in with_samples[:1] + with_samples[-1:] if len(with_samples) > 1 else with_samples:
        cells = "".join(f"<pre>{html.escape(visible(str(s)[:400]))}</pre>" for s in r["samples"][:4])
        rows.append(f"<tr><td>eval at step {html.escape(str(r.get('step')))}</td><td>{cells}</td></tr>")
    probe = run.probe if isinstance(run.probe, dict) else {}
    for s in (probe.get("samples") or [])[:4]:
        if isinstance(s, dict):
            text = f"{s.get('prompt', '')!s}\u2192{s.get('output', '')!s}"
            rows.append(f"<tr><td>decode probe</td><td><pre>{html.escape(visible(text[:400]))}</pre></td></tr>")
    if not rows:
        return ""
    head = "<tr><th>when</th><th>samples (\u00b7 is a space, \u21b5 a newline)</th></tr>"
    return "<h2>Greedy samples</h2><table>" + head + "".join(rows) + "</table>"


def render_html(run: Run, d: dict) -> str:
    """The page for one diagnosis (``Diagnosis.as_dict(run)``) of ``run``."""
    colour = COLOURS.get(d["verdict"], UNHEALTHY)
    cause = f"{d['cause']}: {d['cause_text']}" if d.get("cause") else "none found"
    head = (
        f'<div id="verdict" data-verdict="{html.escape(d["verdict"])}" style="background:{colour}">'
        f"<h1>{html.escape(d['verdict'])}</h1><p>{html.escape(d['verdict_text'])}</p>"
        f"<p><b>cause:</b> {html.escape(cause)}</p></div>"
    )
    lists = "".join(
        f"<h2>{title}</h2><ul>" + "".join(f"<li>{html.escape(str(x))}</li>" for x in items) + "</ul>"
        for title, items in (("Evidence", d.get("evidence") or []), ("Notes", d.get("notes") or []))
        if items
    )
    figs = []
    for title, draw in PLOTS:
        fig = draw(run)
        if fig is not None:
            figs.append(f'<h2>{title}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}">')
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>bitnet-doctor: {html.escape(d['verdict'])} ({html.escape(str(run.path))})</title>"
        f"<style>{CSS}</style></head><body>{head}"
        f"<p>run: <code>{html.escape(str(run.path))}</code></p>{lists}{''.join(figs)}{_samples(run)}</body></html>"
    )


def write_report(path, run: Run, d: dict) -> Path:
    """Write the page atomically; DoctorError (one line) when it cannot be written."""
    path = Path(path)
    page = render_html(run, d).encode("utf-8")
    try:
        atomic_write(path, lambda f: f.write(page))
    except OSError as e:
        raise DoctorError(f"cannot write the report {path}: {e.strerror or e}") from None
    return path
