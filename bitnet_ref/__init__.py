"""bitnet_ref: a small reference implementation of BitNet b1.58 training and ternary decoding.

The trainer (quant, model, schedule, data, train) is pure PyTorch. The packed decode path
(kernels, packed) uses the optional C++ extension ``bitnet_ref._core``. ``bitnet_ref.load(path)`` reads a
bitnet_ref checkpoint or a Hugging Face BitNet directory (``interop.py``); ``python -m bitnet_ref.export``
writes one (``export.py``).
"""

__version__ = "0.1.0"


def load(path):
    """The fake-quant Transformer of a bitnet_ref checkpoint or a Hugging Face BitNet model (see interop.load)."""
    from .interop import load as _load  # lazy: `import bitnet_ref` stays light

    return _load(path)
