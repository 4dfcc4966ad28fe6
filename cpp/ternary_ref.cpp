// ternary_ref.cpp: portable reference pack, unpack, int8 x ternary product, and the per-row int8
// activation quantizer (act_quant_rows, used by the fused quant_matmul, with its naive twin).
//
// Plain C++ at the baseline instruction set. It is the oracle the SIMD kernels are tested
// against and the fallback on CPUs without AVX2 (ARM, old x86). Written for clarity first:
// the product decodes each weight as (code - 1) and multiplies, without the offset trick the
// SIMD kernels use, so the two are computed differently and a shared mistake is unlikely.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ternary.h"

namespace bitnet {

int64_t pack_ref(const int8_t* codes, int64_t n, int64_t k, uint8_t* out) {
  const int64_t stride = row_stride_bytes(k);
  for (int64_t r = 0; r < n; ++r) {
    const int8_t* src = codes + r * k;
    uint8_t* dst = out + r * stride;
    for (int64_t b = 0; b < stride; ++b) dst[b] = 0x55;  // four padding codes (1) per byte
    for (int64_t c = 0; c < k; ++c) {
      const int8_t w = src[c];
      if (w < -1 || w > 1) return r * k + c;
      const int64_t blk = c / kBlockWeights, e = c % kBlockWeights;
      const int shift = 2 * static_cast<int>(e / 32);
      uint8_t& byte = dst[blk * kBlockBytes + e % 32];
      byte = static_cast<uint8_t>((byte & ~(3u << shift)) | (static_cast<unsigned>(w + 1) << shift));
    }
  }
  return -1;
}

int64_t unpack_ref(const uint8_t* packed, int64_t n, int64_t k, int8_t* out) {
  const int64_t stride = row_stride_bytes(k);
  const int64_t kpad = blocks_per_row(k) * kBlockWeights;
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* src = packed + r * stride;
    for (int64_t c = 0; c < kpad; ++c) {
      const int64_t blk = c / kBlockWeights, e = c % kBlockWeights;
      const unsigned code = (src[blk * kBlockBytes + e % 32] >> (2 * (e / 32))) & 3u;
      if (c < k) {
        if (code == 3) return r * kpad + c;
        out[r * k + c] = static_cast<int8_t>(static_cast<int>(code) - 1);
      } else if (code != kPadCode) {
        return r * kpad + c;
      }
    }
  }
  return -1;
}

void rows_ref(const KernelArgs& a, int64_t n0, int64_t n1) {
  const int64_t stride = row_stride_bytes(a.k);
  for (int64_t r = n0; r < n1; ++r) {
    const uint8_t* wrow = a.w + r * stride;
    for (int64_t m = 0; m < a.m; ++m) {
      const int8_t* x = a.x + m * a.k;
      int32_t acc = 0;  // |acc| <= 128 * K <= 2^29 (K <= kMaxK)
      for (int64_t blk = 0; blk * kBlockWeights < a.k; ++blk) {
        const uint8_t* wb = wrow + blk * kBlockBytes;
        const int8_t* xb = x + blk * kBlockWeights;
        const int64_t len = std::min<int64_t>(kBlockWeights, a.k - blk * kBlockWeights);
        if (len == kBlockWeights) {
          for (int j = 0; j < 32; ++j) {
            const int b = wb[j];
            acc += ((b & 3) - 1) * xb[j] + (((b >> 2) & 3) - 1) * xb[j + 32] + (((b >> 4) & 3) - 1) * xb[j + 64] +
                   (((b >> 6) & 3) - 1) * xb[j + 96];
          }
        } else {
          for (int64_t e = 0; e < len; ++e) {
            const int code = (wb[e % 32] >> (2 * (e / 32))) & 3;
            acc += (code - 1) * xb[e];
          }
        }
      }
      a.y[m * a.n + r] = acc;
    }
  }
}

// ---- activation quantization ------------------------------------------------------------------

namespace {

// Round to nearest, ties to even, for |v| <= 2^22: adding 1.5 * 2^23 moves v into [2^23, 2^24),
// where the float spacing is exactly 1, so the addition itself rounds (in the default
// round-to-nearest-even mode), and the subtraction is exact. The caller has clamped v to
// [-128, 127] first, which also keeps the compiler from fusing x * inv + magic into an FMA.
inline float round_half_even_small(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

inline uint32_t abs_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u & 0x7fffffffu;
}

}  // namespace

int64_t act_quant_rows(const float* x, int64_t m, int64_t k, int8_t* q, float* gamma) {
  // Pass 1, all rows: max |x| as IEEE bits. For non-negative floats the integer order of the bit
  // patterns is the float order, and every NaN/inf has bits >= 0x7f800000, so one integer max
  // finds both the absmax and any non-finite value (and vectorizes without -ffast-math).
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * k;
    uint32_t mx = 0;
    for (int64_t j = 0; j < k; ++j) mx = std::max(mx, abs_bits(row[j]));
    if (mx >= 0x7f800000u) {
      for (int64_t j = 0; j < k; ++j)
        if (abs_bits(row[j]) >= 0x7f800000u) return i * k + j;
    }
    float a;
    std::memcpy(&a, &mx, sizeof a);
    gamma[i] = a;  // absmax for now
  }
  // Pass 2: quantize.
  for (int64_t i = 0; i < m; ++i) {
    const float s = std::max(gamma[i], kActEps);
    const float inv = (1.0f / s) * kActQmax;
    const float* row = x + i * k;
    int8_t* out = q + i * k;
    for (int64_t j = 0; j < k; ++j) {
      const float v = std::min(std::max(row[j] * inv, -128.0f), 127.0f);
      out[j] = static_cast<int8_t>(static_cast<int>(round_half_even_small(v)));
    }
    gamma[i] = s / kActQmax;
  }
  return -1;
}

void act_quant_rows_naive(const float* x, int64_t m, int64_t k, int8_t* q, float* gamma) {
  for (int64_t i = 0; i < m; ++i) {
    float s = 0.0f;
    for (int64_t j = 0; j < k; ++j) s = std::max(s, std::fabs(x[i * k + j]));
    s = std::max(s, kActEps);
    volatile float inv = 1.0f / s;  // volatile: keep the two roundings separate, as torch does
    const float scale = inv * kActQmax;
    for (int64_t j = 0; j < k; ++j) {
      volatile float v = x[i * k + j] * scale;
      const float r = std::nearbyint(v);  // default rounding mode: half to even
      q[i * k + j] = static_cast<int8_t>(std::min(std::max(r, -128.0f), 127.0f));
    }
    gamma[i] = s / kActQmax;
  }
}

}  // namespace bitnet
