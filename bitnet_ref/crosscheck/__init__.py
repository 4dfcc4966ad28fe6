"""Is it my model or my runtime? A BitNet file checked against what it was made from (tensors.py) and against what
runtimes compute from it (agreement.py, runtimes.py, child.py), with a verdict: converter, runtime or model.
``python -m bitnet_ref.crosscheck`` (command.py; console script ``bitnet-crosscheck``); docs/crosscheck.md."""
