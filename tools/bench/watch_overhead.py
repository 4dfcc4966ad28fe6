"""What bitnet_ref.watch costs a training loop: per step, per measured update, per evaluation.

A plain loop (forward, backward, AdamW, zero_grad) on a model of the given preset trains in rounds of --steps
steps, alternately without and with a watch whose evaluations are switched off (``every`` larger than the run),
so both see the same machine load; that gives the cost of the per-step call and of the optimizer hooks on
steps that are not measured. Then the three parts of an evaluation step are timed alone, --repeats times each:
the gradient statistics and weight snapshot before the update plus the update ratios after it (HealthTracker's
after_backward/after_step), and the evaluation itself (loss on the fixed windows, the greedy diversity probe,
the health metrics). The amortised overhead at ``--every`` is (measured-update + evaluation cost) / every, as a
share of the plain step. Medians throughout; torch on --threads threads.

    python tools/bench/watch_overhead.py --preset default --threads 1

What this is not: a timed test (nothing here passes or fails), or a profile of the training step itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if not __package__:  # run as a file: the repository root, so that `bitnet_ref` imports from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_ref import machine
from bitnet_ref.model import ModelConfig, Transformer
from bitnet_ref.watch import watch


def batches(n: int, batch: int, context: int, vocab: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, context + 1), generator=g) for _ in range(n)]


def step(model, opt, x) -> torch.Tensor:
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def timed_round(model, opt, data, w=None) -> list:
    out = []
    for x in data:
        t0 = time.perf_counter()
        loss = step(model, opt, x)
        if w is not None:
            w.step(loss)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="model preset (bitnet_ref.model.PRESETS)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per step (the trainer's default)")
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of plain and watched steps, alternating")
    ap.add_argument("--repeats", type=int, default=5, help="timings of each evaluation part")
    ap.add_argument(
        "--every", type=int, default=50, help="the watch's steps between evaluations, for the amortised cost"
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(args.preset, vocab_size=256)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = batches(args.steps, args.batch_size, cfg.context, cfg.vocab_size)
    val = torch.randint(0, 256, (20_000,), generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        w = watch(model, Path(tmp) / "run", optimizer=opt, data=val, every=10**9)
        timed_round(model, opt, data[:2])  # warm-up
        plain, watched = [], []
        for _ in range(args.rounds):
            plain += timed_round(model, opt, data)
            watched += timed_round(model, opt, data, w)
        grads, evals = [], []
        for _ in range(args.repeats):
            _, loss = model(data[0][:, :-1], data[0][:, 1:])
            loss.backward()
            t0 = time.perf_counter()
            w.tracker.after_backward(model)
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            w.tracker.after_step(model)
            grads.append(time.perf_counter() - t2 + t1 - t0)
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            w.evaluate(0)
            evals.append(time.perf_counter() - t0)
        w.close()
    p, q = statistics.median(plain), statistics.median(watched)
    g, e = statistics.median(grads), statistics.median(evals)
    print(f"machine: {machine.summary()} | load average {os.getloadavg()[0]:.1f} | {args.threads} thread(s)")
    print(
        f"model: {args.preset} (d_model {cfg.d_model}, {cfg.n_layers} layers, context {cfg.context}), "
        f"batch {args.batch_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
    )
    print(f"plain step:                 {p * 1e3:8.1f} ms (median of {len(plain)})")
    print(f"step with watch.step():     {q * 1e3:8.1f} ms ({(q / p - 1) * 100:+.1f}%)")
    print(f"measured update (grads):    {g * 1e3:8.1f} ms (median of {len(grads)})")
    print(f"evaluation (loss, probe, health): {e * 1e3:8.1f} ms")
    amortised = (g + e) / args.every
    print(f"amortised at every={args.every}: {amortised * 1e3:.1f} ms/step = {amortised / p * 100:.1f}% of a step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
