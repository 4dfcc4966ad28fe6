// decode_step.cpp: decode_step of decode_step.h. Compiled at the baseline instruction set with no FMA
// contraction (so x*cos + r*sin rounds as torch's two ops do); the heavy products go through matmul/matmul5
// and int8_matmul, which pick their SIMD kernels at run time.
#include "decode_step.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "int8_matmul.h"
#include "ternary5.h"

namespace bitnet {
namespace {

// y = x * (1 / sqrt(mean(x^2) + eps)) * w, in the order of model.RMSNorm (the sum in double, then float).
void rmsnorm(const float* x, const float* w, int64_t d, float eps, float* y) {
  double ss = 0.0;
  for (int64_t i = 0; i < d; ++i) ss += double{x[i]} * double{x[i]};
  const float ms = static_cast<float>(ss) / static_cast<float>(d);
  const float r = 1.0f / std::sqrt(ms + eps);
  for (int64_t i = 0; i < d; ++i) y[i] = (x[i] * r) * w[i];
}

// Scratch for one token, allocated per call (a few tens of KB: small next to the weights a token reads).
struct Scratch {
  std::vector<int8_t> q;
  std::vector<int32_t> acc;
  float gamma = 0.0f;
};

// Quantizes x (k floats) into s.q / s.gamma; false on a non-finite value.
bool quantize(const float* x, int64_t k, Scratch& s) {
  s.q.resize(static_cast<size_t>(k));
  return act_quant_rows(x, 1, k, s.q.data(), &s.gamma) < 0;
}

// y (lin.n) = float(s.q . w^T) * (gamma * beta): quant_matmul's product and order, on codes already made.
void ternary(const DecodeModel& m, const TernaryLinear& lin, Scratch& s, float* y, Backend backend, int threads) {
  s.acc.resize(static_cast<size_t>(lin.n));
  if (m.format == PackedFormat::k1_6Bit)
    matmul5(s.q.data(), lin.w, s.acc.data(), 1, lin.n, lin.k, backend, threads);
  else
    matmul(s.q.data(), lin.w, s.acc.data(), 1, lin.n, lin.k, backend, threads);
  const float scale = s.gamma * lin.beta;
  for (int64_t j = 0; j < lin.n; ++j) y[j] = static_cast<float>(s.acc[j]) * scale;
}

// sum_i a[i] * b[i] in eight interleaved partial sums: independent chains the compiler turns into SIMD adds
// (a single running sum cannot be vectorised without reassociation). Attention scores are the one place the
// step does O(position) work per token, so this is what keeps long contexts cheap.
float dot(const float* a, const float* b, int64_t n) {
  float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// RoPE on one head vector (half-split, model.apply_rope): out = x * cos + rotate(x) * sin.
void rope(float* x, const float* cos, const float* sin, int64_t hd) {
  const int64_t h = hd / 2;
  for (int64_t i = 0; i < h; ++i) {
    const float x1 = x[i], x2 = x[i + h];
    x[i] = x1 * cos[i] + (-x2) * sin[i];
    x[i + h] = x2 * cos[i + h] + x1 * sin[i + h];
  }
}

}  // namespace

int64_t decode_step(const DecodeModel& m, int64_t token, int64_t pos, float* kcache, float* vcache, int64_t max_len,
                    float* logits, Backend backend, int threads) {
  const int64_t d = m.d, hd = m.head_dim, kvd = m.n_kv_heads * hd, group = m.n_heads / m.n_kv_heads;
  std::vector<float> x(d), h(std::max(d, m.ffn)), q(d), att(d), g(m.ffn), u(m.ffn), y(std::max(d, m.ffn));
  std::vector<float> scores(static_cast<size_t>(pos + 1));
  Scratch s;
  if (m.emb.f32 != nullptr) {
    std::copy(m.emb.f32 + token * d, m.emb.f32 + (token + 1) * d, x.begin());
  } else {
    const float sc = m.emb.scale[token];
    for (int64_t i = 0; i < d; ++i) x[i] = static_cast<float>(m.emb.q[token * d + i]) * sc;
  }
  const float* cos = m.rope_cos + pos * hd;
  const float* sin = m.rope_sin + pos * hd;
  const float inv_sqrt_hd = 1.0f / std::sqrt(static_cast<float>(hd));
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const DecodeLayer& L = m.layers[l];
    float* kl = kcache + static_cast<int64_t>(l) * max_len * kvd;  // (max_len, Hkv, hd)
    float* vl = vcache + static_cast<int64_t>(l) * max_len * kvd;
    // attention
    rmsnorm(x.data(), L.attn_norm, d, m.eps, h.data());
    if (!quantize(h.data(), d, s)) return static_cast<int64_t>(l);
    ternary(m, L.q, s, q.data(), backend, threads);
    ternary(m, L.k, s, kl + pos * kvd, backend, threads);
    ternary(m, L.v, s, vl + pos * kvd, backend, threads);
    for (int64_t hh = 0; hh < m.n_heads; ++hh) rope(q.data() + hh * hd, cos, sin, hd);
    for (int64_t j = 0; j < m.n_kv_heads; ++j) rope(kl + pos * kvd + j * hd, cos, sin, hd);
    for (int64_t hh = 0; hh < m.n_heads; ++hh) {
      const float* qh = q.data() + hh * hd;
      const int64_t j = hh / group;  // the key/value head serving this query head
      float mx = -INFINITY;
      for (int64_t t = 0; t <= pos; ++t) {
        scores[t] = dot(qh, kl + t * kvd + j * hd, hd) * inv_sqrt_hd;
        mx = std::max(mx, scores[t]);
      }
      float sum = 0.0f;
      for (int64_t t = 0; t <= pos; ++t) sum += (scores[t] = std::exp(scores[t] - mx));
      float* out = att.data() + hh * hd;
      std::fill(out, out + hd, 0.0f);
      for (int64_t t = 0; t <= pos; ++t) {
        const float p = scores[t] / sum;
        const float* vt = vl + t * kvd + j * hd;
        for (int64_t i = 0; i < hd; ++i) out[i] += p * vt[i];
      }
    }
    rmsnorm(att.data(), L.attn_sub_norm, d, m.eps, h.data());
    if (!quantize(h.data(), d, s)) return static_cast<int64_t>(l);
    ternary(m, L.o, s, y.data(), backend, threads);
    for (int64_t i = 0; i < d; ++i) x[i] += y[i];
    // feed-forward
    rmsnorm(x.data(), L.ffn_norm, d, m.eps, h.data());
    if (!quantize(h.data(), d, s)) return static_cast<int64_t>(l);
    ternary(m, L.gate, s, g.data(), backend, threads);
    ternary(m, L.up, s, u.data(), backend, threads);
    for (int64_t i = 0; i < m.ffn; ++i) {
      const float a = m.swiglu ? g[i] / (1.0f + std::exp(-g[i])) : std::max(g[i], 0.0f) * std::max(g[i], 0.0f);
      g[i] = a * u[i];
    }
    rmsnorm(g.data(), L.ffn_sub_norm, m.ffn, m.eps, h.data());
    if (!quantize(h.data(), m.ffn, s)) return static_cast<int64_t>(l);
    ternary(m, L.down, s, y.data(), backend, threads);
    for (int64_t i = 0; i < d; ++i) x[i] += y[i];
  }
  rmsnorm(x.data(), m.final_norm, d, m.eps, h.data());
  if (m.head.f32 != nullptr) {
    for (int64_t r = 0; r < m.vocab; ++r) {
      const float* w = m.head.f32 + r * d;
      double acc = 0.0;
      for (int64_t i = 0; i < d; ++i) acc += double{h[i]} * double{w[i]};
      logits[r] = static_cast<float>(acc);
    }
    return -1;
  }
  if (!quantize(h.data(), d, s)) return static_cast<int64_t>(m.layers.size());
  s.acc.resize(static_cast<size_t>(m.vocab));
  int8_matmul(s.q.data(), m.head.q, s.acc.data(), 1, m.vocab, d, backend, threads);
  for (int64_t r = 0; r < m.vocab; ++r) logits[r] = static_cast<float>(s.acc[r]) * (s.gamma * m.head.scale[r]);
  return -1;
}

}  // namespace bitnet
