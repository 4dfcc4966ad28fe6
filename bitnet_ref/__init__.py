"""bitnet_ref: a small reference implementation of BitNet b1.58 training and ternary decoding.

The trainer (quant, model, schedule, data, train) is pure PyTorch. The packed decode path
(kernels, packed) uses the optional C++ extension ``bitnet_ref._core``.
"""

__version__ = "0.1.0"
