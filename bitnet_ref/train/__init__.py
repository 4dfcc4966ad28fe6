"""Training a BitNet b1.58 (or full-precision) LM: ``python -m bitnet_ref.train``.

The loop (loop.py), its settings resolved once into a plan (config.py), the two-stage schedule (schedule.py),
data-parallel set-up (dist.py) and test-only fault injection (faults.py). Not here: the data (data/), the model
and quantizers (the core), or the judges that read a run afterwards (doctor/)."""
