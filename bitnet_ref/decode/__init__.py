"""Decoding a checkpoint: the loader that assembles a model for decode (loader.py) and the decode probe (probe.py,
``python -m bitnet_ref.decode``; also ``tools/decode_probe.py`` and ``python -m bitnet_ref.decode_probe``)."""
