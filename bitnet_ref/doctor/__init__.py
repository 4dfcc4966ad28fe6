"""The doctor: a training run judged by verdict rules and explained by cause rules.

A run (run.py) judged by verdict rules (verdicts.py) and explained by cause rules (causes.py), with measurements
taken from its checkpoint (measure.py), logs of other trainers (foreign_logs.py), and the command (command.py,
``python -m bitnet_ref.doctor``). Not a replacement for reading the curves."""
