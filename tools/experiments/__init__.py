"""The debugging report's experiments, reproduced at this machine's scale (experiments, its report), at the
report's own vocabulary on a GPU (gpu_regime), and two vocabularies side by side (compare_vocab); and a
full-precision run continued as ternary, abruptly and with each quantization warmup (warmup, its report)."""
