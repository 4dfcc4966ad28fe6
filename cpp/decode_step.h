// decode_step.h: the fused forward of a packed BitNet model (official layout) in C++: a decoded token, a prompt, or
// a batch of sequences, each in one call.
//
// bitnet_ref/generate.py decodes through the torch model, where every RMSNorm, RoPE, attention and cache
// append is a torch op with a few microseconds of dispatch each: at the default size that, not the ternary
// kernel, is most of a token. decode_forward runs rows of tokens through every layer in one call instead, each
// ternary product one GEMM over all the rows (activations of many positions against each weight read once):
//
//   x = embedding rows (float32, or int8 row * scale)
//   per layer: h = rmsnorm(x, attn_norm); q,k,v = ternary(h) (one int8 quantization shared); RoPE(q, k);
//              write k, v to the cache at each row's position; causal softmax(q k^T / sqrt(hd)) v per head over
//              the row's sequence (grouped-query; attention.h); x += o_proj(rmsnorm(attn, attn_sub_norm))
//              h = rmsnorm(x, ffn_norm); g,u = ternary(h); x += down(rmsnorm(act(g) * u, ffn_sub_norm))
//   logits = head(rmsnorm(x, final_norm)) for the rows asked for: float32 rows, or int8 rows (int8_matmul.h) *
//            (gamma * row scale)
//
// The rows are B sequences of T consecutive tokens each, every sequence from its own position in its own cache:
// a prompt (B = 1, T tokens: prefill, teacher forcing), a decode step of B sequences at independent positions
// (T = 1), or both. Every row's numbers are computed by the same code whatever else is in the call, so a prompt
// in one call, the same prompt a token at a time and the same sequences batched or alone give bit-identical
// logits and caches (tested in test_decode_step.cpp).
//
// The integer products are the exact ones of quant_matmul (ternary.h) and int8_matmul; the float glue (norm
// sums, softmax, SiLU) is plain C++ whose rounding differs from torch's vectorised reductions in the last
// bits, so this path is NOT bit-exact with the training forward. The torch path (runtime/packed.py) is the exact
// oracle; tests/test_fused.py checks this one against it (identical greedy tokens, logits within a tolerance).
// Only the official layout without ablations is supported (bitnet_ref/runtime/fused.py refuses the rest).
#pragma once

#include <cstdint>
#include <vector>

#include "ternary.h"

namespace bitnet {

struct TernaryLinear {
  const uint8_t* w = nullptr;  // packed, in `format`
  int64_t n = 0, k = 0;
  float beta = 1.0f;
};

struct DecodeLayer {
  const float* attn_norm = nullptr;      // (d)
  const float* attn_sub_norm = nullptr;  // (d)
  const float* ffn_norm = nullptr;       // (d)
  const float* ffn_sub_norm = nullptr;   // (ffn)
  TernaryLinear q, k, v, o, gate, up, down;
};

// A matrix of V rows of width d: float32 rows, or int8 rows with one float32 scale each.
struct RowMatrix {
  const float* f32 = nullptr;    // (V, d), or null
  const int8_t* q = nullptr;     // (V, d), when f32 is null
  const float* scale = nullptr;  // (V)
};

struct DecodeModel {
  int64_t d = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0, context = 0;
  bool swiglu = false;  // else ReLU^2
  float eps = 1e-5f;
  PackedFormat format = PackedFormat::k2Bit;
  std::vector<DecodeLayer> layers;
  const float* final_norm = nullptr;  // (d)
  RowMatrix emb, head;
  const float* rope_cos = nullptr;  // (context, head_dim)
  const float* rope_sin = nullptr;
};

// B sequences, each running T consecutive tokens from its own first position.
struct ForwardBatch {
  const int64_t* tokens = nullptr;  // (b, t)
  const int64_t* pos = nullptr;     // (b): the position of each sequence's first token
  int64_t b = 0, t = 0;
  float* kcache = nullptr;  // (b, n_layers, max_len, n_kv_heads, head_dim) float32: each sequence's own cache
  float* vcache = nullptr;
  int64_t max_len = 0;
  float* logits = nullptr;  // (b, t, vocab) when all_logits, else (b, vocab): each sequence's last token
  bool all_logits = true;
};

// Runs the batch: writes every token's keys/values to its sequence's cache at its position and the logits asked
// for. Positions before pos[i] of sequence i must already be in its cache. Arguments must be validated by the
// caller (tokens < vocab, 0 <= pos[i], pos[i] + t <= max_len <= context). Returns -1, or the index of a layer whose
// activations were not finite (n_layers: the final norm's; logits then unspecified).
int64_t decode_forward(const DecodeModel& m, const ForwardBatch& batch, Backend backend, int threads);

// One token of one sequence at position pos (decode_forward with b = t = 1): appends its keys/values to
// kcache/vcache, each (n_layers, max_len, n_kv_heads, head_dim) float32 (this sequence's slice), and writes
// logits (vocab).
int64_t decode_step(const DecodeModel& m, int64_t token, int64_t pos, float* kcache, float* vcache, int64_t max_len,
                    float* logits, Backend backend, int threads);

}  // namespace bitnet
