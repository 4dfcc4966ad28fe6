// decode_step.cpp: decode_forward and decode_step of decode_step.h. Compiled at the baseline instruction set with
// no FMA contraction (so x*cos + r*sin rounds as torch's two ops do); the heavy products go through
// matmul/matmul5 and int8_matmul, which pick their SIMD kernels at run time, and through attention (attention.h).
#include "decode_step.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention.h"
#include "int8_matmul.h"
#include "ternary5.h"
#include "threadpool.h"
#include "vector_math.h"

namespace bitnet {
namespace {

// A long prompt goes through in chunks of at most this many rows (every sequence's next positions): it bounds the
// scratch (about 30 MB at the 2B-4T shape) while each weight is still read once for 256 rows.
constexpr int64_t kChunkRows = 256;

// fn(r0, r1) over the rows [0, m), split across threads when there are enough rows: the float work around the
// products (norms, quantization, scaling, RoPE, residuals) is per row, so a split changes no number.
template <typename Fn>
void for_rows(int64_t m, int threads, Fn&& fn) {
  if (threads <= 1 || m < 8) {
    fn(int64_t{0}, m);
    return;
  }
  struct Ctx {
    Fn* fn;
    int64_t per, m;
  } ctx{&fn, std::max<int64_t>(2, m / (int64_t{threads} * 4)), m};
  const auto task = [](void* c, int64_t t) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    (*x.fn)(t* x.per, std::min(x.m, (t + 1) * x.per));
  };
  parallel_for(threads, (m + ctx.per - 1) / ctx.per, task, &ctx);
}

// y = x * (1 / sqrt(mean(x^2) + eps)) * w, in the order of model.RMSNorm (the sum of squares in double, in four
// interleaved partial sums the compiler can vectorise, then float).
void rmsnorm(const float* x, const float* w, int64_t d, float eps, float* y) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= d; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += double{x[i + j]} * double{x[i + j]};
  double ss = (s[0] + s[2]) + (s[1] + s[3]);
  for (; i < d; ++i) ss += double{x[i]} * double{x[i]};
  const float ms = static_cast<float>(ss) / static_cast<float>(d);
  const float r = 1.0f / std::sqrt(ms + eps);
  for (i = 0; i < d; ++i) y[i] = (x[i] * r) * w[i];
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

// The activations of one chunk of rows (allocated once per call, resized per chunk).
struct Work {
  std::vector<float> x, h, q, k, v, att, g, u, y, gamma;
  std::vector<int8_t> codes;
  std::vector<int32_t> acc;
  std::vector<int64_t> pos, len;
  std::vector<const float*> krow, vrow;
};

// w.codes / w.gamma = the int8 quantization of rmsnorm(x, norm) (m rows of width k; the normalised rows go to w's h);
// false on a non-finite value.
bool norm_quant(const float* x, const float* norm, int64_t m, int64_t k, float eps, Work& w, int threads) {
  w.codes.resize(static_cast<size_t>(m * k));
  w.gamma.resize(static_cast<size_t>(m));
  std::atomic<bool> ok{true};
  for_rows(m, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) rmsnorm(x + r * k, norm, k, eps, w.h.data() + r * k);
    if (act_quant_rows(w.h.data() + r0 * k, r1 - r0, k, w.codes.data() + r0 * k, w.gamma.data() + r0) >= 0) ok = false;
  });
  return ok.load();
}

// y (m, lin.n) = float(codes . w^T) * (gamma[row] * beta): quant_matmul's product and order, on codes already made.
void ternary(const DecodeModel& md, const TernaryLinear& lin, Work& w, int64_t m, float* y, Backend backend,
             int threads) {
  w.acc.resize(static_cast<size_t>(m * lin.n));
  if (md.format == PackedFormat::k1_6Bit)
    matmul5(w.codes.data(), lin.w, w.acc.data(), m, lin.n, lin.k, backend, threads);
  else
    matmul(w.codes.data(), lin.w, w.acc.data(), m, lin.n, lin.k, backend, threads);
  for_rows(m, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float scale = w.gamma[r] * lin.beta;
      const int32_t* a = w.acc.data() + r * lin.n;
      float* out = y + r * lin.n;
      for (int64_t j = 0; j < lin.n; ++j) out[j] = static_cast<float>(a[j]) * scale;
    }
  });
}

// x += y over m rows of width d.
void residual(float* x, const float* y, int64_t m, int64_t d, int threads) {
  for_rows(m, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0 * d; i < r1 * d; ++i) x[i] += y[i];
  });
}

// The attention half of layer l for the m rows of w (their keys and values go to the caches first).
bool attention_block(const DecodeModel& md, const ForwardBatch& fb, size_t l, int64_t c, Work& w, Backend backend,
                     int threads) {
  const DecodeLayer& L = md.layers[l];
  const int64_t m = fb.b * c, d = md.d, hd = md.head_dim, kvd = md.n_kv_heads * hd;
  const int64_t layer_floats = fb.max_len * kvd, seq_floats = static_cast<int64_t>(md.layers.size()) * layer_floats;
  if (!norm_quant(w.x.data(), L.attn_norm, m, d, md.eps, w, threads)) return false;
  ternary(md, L.q, w, m, w.q.data(), backend, threads);
  ternary(md, L.k, w, m, w.k.data(), backend, threads);
  ternary(md, L.v, w, m, w.v.data(), backend, threads);
  for_rows(m, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* cos = md.rope_cos + w.pos[r] * hd;
      const float* sin = md.rope_sin + w.pos[r] * hd;
      for (int64_t hh = 0; hh < md.n_heads; ++hh) rope(w.q.data() + r * d + hh * hd, cos, sin, hd);
      for (int64_t j = 0; j < md.n_kv_heads; ++j) rope(w.k.data() + r * kvd + j * hd, cos, sin, hd);
      const int64_t off = (r / c) * seq_floats + static_cast<int64_t>(l) * layer_floats;  // sequence r / c, layer l
      std::memcpy(fb.kcache + off + w.pos[r] * kvd, w.k.data() + r * kvd, sizeof(float) * kvd);
      std::memcpy(fb.vcache + off + w.pos[r] * kvd, w.v.data() + r * kvd, sizeof(float) * kvd);
      w.krow[r] = fb.kcache + off;
      w.vrow[r] = fb.vcache + off;
    }
  });
  AttentionArgs a;
  a.m = m, a.n_heads = md.n_heads, a.n_kv_heads = md.n_kv_heads, a.head_dim = hd;
  a.q = w.q.data(), a.out = w.att.data(), a.k = w.krow.data(), a.v = w.vrow.data(), a.len = w.len.data();
  attention(a, backend, threads);
  if (!norm_quant(w.att.data(), L.attn_sub_norm, m, d, md.eps, w, threads)) return false;
  ternary(md, L.o, w, m, w.y.data(), backend, threads);
  residual(w.x.data(), w.y.data(), m, d, threads);
  return true;
}

// The feed-forward half of layer l for the m rows of w.
bool ffn_block(const DecodeModel& md, const DecodeLayer& L, int64_t m, Work& w, Backend backend, int threads) {
  const int64_t d = md.d, f = md.ffn;
  if (!norm_quant(w.x.data(), L.ffn_norm, m, d, md.eps, w, threads)) return false;
  ternary(md, L.gate, w, m, w.g.data(), backend, threads);
  ternary(md, L.up, w, m, w.u.data(), backend, threads);
  float* g = w.g.data();
  const float* u = w.u.data();
  for_rows(m, threads, [&](int64_t r0, int64_t r1) {
    if (md.swiglu) {  // silu(g) * u, as F.silu: g / (1 + exp(-g))
      for (int64_t i = r0 * f; i < r1 * f; ++i) g[i] = (g[i] / (1.0f + fast_exp(-g[i]))) * u[i];
    } else {  // relu(g)^2 * u
      for (int64_t i = r0 * f; i < r1 * f; ++i) {
        const float r = relu(g[i]);
        g[i] = (r * r) * u[i];
      }
    }
  });
  if (!norm_quant(w.g.data(), L.ffn_sub_norm, m, f, md.eps, w, threads)) return false;
  ternary(md, L.down, w, m, w.y.data(), backend, threads);
  residual(w.x.data(), w.y.data(), m, d, threads);
  return true;
}

// Logits of `rows` rows of x (listed in src, written to logits row dst[i]).
bool head_rows(const DecodeModel& md, const std::vector<int64_t>& src, const std::vector<int64_t>& dst, float* logits,
               Work& w, Backend backend, int threads) {
  const int64_t d = md.d, n = static_cast<int64_t>(src.size()), V = md.vocab;
  std::vector<float> x(static_cast<size_t>(n * d));  // the rows asked for, together
  for (int64_t i = 0; i < n; ++i) std::copy_n(w.x.data() + src[i] * d, d, x.data() + i * d);
  if (md.head.f32 != nullptr) {
    for (int64_t i = 0; i < n; ++i) rmsnorm(x.data() + i * d, md.final_norm, d, md.eps, w.h.data() + i * d);
    for (int64_t i = 0; i < n; ++i) {
      const float* h = w.h.data() + i * d;
      for (int64_t r = 0; r < V; ++r) {
        const float* row = md.head.f32 + r * d;
        double acc = 0.0;
        for (int64_t j = 0; j < d; ++j) acc += double{h[j]} * double{row[j]};
        logits[dst[i] * V + r] = static_cast<float>(acc);
      }
    }
    return true;
  }
  if (!norm_quant(x.data(), md.final_norm, n, d, md.eps, w, threads)) return false;
  w.acc.resize(static_cast<size_t>(n * V));
  int8_matmul(w.codes.data(), md.head.q, w.acc.data(), n, V, d, backend, threads);
  for_rows(n, threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t r = 0; r < V; ++r)
        logits[dst[i] * V + r] = static_cast<float>(w.acc[i * V + r]) * (w.gamma[i] * md.head.scale[r]);
  });
  return true;
}

// Tokens c0 .. c0 + c - 1 of every sequence; row r = i * c + j is sequence i's token c0 + j.
int64_t forward_chunk(const DecodeModel& md, const ForwardBatch& fb, int64_t c0, int64_t c, Work& w, Backend backend,
                      int threads) {
  const int64_t m = fb.b * c, d = md.d, kvd = md.n_kv_heads * md.head_dim, big = std::max(d, md.ffn);
  w.x.resize(m * d), w.h.resize(m * big), w.q.resize(m * d), w.att.resize(m * d), w.y.resize(m * d);
  w.k.resize(m * kvd), w.v.resize(m * kvd), w.g.resize(m * md.ffn), w.u.resize(m * md.ffn);
  w.pos.resize(m), w.len.resize(m), w.krow.resize(m), w.vrow.resize(m);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t i = r / c, j = r % c, token = fb.tokens[i * fb.t + c0 + j];
    w.pos[r] = fb.pos[i] + c0 + j;
    w.len[r] = w.pos[r] + 1;
    float* x = w.x.data() + r * d;
    if (md.emb.f32 != nullptr) {
      std::copy(md.emb.f32 + token * d, md.emb.f32 + (token + 1) * d, x);
    } else {
      const float sc = md.emb.scale[token];
      for (int64_t e = 0; e < d; ++e) x[e] = static_cast<float>(md.emb.q[token * d + e]) * sc;
    }
  }
  for (size_t l = 0; l < md.layers.size(); ++l) {
    if (!attention_block(md, fb, l, c, w, backend, threads)) return static_cast<int64_t>(l);
    if (!ffn_block(md, md.layers[l], m, w, backend, threads)) return static_cast<int64_t>(l);
  }
  std::vector<int64_t> src, dst;  // rows whose logits are wanted, and where they go
  for (int64_t r = 0; r < m; ++r) {
    const int64_t i = r / c, j = c0 + r % c;
    if (fb.all_logits) {
      src.push_back(r), dst.push_back(i * fb.t + j);
    } else if (j == fb.t - 1) {
      src.push_back(r), dst.push_back(i);
    }
  }
  if (!src.empty() && !head_rows(md, src, dst, fb.logits, w, backend, threads))
    return static_cast<int64_t>(md.layers.size());
  return -1;
}

}  // namespace

int64_t decode_forward(const DecodeModel& m, const ForwardBatch& fb, Backend backend, int threads) {
  if (fb.b <= 0 || fb.t <= 0) return -1;
  if (threads <= 0) threads = default_threads();
  const int64_t chunk = std::max<int64_t>(1, kChunkRows / fb.b);
  Work w;
  for (int64_t c0 = 0; c0 < fb.t; c0 += chunk) {
    const int64_t bad = forward_chunk(m, fb, c0, std::min(chunk, fb.t - c0), w, backend, threads);
    if (bad >= 0) return bad;
  }
  return -1;
}

int64_t decode_step(const DecodeModel& m, int64_t token, int64_t pos, float* kcache, float* vcache, int64_t max_len,
                    float* logits, Backend backend, int threads) {
  ForwardBatch fb;
  fb.tokens = &token, fb.pos = &pos, fb.b = 1, fb.t = 1;
  fb.kcache = kcache, fb.vcache = vcache, fb.max_len = max_len, fb.logits = logits, fb.all_logits = true;
  return decode_forward(m, fb, backend, threads);
}

}  // namespace bitnet
