// decode_step.h: one whole decoded token of a packed BitNet model (official layout) in C++, the fused path.
//
// bitnet_ref/generate.py decodes through the torch model, where every RMSNorm, RoPE, attention and cache
// append is a torch op with a few microseconds of dispatch each: at the default size that, not the ternary
// kernel, is most of a token. decode_step runs a token through every layer in one call instead:
//
//   x = embedding row (float32, or int8 row * scale)
//   per layer: h = rmsnorm(x, attn_norm); q,k,v = ternary(h) (one int8 quantization shared); RoPE(q, k);
//              append k, v to the cache at pos; softmax(q k^T / sqrt(hd)) v per head (grouped-query);
//              x += o_proj(rmsnorm(attn, attn_sub_norm))
//              h = rmsnorm(x, ffn_norm); g,u = ternary(h); x += down(rmsnorm(act(g) * u, ffn_sub_norm))
//   logits = head(rmsnorm(x, final_norm)): float32 rows, or int8 rows (int8_matmul.h) * (gamma * row scale)
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

// One token of one sequence at position pos: appends its keys/values to kcache/vcache, each
// (n_layers, max_len, n_kv_heads, head_dim) float32 (this sequence's slice), and writes logits (vocab).
// Arguments must be validated by the caller (token < vocab, pos < max_len <= context). Returns -1, or the
// index of the layer whose activations were not finite (logits then unspecified).
int64_t decode_step(const DecodeModel& m, int64_t token, int64_t pos, float* kcache, float* vcache, int64_t max_len,
                    float* logits, Backend backend, int threads);

}  // namespace bitnet
