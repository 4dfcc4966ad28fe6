"""One figure and one table: the experiments' arms (tools/experiments/experiments.py) at two vocabularies, side by
side.

    python tools/experiments/compare_vocab.py --bytes docs/experiments/report.md --runs runs/exp-bpe50257 \
        --out docs/experiments/plots-bpe50257/compare.png

The byte-level side comes from the text of its report (the run directories of that report are not kept):
the greedy unique-token trajectories it quotes for ref, t2-lr3 and t4-long, and the headline table. The BPE
side comes from ``RUNS/arms/<arm>/metrics.jsonl``. The figure puts the step on a fraction-of-run axis (the
runs differ in length) and the val loss as a multiple of the unigram entropy (the vocabularies differ).
Prints the markdown table of final numbers for both.

What this is not: part of the trainer or of tools/experiments/experiments.py; a helper for writing the report.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` and `tools` import from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import metrics_log as M

ARMS = ("ref", "fp", "t1-stage1", "t2-lr3", "t4-long", "t1-half")


def byte_report(path: Path) -> dict:
    """Per arm from a tools/experiments/experiments.py report: final val, x unigram, unique min@step -> final, verdict;
    and the unique-token trajectories the answers quote (t2-lr3, t4-long, ref)."""
    text = path.read_text()
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0] in ARMS + ("t3-end-only", "t5-fractions") and cells[3][:1].isdigit():
            out[cells[0]] = {
                "steps": int(cells[2]),
                "final_val": float(cells[3]),
                "x_unigram": float(cells[4]),
                "unique": cells[5],
                "verdict": cells[8],
            }
    for arm, pat in (
        ("t2-lr3", r"t2-lr3 \(LR/3\): unique tokens ([^.]*)\."),
        ("t4-long", r"t4-long \(\d+ steps, stage 1 only\): unique tokens ([^;]*);"),
        ("ref", r"Greedy unique tokens: ([^.]*)\."),
    ):
        m = re.search(pat, text)
        if m and arm in out:
            out[arm]["traj"] = [(int(s), int(u)) for u, s in re.findall(r"(\d+)@(\d+)", m.group(1))]
    return out


def bpe_runs(runs: Path) -> dict:
    out = {}
    for arm in ARMS + ("t3-end-only", "t5-fractions"):
        log = M.read(runs / "arms" / arm / M.FILE_NAME)
        head, ev = log.header, log.evals
        if not ev:
            continue
        uni = head["unigram_entropy"]
        out[arm] = {
            "steps": head["train_config"]["steps"],
            "final_val": ev[-1]["val_loss"],
            "uni": uni,
            "x_unigram": ev[-1]["val_loss"] / uni,
            "traj": [(r["step"], r["unique_tokens"]) for r in ev],
            "loss": [(r["step"], r["val_loss"] / uni) for r in ev],
            "complete": log.ended,
        }
    return out


def plot(b: dict, p: dict, out: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    colors = {"ref": "k", "t2-lr3": "tab:blue", "t4-long": "tab:red", "t1-stage1": "tab:green", "fp": "tab:gray"}
    for arm, c in colors.items():
        if arm in b and b[arm].get("traj"):
            n = b[arm]["steps"]
            ax1.plot(
                [s / n for s, _ in b[arm]["traj"]], [u for _, u in b[arm]["traj"]], "--", color=c, label=f"{arm} bytes"
            )
        if arm in p:
            n = p[arm]["steps"]
            ax1.plot(
                [s / n for s, _ in p[arm]["traj"]],
                [u for _, u in p[arm]["traj"]],
                "o-",
                ms=3,
                color=c,
                label=f"{arm} {label}",
            )
            ax2.plot(
                [s / n for s, _ in p[arm]["loss"]],
                [v for _, v in p[arm]["loss"]],
                "o-",
                ms=3,
                color=c,
                label=f"{arm} {label}",
            )
    for arm, c in colors.items():  # bytes: only the final val loss is in the report
        if arm in b:
            ax2.plot([1.0], [b[arm]["x_unigram"]], "x", ms=8, color=c)
    ax1.set(
        xlabel="fraction of the run",
        ylabel="greedy unique tokens",
        yscale="symlog",
        title="unique tokens: bytes (dashed) vs " + label,
    )
    ax2.axhline(1.0, color="k", lw=0.8, ls=":")
    ax2.set(
        xlabel="fraction of the run", ylabel="val loss / unigram entropy", title=f"val loss ({label}); x = bytes, final"
    )
    ax1.legend(fontsize=6)
    ax2.legend(fontsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def table(b: dict, p: dict, label: str) -> str:
    rows = [
        f"| arm | bytes: steps, final val (x unigram) | bytes: unique min@step -> final | {label}: steps, final "
        f"val (x unigram) | {label}: unique min@step -> final |",
        "|---|---|---|---|---|",
    ]
    for arm in ARMS + ("t3-end-only", "t5-fractions"):
        bb, pp = b.get(arm), p.get(arm)
        if pp:
            after = [t for t in pp["traj"] if t[0] > 0]
            lo = min(after, key=lambda t: (t[1], t[0])) if after else None
            pu = (f"{lo[1]}@{lo[0]} -> " if lo else "") + str(pp["traj"][-1][1])
        rows.append(
            f"| {arm} | "
            + (f"{bb['steps']}, {bb['final_val']:.3f} ({bb['x_unigram']:.2f}) | {bb['unique']}" if bb else "- | -")
            + " | "
            + (f"{pp['steps']}, {pp['final_val']:.3f} ({pp['x_unigram']:.2f}) | {pu}" if pp else "not run | -")
            + " |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Bytes vs BPE: one comparison figure and a markdown table.")
    ap.add_argument("--bytes", required=True, help="the byte-level report.md of tools/experiments/experiments.py")
    ap.add_argument("--runs", required=True, help="the BPE experiments' output directory (holding arms/)")
    ap.add_argument("--label", default="bpe:50257", help="name of the BPE side in the figure")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    b, p = byte_report(Path(args.bytes)), bpe_runs(Path(args.runs))
    plot(b, p, Path(args.out), args.label)
    print(table(b, p, args.label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
