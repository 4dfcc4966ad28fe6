"""``python -m bitnet_ref.doctor``: the command line of the doctor, and how a diagnosis is printed."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from bitnet_ref.cli import run_quietly
from bitnet_ref.doctor import foreign_logs as runlog
from bitnet_ref.doctor.run import DoctorError, Run, load_run
from bitnet_ref.doctor.user_checkpoint import check_user_checkpoint
from bitnet_ref.doctor.verdicts import diagnose


def render(d: dict) -> str:
    lines = [
        f"verdict: {d['verdict']} -- {d['verdict_text']}",
        f"cause:   {d['cause'] + ' -- ' + d['cause_text'] if d['cause'] else 'none found'}",
    ]
    lines += [f"  - {e}" for e in d["evidence"]]
    others = [f["cause"] for f in d["findings"][1:]]
    if others:
        lines.append(f"also flagged: {', '.join(others)}")
    lines += [f"note: {n}" for n in d["notes"]]
    cfg = d.get("config", {}).get("config")
    if isinstance(cfg, dict):
        lines.append("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    return "\n".join(lines)


def main(argv=None, prog="python -m bitnet_ref.doctor") -> int:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Diagnose a training run: a bitnet_ref run directory, or "
        "with --log the CSV/TSV/JSONL/Markdown log of a run trained elsewhere.",
    )
    ap.add_argument("run_dir", nargs="?", help="run directory holding metrics.jsonl (and ckpt.pt)")
    ap.add_argument(
        "--baseline",
        metavar="FP_RUN_DIR",
        help="a full-precision run of the same data, to tell 'stuck at unigram level' apart",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a run recorded by bitnet_ref.watch: your checkpoint (a Hugging Face BitNet directory, a ckpt.pt or a "
        "BitNet GGUF) to measure on the run's loss windows and check the log against",
    )
    ap.add_argument(
        "--report",
        metavar="FILE.html",
        help="also write the diagnosis with its evidence as plots: one self-contained HTML page (needs matplotlib)",
    )
    f = ap.add_argument_group("a run trained elsewhere (see bitnet_ref/doctor/foreign_logs.py)")
    f.add_argument("--log", metavar="FILE", help="its log: columns step, loss, val_loss, unique_tokens, lr, ...")
    f.add_argument("--columns", metavar="OURS=THEIRS,...", help="column names the log uses, e.g. step=iter,loss=train")
    f.add_argument("--vocab-size", type=int, metavar="V", help="its vocabulary size (for ln V)")
    f.add_argument("--unigram-entropy", type=float, metavar="NATS", help="unigram entropy of its training tokens")
    f.add_argument("--data", metavar="PATH", help="its training data, to compute the unigram entropy")
    f.add_argument(
        "--tokenizer",
        metavar="JSON|bpe:N",
        help="its tokenizer.json, to read text --data as its tokens "
        "(unigram entropy in token space; gives the vocabulary size when --vocab-size is not given)",
    )
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.log is None):
        ap.error("give a run directory or --log FILE (one of them)")
    try:
        if args.log is not None:
            m, notes = runlog.load(
                args.log,
                columns=runlog.parse_columns(args.columns),
                vocab_size=args.vocab_size,
                unigram_entropy=args.unigram_entropy,
                data=args.data,
                tokenizer=args.tokenizer,
            )
            run = Run.from_metrics(m, args.log)
        else:
            run, notes = load_run(args.run_dir), []
        if args.checkpoint:
            check_user_checkpoint(run, args.checkpoint)
        base = load_run(args.baseline) if args.baseline else None
    except (DoctorError, runlog.LogError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diagnosis = diagnose(run, base)
    diagnosis.notes += notes
    d = diagnosis.as_dict(run)
    if args.report and not report(args.report, run, d):
        return 2
    print(json.dumps(d, indent=2, default=str) if args.json else render(d))
    if args.report:
        print(f"report: {args.report}", file=sys.stderr)
    return 0


def report(path, run: Run, d: dict) -> bool:
    """--report: the HTML page (doctor/report.py); False after a one-line error."""
    from bitnet_ref.doctor.report import write_report

    try:
        write_report(path, run, d)
    except DoctorError as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True


def cli(prog=None) -> int:
    """The console-script entry (bitnet-doctor): main on sys.argv, quiet when the reader stops early (| head)."""
    return run_quietly(partial(main, prog=prog))
