"""Benchmarks and kernel analysis: the kernels (bench_kernels), end-to-end decode (bench_decode, and beside
llama.cpp: bench_llama_cpp), instruction counts of compiled kernel loops (loop_insns), what they share about
memory (memory), and how long a real-sized file takes to load for decoding (bench_load). The machine they ran on
is described by ``bitnet_ref.machine``."""
