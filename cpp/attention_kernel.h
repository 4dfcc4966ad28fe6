// attention_kernel.h: the arithmetic of attention() (attention.h), included by attention.cpp (the baseline
// instruction set) and attention_avx2.cpp (AVX2). One source compiled twice, with no FMA contraction in either, so
// both builds do the same float additions and multiplications in the same order and give bit-identical results;
// AVX2 only does eight lanes per instruction where SSE does four. Everything is in an anonymous namespace for the
// reason given in kernel_tile.h (each includer has its own ISA flags).
//
// The numbers, for one query row q and its keys/values k_t, v_t (t < n):
//   score_t = finish(eight partial sums of q[i] * k_t[i], lane j taking i = j mod 8 below hd8 = hd rounded down to
//             8) * scale, finish() adding the lanes in a fixed order and then the products past hd8 one by one;
//   p_t     = fast_exp(score_t - max_t score_t) * (1 / sum_t of them, in eight partial sums the same way);
//   out[i]  = (((0 + p_0 v_0[i]) + p_1 v_1[i]) + ...) in the order of t.
// Tiles of several query rows (rows of one sequence, sharing its keys) and several keys only share loads; every
// score and every output element is still computed exactly as above.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "vector_math.h"

namespace bitnet {
namespace {

// V8: eight float lanes. One 256-bit vector with AVX; two 128-bit ones otherwise (SSE at the x86-64 baseline, NEON
// on ARM); an array for compilers without GNU vector extensions. The same lane arithmetic in every case.
#if defined(__GNUC__) && defined(__AVX__)
typedef float V8 __attribute__((vector_size(32)));
inline V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, const V8& v) { std::memcpy(p, &v, sizeof v); }
inline V8 splat8(float x) { return V8{x, x, x, x, x, x, x, x}; }
inline float lane(const V8& v, int j) { return v[j]; }
constexpr int kTileRows = 2;  // query rows per score tile: 2 x 4 accumulators fit the 16 ymm registers
#elif defined(__GNUC__)
typedef float V4 __attribute__((vector_size(16)));
struct V8 {
  V4 lo, hi;
  V8 operator*(const V8& o) const { return {lo * o.lo, hi * o.hi}; }
  V8& operator+=(const V8& o) {
    lo += o.lo, hi += o.hi;
    return *this;
  }
};
inline V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v.lo, p, sizeof v.lo);
  std::memcpy(&v.hi, p + 4, sizeof v.hi);
  return v;
}
inline void store8(float* p, const V8& v) {
  std::memcpy(p, &v.lo, sizeof v.lo);
  std::memcpy(p + 4, &v.hi, sizeof v.hi);
}
inline V8 splat8(float x) { return {V4{x, x, x, x}, V4{x, x, x, x}}; }
inline float lane(const V8& v, int j) { return j < 4 ? v.lo[j] : v.hi[j - 4]; }
#if defined(__aarch64__)
constexpr int kTileRows = 2;  // 32 NEON registers
#else
constexpr int kTileRows = 1;  // 16 SSE registers: 2 x 4 accumulators of two each would spill
#endif
#else
struct V8 {
  float v[8];
  V8 operator*(const V8& o) const {
    V8 r;
    for (int j = 0; j < 8; ++j) r.v[j] = v[j] * o.v[j];
    return r;
  }
  V8& operator+=(const V8& o) {
    for (int j = 0; j < 8; ++j) v[j] += o.v[j];
    return *this;
  }
};
inline V8 load8(const float* p) {
  V8 v;
  std::memcpy(v.v, p, sizeof v.v);
  return v;
}
inline void store8(float* p, const V8& v) { std::memcpy(p, v.v, sizeof v.v); }
inline V8 splat8(float x) { return {{x, x, x, x, x, x, x, x}}; }
inline float lane(const V8& v, int j) { return v.v[j]; }
constexpr int kTileRows = 1;
#endif

inline float finish(const V8& s, const float* q, const float* k, int64_t hd8, int64_t hd) {
  float r =
      ((lane(s, 0) + lane(s, 4)) + (lane(s, 1) + lane(s, 5))) + ((lane(s, 2) + lane(s, 6)) + (lane(s, 3) + lane(s, 7)));
  for (int64_t i = hd8; i < hd; ++i) r += q[i] * k[i];
  return r;
}

// out[r][t] = score of query row r and key t, for t in [t0, t1) and R rows; key t at k + t * kstride.
template <int R>
void score_tile(const float* const* q, const float* k, int64_t kstride, int64_t t0, int64_t t1, int64_t hd, float scale,
                float* const* out) {
  const int64_t hd8 = hd / 8 * 8;
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) {
    const float* kt[4] = {k + t * kstride, k + (t + 1) * kstride, k + (t + 2) * kstride, k + (t + 3) * kstride};
    V8 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = splat8(0.0f);
    for (int64_t i = 0; i < hd8; i += 8) {
      const V8 k0 = load8(kt[0] + i), k1 = load8(kt[1] + i), k2 = load8(kt[2] + i), k3 = load8(kt[3] + i);
      for (int r = 0; r < R; ++r) {
        const V8 qv = load8(q[r] + i);
        acc[r][0] += qv * k0, acc[r][1] += qv * k1, acc[r][2] += qv * k2, acc[r][3] += qv * k3;
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) out[r][t + c] = finish(acc[r][c], q[r], kt[c], hd8, hd) * scale;
  }
  for (; t < t1; ++t) {
    const float* kt = k + t * kstride;
    for (int r = 0; r < R; ++r) {
      V8 acc = splat8(0.0f);
      for (int64_t i = 0; i < hd8; i += 8) acc += load8(q[r] + i) * load8(kt + i);
      out[r][t] = finish(acc, q[r], kt, hd8, hd) * scale;
    }
  }
}

// out[r][i] += p[r][t] * v_t[i] for t in [t0, t1) in order, R rows sharing each load of v_t; hd in pieces of 32
// floats (four vectors per row held in registers across t), then of 8, then one by one.
template <int R>
void value_tile(const float* const* p, const float* v, int64_t vstride, int64_t t0, int64_t t1, int64_t hd,
                float* const* out) {
  int64_t i0 = 0;
  for (; i0 + 32 <= hd; i0 += 32) {
    V8 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = load8(out[r] + i0 + 8 * c);
    for (int64_t t = t0; t < t1; ++t) {
      const float* vt = v + t * vstride + i0;
      const V8 v0 = load8(vt), v1 = load8(vt + 8), v2 = load8(vt + 16), v3 = load8(vt + 24);
      for (int r = 0; r < R; ++r) {
        const V8 pr = splat8(p[r][t]);
        acc[r][0] += pr * v0, acc[r][1] += pr * v1, acc[r][2] += pr * v2, acc[r][3] += pr * v3;
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) store8(out[r] + i0 + 8 * c, acc[r][c]);
  }
  for (; i0 + 8 <= hd; i0 += 8) {
    V8 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = load8(out[r] + i0);
    for (int64_t t = t0; t < t1; ++t) {
      const V8 vt = load8(v + t * vstride + i0);
      for (int r = 0; r < R; ++r) acc[r] += splat8(p[r][t]) * vt;
    }
    for (int r = 0; r < R; ++r) store8(out[r] + i0, acc[r]);
  }
  for (; i0 < hd; ++i0)
    for (int r = 0; r < R; ++r)
      for (int64_t t = t0; t < t1; ++t) out[r][i0] += p[r][t] * v[t * vstride + i0];
}

// Softmax of n scores in place (see the top of the file).
void softmax(float* s, int64_t n) {
  float mx = s[0];  // the max is exact: any order gives the same one
  for (int64_t t = 1; t < n; ++t) mx = s[t] > mx ? s[t] : mx;
  for (int64_t t = 0; t < n; ++t) s[t] = fast_exp(s[t] - mx);
  V8 acc = splat8(0.0f);
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) acc += load8(s + t);
  float sum = ((lane(acc, 0) + lane(acc, 4)) + (lane(acc, 1) + lane(acc, 5))) +
              ((lane(acc, 2) + lane(acc, 6)) + (lane(acc, 3) + lane(acc, 7)));
  for (; t < n; ++t) sum += s[t];
  const float inv = 1.0f / sum;
  for (t = 0; t < n; ++t) s[t] = s[t] * inv;
}

// Query head h of rows r0 .. r0 + nr - 1, rows of one sequence (the same keys and values; each its own length).
// The keys go in chunks of kKeyChunk, each chunk (16 KB at head_dim 128) used by all the rows, two rows at a time
// where the build has two-row tiles, before the next: every key and value is read from far away once per block of
// rows instead of once per row. Within a chunk a pair of rows shares the positions both see; a row's further
// positions are done alone, so each output element still takes its terms in the order of t.
constexpr int64_t kKeyChunk = 32;

void attend_block(const AttentionArgs& a, int64_t r0, int64_t nr, int64_t h, std::vector<float>& scratch) {
  const int64_t hd = a.head_dim, kvd = a.n_kv_heads * hd, d = a.n_heads * hd;
  const int64_t j = h / (a.n_heads / a.n_kv_heads);  // the key/value head serving this query head
  const float* k = a.k[r0] + j * hd;
  const float* v = a.v[r0] + j * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  int64_t n1 = 0;
  for (int64_t r = 0; r < nr; ++r) n1 = std::max(n1, a.len[r0 + r]);
  scratch.resize(static_cast<size_t>(nr * n1));
  std::vector<const float*> q(static_cast<size_t>(nr));
  std::vector<float*> s(static_cast<size_t>(nr)), out(static_cast<size_t>(nr));
  for (int64_t r = 0; r < nr; ++r) {
    q[r] = a.q + (r0 + r) * d + h * hd;
    s[r] = scratch.data() + r * n1;
    out[r] = a.out + (r0 + r) * d + h * hd;
  }
  const int64_t* len = a.len + r0;
  // Calls fn(R, first row, t0, t1) over the block: each chunk of keys for every row, pairs first.
  auto sweep = [&](auto&& fn) {
    for (int64_t t0 = 0; t0 < n1; t0 += kKeyChunk) {
      const int64_t t1 = std::min(n1, t0 + kKeyChunk);
      int64_t r = 0;
      for (; kTileRows == 2 && r + 2 <= nr; r += 2) {
        const int64_t e0 = std::min(t1, len[r]), e1 = std::min(t1, len[r + 1]), e = std::min(e0, e1);
        fn(std::integral_constant<int, 2>{}, r, t0, e);
        fn(std::integral_constant<int, 1>{}, r, std::max(t0, e), e0);
        fn(std::integral_constant<int, 1>{}, r + 1, std::max(t0, e), e1);
      }
      for (; r < nr; ++r) fn(std::integral_constant<int, 1>{}, r, t0, std::min(t1, len[r]));
    }
  };
  sweep([&](auto rows, int64_t r, int64_t t0, int64_t t1) {
    if (t0 < t1) score_tile<decltype(rows)::value>(q.data() + r, k, kvd, t0, t1, hd, scale, s.data() + r);
  });
  for (int64_t r = 0; r < nr; ++r) {
    softmax(s[r], len[r]);
    std::fill(out[r], out[r] + hd, 0.0f);
  }
  sweep([&](auto rows, int64_t r, int64_t t0, int64_t t1) {
    if (t0 < t1) value_tile<decltype(rows)::value>(s.data() + r, v, kvd, t0, t1, hd, out.data() + r);
  });
}

}  // namespace
}  // namespace bitnet
