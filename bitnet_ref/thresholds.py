"""The numbers the two judges go by: the doctor (doctor.py, causes.py) and the decode probe (decode_probe.py).

Each name is one number and one test, written down here once with why it is where it is. Where the two judges
test different things (the doctor judges a whole run from its logged metrics, the probe one checkpoint from
what it generates), they use different names; where they note the same thing, they share one.

The doctor's numbers were set on short real runs of the tiny preset (tests/test_doctor.py, tools/experiments.py
--quick: the reference, each ablation, stage-1-only, LR/3, LR 1e-2, LR 0.3, WD 2.0, LR 1e-6); the probe's on
checkpoints of the default recipe and on broken heads (tests/test_decode_probe.py).
What this is not: configuration. Nothing here changes how a model trains or decodes.
"""

# ---- both judges

REPETITIVE_TOP_SHARE = 0.5  # one token is at least half of the greedy output: a note, never a verdict (a small or
#                             short run's greedy decoding loops, e.g. "te te te", without having collapsed)

# ---- the doctor's verdicts (doctor.py), on the loss and diversity curves of a run

DIVERGE_RISE = 1.0  # nats: train loss (smoothed) ending this far above its best smoothed value = blow-up
NEAR_LN_V_FRAC = 0.95  # final loss >= this x ln(V): about as good as uniform guessing (verdict not_learning)
NEAR_UNIGRAM_FRAC = 0.95  # loss >= this x unigram entropy: no better than a context-free model (stuck_unigram);
#                           the evals below it are "past the unigram phase", where a diversity fall counts
BASELINE_GAP_FRAC = 0.1  # ... stuck_unigram needs the FP baseline to end this share of the unigram entropy lower
COLLAPSE_FRAC = 0.34  # final unique tokens at most this share of the run's (or baseline's) best = collapse
LOSS_FELL = 0.05  # nats: "the loss still falls" = last val loss this much below the first eval's
MIN_UNIQUE_SIGNAL = 4  # a fall from fewer unique tokens than this (2 -> 1) is probe noise, not a dip or collapse
DIP_FRAC = 0.5  # a dip: unique tokens at or below half of an earlier value...
RECOVER_FRAC = 0.8  # ...recovered: back to at least 80% of that earlier value at the end

# ---- the doctor's checks against the checkpoint (doctor_checks.py): distrust the log

CHECK_WINDOWS = 8  # validation windows the doctor measures the checkpoint's loss on (cheap: one forward)
LOG_MISMATCH_NATS = 0.5  # nats: measured vs logged val loss further apart than this = the log is not the model's
#                          loss (healthy grid of tools/fault_zoo.py: <= 0.1 apart; window-sampling noise)
IMPLAUSIBLE_LOSS_FRAC = 0.1  # a logged val loss below this x the unigram entropy is not reachable on held-out
#                              text (byte-level Python: ~0.25 of it for very good models; a target leak: ~0.01)
BASELINE_IMPLAUSIBLE_FRAC = 0.5  # ...or below half the FP baseline's: a ternary model does not beat FP by 2x

# ---- the doctor's causes (causes.py), on the health metrics of the eval records

GRAD_ZERO = 1e-12  # a latent-weight gradient norm this small is no gradient
DEAD_CLIP_FRAC = 0.9  # share of exactly-zero gradients in the clip region that marks the clamp-STE bug
DEAD_GAP = 0.5  # ...and at least this much above the exactly-zero share on 0 codes (healthy: about equal, both
#                  from input columns that are all zero in the batch)
OUT_RATIO_LOW, OUT_RATIO_HIGH = 0.2, 5.0  # healthy ternary/FP output RMS is ~0.6-1.0; 1/beta or 127x is far out
ACT_RMS_LOW, ACT_RMS_HIGH = 0.25, 4.0  # behind an RMSNorm with gain ~1 the quantizer input RMS is ~1
EMBED_LEVELS_MAX = 3.5  # a ternary embedding vector has at most 3 distinct values (FP: ~d_model)
LATTICE_MIN = 0.5  # share of logits on an integer lattice: ~1 for an int8 x ternary head, ~0.05 for FP
FLOAT_GRID_MIN = 0.5  # share of logits that fit health.FLOAT_GRID_BITS significand bits at or above which they
#                       were rounded to a coarse float format (fp32: ~2^-13; bf16/fp8 rounding: 1). Such logits
#                       also lie on a lattice (multiples of the smallest ulp), so the lattice alone is no proof
#                       of an int8 x ternary head: quant_head needs the float grid below this
DEAD_GRAD_FRAC = 0.5  # median share of exactly-zero gradient elements over the BitLinears at or above which most
#                       weights get no gradient (healthy median: ~0; one FFN layer reaches ~40% from dead ReLU^2
#                       units, hence the median; clamp-STE zeroes only the clip region)
UPDATE_GAP = 1000.0  # a parameter group (or BitLinear) whose update ratio is this many times below the largest
#                      group's (or the median layer's, or its FP twin's) is not being moved by the optimizer
#                      (healthy: norm gains, ~1 in size, sit ~30x below the latent weights, ~0.03)
WD_ZERO = 1e-8  # stage-2 weight decay above this is "on"
WD_KEPT_FRAC = 0.5  # without a stage 2: WD still at half its peak over the last 10% of steps = never decayed
LR_DROP = 0.95  # a step-to-step LR ratio below this after warmup marks the stage-1 -> stage-2 drop
FLIP_RISE = 1.25  # per-step flip rate over the last third of evals >= 1.25x the middle third: rising (a cause)
FLIP_KEEP_FRAC = 0.7  # last third still >= 70% of the middle third: a plateau (a note, not a cause: stage-1-only
#                       runs at the standard LR plateau too; on short tiny runs a 20x WD or 7x LR looked the same)
FLIP_MIN_EVALS = 6  # measured flip intervals needed before judging the trend
ZERO_LOW, ZERO_HIGH = 0.05, 0.60  # share of 0 codes outside this band: zeros drifting (FAQ: ~1/3 each)

# ---- the doctor on warm starts (doctor/quant_shock.py): a trained full-precision start, quantized

SHOCK_WINDOW = 10  # steps of train loss averaged (one batch's loss varies by ~0.1 nats on the tiny presets)
SHOCK_SETTLE = 20  # steps after lambda first reaches 1 that still count as "where the quantization came in"
SHOCK_FRAC = 0.08  # a loss that jumps this share of the way from the start's unquantized val loss to ln V is a
#                    quantization shock. Set on docs/experiments/report-warmup.md's arms (d_model 128, 500 FP
#                    steps): abrupt quantization jumps 0.19 of the way (0.10 from a start trained 300 steps; the
#                    study's Llama3-8B: beyond 1); the six warmed arms 0.03-0.05, the sigmoid's steep middle over
#                    30 steps the most (the LR warmup's own disturbance of a trained model included)

# ---- the decode probe's verdict (decode_probe.py), on one checkpoint's generations and measured loss

COLLAPSE_TOP1 = 0.9  # mean top-1 probability along the samples at or above which the model is near-certain; a
#                      weak model's greedy loop sits at ~0.5 and sampling from it is diverse, a collapsed one not
COLLAPSE_TOP_SHARE = 0.9  # share of generated tokens taken by one token at or above which output is one token
COLLAPSE_UNIQUE = 2  # at most this many distinct tokens over all samples also counts as one-token output
PROBE_LOSS_MARGIN = 0.05  # nats: the noise of the probe's loss on a few validation windows. A loss above
#                           unigram entropy - this is "not learning" (no better than a token-frequency table);
#                           one at or above ln(V) - this is, in the reason given, no better than uniform guessing.
#                           An absolute margin on one measurement, not the doctor's NEAR_UNIGRAM_FRAC on a run.
