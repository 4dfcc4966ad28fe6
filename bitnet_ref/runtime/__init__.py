"""The packed ternary runtime on the CPU: what runs a model whose BitLinears are packed 2 bits a weight.

The C++ kernels' wrapper (kernels.py), packed layers (packed.py), the int8 output head (int8_head.py), the fused
whole-token step (fused.py) and random packed models (random_packed.py). It assembles nothing from files: the
loaders above it (decode/, formats/) do."""
