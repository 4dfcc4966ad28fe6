"""The doctor: a run (run.py) judged by verdict rules (verdicts.py) and explained by cause rules (causes.py), with
measurements taken from its checkpoint (measure.py), logs of other trainers (foreign_logs.py), and the command
(command.py, ``python -m bitnet_ref.doctor``)."""
