"""bitnet_ref: a small reference implementation of BitNet b1.58 training and ternary decoding.

The shared core sits here (quantizers, the model, checkpoint files, the metrics log, thresholds, generation); each
subsystem is a subpackage: data, train, runtime, formats, decode, doctor, conform. docs/modules.md maps them.
``bitnet_ref.load(path)`` reads a bitnet_ref checkpoint or a Hugging Face BitNet directory. What this file is not:
a re-export of the subpackages (``import bitnet_ref`` stays light: import what you use from where it lives).
"""

__version__ = "0.1.0"


def load(path):
    """The fake-quant Transformer of a bitnet_ref checkpoint or a Hugging Face BitNet model (formats.hf_read.load)."""
    from bitnet_ref.formats.hf_read import load as _load  # lazy: `import bitnet_ref` stays light

    return _load(path)
