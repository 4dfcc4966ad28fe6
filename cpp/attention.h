// attention.h: causal softmax attention of query rows over a float32 KV cache, the one routine every fused
// forward uses (decode_step.h: a decoded token, a prompt, a batch of sequences).
//
// Row r attends with each of its query heads to the first len[r] positions of its own sequence's keys and values
// (grouped-query: query head h reads key/value head h / (n_heads / n_kv_heads)). Each (row, head) is computed by
// the same code whatever the rows are and however they are split across threads, so a prompt run as one call
// gets bit for bit the numbers the same positions get one token at a time: the tests rely on that. Float32; the
// arithmetic is written down in attention_kernel.h. Not a general attention kernel: no masks, no dropout, no other
// precision.
#pragma once

#include <cstdint>

#include "ternary.h"  // Backend

namespace bitnet {

struct AttentionArgs {
  int64_t m = 0;  // query rows
  int64_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  const float* q = nullptr;         // (m, n_heads * head_dim), RoPE applied
  float* out = nullptr;             // (m, n_heads * head_dim)
  const float* const* k = nullptr;  // per row: its sequence's keys of this layer, (positions, n_kv_heads, head_dim)
  const float* const* v = nullptr;  // per row: the values, same layout
  const int64_t* len = nullptr;     // per row: positions it attends to (its own position + 1), >= 1
};

// out = softmax(q k^T / sqrt(head_dim)) v per row and head. The AVX2 build when the backend is not kScalar and the
// CPU has AVX2 (the same numbers either way). threads <= 0: default_threads().
void attention(const AttentionArgs& a, Backend backend, int threads);
// The AVX2 build (attention_avx2.cpp): query head h of rows r0 .. r0 + rows - 1, rows of one sequence.
void attention_block_avx2(const AttentionArgs& a, int64_t r0, int64_t rows, int64_t h);

}  // namespace bitnet
