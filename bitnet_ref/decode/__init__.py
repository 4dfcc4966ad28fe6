"""Decoding a checkpoint: the loader that assembles a model for decode, and the decode probe.

The loader (loader.py) reads a checkpoint or a Hugging Face directory and assembles the runtime's layers; the
decode probe (probe.py) is the command ``python -m bitnet_ref.decode``, also ``tools/decode_probe.py`` and
``python -m bitnet_ref.decode_probe``. Not the generation loop itself (generate.py in the core)."""
