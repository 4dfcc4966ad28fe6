"""Training: ``python -m bitnet_ref.train``. The loop (loop.py), its settings resolved once into a plan (config.py),
the two-stage schedule (schedule.py), data-parallel set-up (dist.py) and test-only fault injection (faults.py)."""
