#!/usr/bin/env bash
# llama-cpp-python for tests/test_llama_cpp.py (llama.cpp as a real client of the GGUF export, and crosscheck's
# llama.cpp runtime). It builds llama.cpp from source: ~10+ minutes the first time on a machine; pip keeps the wheel
# in its cache, so later runs install it in seconds. Run inside the CI virtual environment (after the set-up step).
set -euo pipefail
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" python -m pip install "llama-cpp-python==0.3.36"
python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
