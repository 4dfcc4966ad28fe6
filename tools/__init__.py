"""The project's scripts, by purpose: ``bench/`` (benchmarks and kernel analysis), ``experiments/`` (the
debugging report's experiments, reproduced), ``reliability/`` (fault and crash harnesses), and
``decode_probe.py`` (the decode probe's documented command).

Each script runs as ``python tools/<group>/<name>.py`` from anywhere; this file only makes them importable as
modules (``from tools.bench import bench_kernels``) for the tests and for each other. Not part of the
installed package: the wheel ships ``bitnet_ref`` alone.
"""
