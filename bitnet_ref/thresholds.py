"""The numbers the two judges go by: the doctor (doctor/) and the decode probe (decode/probe.py).

Each name is one number and one test, written down here once with why it is where it is. Where the two judges
test different things (the doctor judges a whole run from its logged metrics, the probe one checkpoint from
what it generates), they use different names; where they note the same thing, they share one.

The doctor's numbers were set on short real runs of the tiny preset (tests/test_doctor.py,
tools/experiments/experiments.py --quick: the reference, each ablation, stage-1-only, LR/3, LR 1e-2, LR 0.3, WD 2.0,
LR 1e-6); the probe's on checkpoints of the default recipe and on broken heads (tests/test_decode_probe.py).
What this is not: configuration. Nothing here changes how a model trains or decodes.
"""

# ---- both judges

REPETITIVE_TOP_SHARE = 0.5  # one token is at least half of the greedy output: a note, never a verdict (a small or
#                             short run's greedy decoding loops, e.g. "te te te", without having collapsed)

# ---- the doctor's verdicts (doctor/verdicts.py), on the loss and diversity curves of a run

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
DIP_Z = 1.5  # ...and the fall is larger than the probe's counting noise: (a - b) / sqrt(a + b) >= this (a count
#             read as Poisson). Healthy tiny-preset runs probed with 4 x 24 tokens wander 8 -> 4 -> 7 (z 1.15); the
#             debugging report's S-curve, 14 -> 6 -> 33, is z 1.79

# ---- the doctor's checks against the checkpoint (doctor/measure.py): distrust the log

LOG_MISMATCH_NATS = 0.2  # nats: measured (fresh windows) vs logged val loss further apart than this, and by
#                          LOG_MISMATCH_Z standard errors = the log is not the model's loss. Used where the log's
#                          own windows cannot be reproduced (the paired check, REPRO_TOL_*, is far tighter); the
#                          doctor's error is MEASURE_SE_TARGET, 10x below (was 0.5 on 1024 tokens, whose noise
#                          was close to it)
IMPLAUSIBLE_LOSS_FRAC = 0.1  # a logged val loss below this x the unigram entropy is not reachable on held-out
#                              text (byte-level Python: ~0.25 of it for very good models; a target leak: ~0.01)
BASELINE_IMPLAUSIBLE_FRAC = 0.5  # ...or below half the FP baseline's: a ternary model does not beat FP by 2x

# ---- the doctor's causes (doctor/causes.py), on the health metrics of the eval records

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

# ---- the decode probe's verdict (decode/probe.py), on one checkpoint's generations and measured loss

COLLAPSE_TOP1 = 0.9  # mean top-1 probability along the samples at or above which the model is near-certain; a
#                      weak model's greedy loop sits at ~0.5 and sampling from it is diverse, a collapsed one not
COLLAPSE_TOP_SHARE = 0.9  # share of generated tokens taken by one token at or above which output is one token
COLLAPSE_UNIQUE = 2  # at most this many distinct tokens over all samples also counts as one-token output
PROBE_LOSS_MARGIN = 0.05  # nats: the noise of the probe's loss on a few validation windows. A loss above
#                           unigram entropy - this is "not learning" (no better than a token-frequency table);
#                           one at or above ln(V) - this is, in the reason given, no better than uniform guessing.
#                           An absolute margin on one measurement, not the doctor's NEAR_UNIGRAM_FRAC on a run.

# ---- the decode path against a full recompute (generate.recompute_check: the decode probe and the doctor)

RECOMPUTE_REL_TOL = 1e-2  # cached greedy decoding vs one full forward over the same tokens: the largest logit
#                           difference relative to the largest |logit| (and the near-tie allowance for a token the
#                           full forward ranks second). The same arithmetic in another order is float noise (the
#                           fault zoo's healthy grid: <= ~5e-7); logits rounded to bf16 in both paths differ by up
#                           to its step, 2^-8 = 0.004 (the logits-bf16 case): no cache fault. A cache fault: O(0.1-1)

# ---- the log reproduced from the checkpoint (doctor/reproduce.py, doctor/measure.py, doctor/splits.py)

REPRO_TOL_FP32 = 1e-3  # nats: the checkpoint's val loss on the log's own eval windows vs the logged one, fp32 run.
#                        Same weights, windows and arithmetic: only summation order differs (healthy grid: 0 to
#                        ~1e-6); a log that is not this model's loss on these windows is off by far more
REPRO_TOL_AUTOCAST = 0.05  # ...the same for a run that evaluated under bf16 autocast (CUDA) against the doctor's
#                            fp32: bf16 autocast on the CPU moved four tiny checkpoints' eval loss by <= 1.1e-4
#                            (docs/debugging.md); CUDA kernels differ more, unmeasured here: a wide allowance
MEASURE_SE_TARGET = 0.02  # nats: the doctor measures fresh windows until its standard error is this small, 10x
#                           below LOG_MISMATCH_NATS (per-window SD of a small model's loss is ~0.4-0.5 nats, so
#                           ~500-600 windows), unless MEASURE_MAX_TOKENS comes first
MEASURE_MAX_TOKENS = 65536  # tokens per fresh measurement at most (cost: a few seconds for the small presets)
LOG_MISMATCH_Z = 4.0  # ...and the difference must be this many standard errors (the log's and the doctor's
#                       combined): the log's own eval (eval_batches x batch windows) carries sampling error too
TRAIN_REPRO_NATS = 0.25  # nats: the checkpoint's loss on the batches of the log's last steps above the logged
#                          training loss by more than this (and LOG_MISMATCH_Z SEs): the training forward is
#                          not the model's. Healthy: the checkpoint is slightly better (its weights are newer),
#                          -0.01 to -0.05 (tools/reliability/fault_zoo.py); a target leak or missing mask: > 1
TRAIN_VAL_GAP_NATS = 0.3  # nats: fresh-window train and val losses of the checkpoint further apart than this
#                           (and LOG_MISMATCH_Z SEs): memorisation (train below val) or the wrong split (val
#                           below train). Healthy runs of < 1 epoch: within ~0.05 (splits of one corpus)

# ---- the optimizer against its own configuration (doctor/optimizer_config.py)

LR_OFF_FACTOR = 2.0  # a logged LR more than 2x off what the configured schedule gives for its step is "off" (the
#                      trainer logs the LR it sets, so a healthy run is off by exactly 1.0 everywhere)
LR_OFF_SHARE = 0.1  # ...at this share of the steps or more: the schedule is not the configured one (lr_schedule)
LR_PEAK_FRAC = 0.5  # ...and a logged peak below half of --lr is said as "never comes near the configured peak"
ADAM_STEP_TYPICAL = 0.25  # RMS(dw)/lr of a healthy AdamW step (median over BitLinears; fault zoo's healthy
#                           grid: 0.17-0.54 across evals): m/sqrt(v) is ~1 for a steady gradient, less for noise
ADAM_STEP_LOW = 0.01  # below this AdamW moves the weights orders of magnitude less than its LR implies
#                       (optimizer_step; 17x under the lowest healthy value)
ADAM_STEP_HIGH = 3.0  # above this, more than AdamW can at the logged LR (m/sqrt(v) <= ~1): the LR applied is
#                       higher than the one logged (or the weight decay term dominates: lr x wd x |w|)
EPS_DOMINATES = 1.0  # AdamW's eps at or above the per-element gradient it sees: eps, not sqrt(v), sets the step

# ---- root causes (doctor/upstream.py): following "gets no gradient" upstream

ACT_DEAD = 1e-6  # activation-quantizer input RMS at or below which nothing reaches a BitLinear (healthy: ~1
#                  behind its RMSNorm; a zero norm gain or an all-dead activation gives exactly 0)
ALL_ZERO_CODES = 0.999  # share of 0 codes at or above which a BitLinear outputs 0 whatever its input, and so passes
#                         no gradient back (healthy: ~0.31; a zero or collapsed weight: 1.0)

# ---- what the records support (doctor/progress.py): runs that ended early, the step count and the vocabulary

LN_V_EXIT_STEPS = 500  # steps at a working LR after which a healthy run has long left ln V: the slowest healthy
#                        arm at vocab 50257 (batch 8 x 64 tokens) left it within ~50 steps, at vocab 256 within
#                        ~10 (docs/experiments/report-bpe50257.md); 10x that. Fewer: too early to say
UNIGRAM_CEILING_FRAC = 0.85  # the unigram entropy of tokenized text as a share of ln V is ~0.6 (Python source:
#                              0.58 as bytes, 0.62 as BPE-50257; English licence texts 0.58 as bytes): a loss at
#                              or above this share of ln V has not reached token frequencies (used only when the
#                              unigram entropy is not given)
SAMPLE_MISMATCH_MIN = 1  # logged greedy samples that are not the checkpoint's greedy decode (beyond a near-tie) for
#                          decode_mismatch: one is proof, once the checkpoint reproduces that step's val loss
#                          (healthy grid: 0 in every run)
SAMPLE_TIE_TOL_AUTOCAST = 0.02  # ...the near-tie tolerance (of the largest |logit|) for a run that decoded on CUDA,
#                                 where TF32/bf16 arithmetic may break a close call the other way than fp32 does

# ---- logs of other trainers (doctor/trainer_logs.py): nearest evidence, stated as such, never a verdict
OVERCONFIDENT_FRAC = 0.5  # the model's mean predictive entropy on training batches (TRL's "entropy") below this x
#                           its train loss: it is far surer than it is right. A calibrated model has entropy ~ loss;
#                           one that greedily repeats a token puts most mass on it (low entropy) and pays for it
#                           on the real next token (high loss).

# ---- crosscheck (crosscheck/): does a file encode its source, and does a runtime compute what the file encodes?

SCALE_RTOL = 1e-6  # relative slack on a scale relation (1/beta, beta x p) on top of the stored type's rounding:
#                    float32 arithmetic of the converter (1/x and x*p round once each)
CODE_TIE_SHARE = 0.01  # codes differing at up to this share of weights, each by one step, read as re-quantization
#                        of dequantized floats (W*(1/beta) vs W/beta flip exact .5 ties: measured < 0.1%); more is
#                        "not the source's codes"
RUNTIME_MEDIAN_FLOOR = 5e-4  # a runtime agrees with the file's reference when the median over positions of its
#                              largest logit difference (relative to the largest reference logit) is at most this...
RUNTIME_MAX_FLOOR = 5e-3  # ...and its largest at most this, or NOISE_FACTOR x what float rounding alone does to this
#                           model (whichever is larger). Measured (docs/crosscheck.md): real llama.cpp, bitnet_ref and
#                           its fused path on a trained model: median 0, largest <= 0.15%; the subtlest runtime faults
#                           of the zoo on it (per-tensor activations, a KV cache one position off): median >= 0.14%,
#                           largest >= 0.6%. Random-weight models move 10x more under float rounding: hence the noise.
NOISE_EPS = 2.0**-22  # relative nudge of the reference's normalised activations: a float32 ulp or two, what a change
#                       of summation order does
NOISE_SEEDS = 4  # nudged reference runs; the tolerance takes the largest difference they show (a flip at a
#                  rounding boundary is a rare event: 2 seeds missed the one a real runtime hit on a trained model)
NOISE_FACTOR = 2.0  # a faithful runtime stays within this x the nudged reference's difference (the fused path on
#                     random default-size models: <= 0.8x; per-tensor activation quantization: >= 2.8x)
