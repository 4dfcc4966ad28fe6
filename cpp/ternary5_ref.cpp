// ternary5_ref.cpp: portable reference pack, unpack and int8 x ternary product for the 1.6-bit format.
//
// Plain C++ at the baseline instruction set: the oracle the AVX2 kernel (ternary5_avx2.cpp) is tested
// against, and the fallback on CPUs without AVX2. It decodes a byte the obvious way, with integer
// division (v = floor(243 q / 256), then base-3 digits), not with the chain of multiplies of
// the SIMD kernel, so a shared mistake is unlikely. The layout is in ternary5.h.
#include <algorithm>
#include <array>

#include "ternary5.h"

namespace bitnet {
namespace {

// The five codes of every byte, or {-1, ...} for the 13 bytes no v encodes.
struct Decode5 {
  std::array<std::array<int8_t, 5>, 256> codes{};
  Decode5() {
    for (int q = 0; q < 256; ++q) {
      const int v = q * 243 / 256;  // q = ceil(256 v / 243) => 243 q / 256 in [v, v + 1)
      const bool valid = (v * 256 + 242) / 243 == q;
      for (int i = 0; i < 5; ++i) {
        int p = 1;
        for (int e = 0; e < 4 - i; ++e) p *= 3;
        codes[q][i] = valid ? static_cast<int8_t>(v / p % 3) : int8_t{-1};
      }
    }
  }
};

const Decode5& decode5() {
  static const Decode5 d;
  return d;
}

}  // namespace

int64_t pack5_ref(const int8_t* codes, int64_t n, int64_t k, uint8_t* out) {
  const int64_t stride = t5_row_stride_bytes(k);
  for (int64_t r = 0; r < n; ++r) {
    const int8_t* src = codes + r * k;
    uint8_t* dst = out + r * stride;
    for (int64_t blk = 0; blk < t5_blocks_per_row(k); ++blk)
      for (int64_t j = 0; j < kT5BlockBytes; ++j) {
        int c[5];
        for (int i = 0; i < 5; ++i) {
          const int64_t col = blk * kT5BlockWeights + 32 * i + j;
          const int w = col < k ? src[col] : 0;  // padding: weight 0
          if (w < -1 || w > 1) return r * k + col;
          c[i] = w + 1;
        }
        dst[blk * kT5BlockBytes + j] = t5_encode(c[0], c[1], c[2], c[3], c[4]);
      }
  }
  return -1;
}

int64_t unpack5_ref(const uint8_t* packed, int64_t n, int64_t k, int8_t* out) {
  const Decode5& d = decode5();
  const int64_t stride = t5_row_stride_bytes(k);
  const int64_t kpad = t5_blocks_per_row(k) * kT5BlockWeights;
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* src = packed + r * stride;
    for (int64_t c = 0; c < kpad; ++c) {
      const int64_t blk = c / kT5BlockWeights, e = c % kT5BlockWeights;
      const int code = d.codes[src[blk * kT5BlockBytes + e % 32]][e / 32];
      if (c < k) {
        if (code < 0) return r * kpad + c;
        out[r * k + c] = static_cast<int8_t>(code - 1);
      } else if (code != 1) {
        return r * kpad + c;
      }
    }
  }
  return -1;
}

void rows5_ref(const KernelArgs& a, int64_t n0, int64_t n1) {
  const Decode5& d = decode5();
  const int64_t stride = t5_row_stride_bytes(a.k);
  for (int64_t r = n0; r < n1; ++r) {
    const uint8_t* wrow = a.w + r * stride;
    for (int64_t m = 0; m < a.m; ++m) {
      const int8_t* x = a.x + m * a.k;
      int32_t acc = 0;  // |acc| <= 128 * K <= 2^29 (K <= kMaxK)
      for (int64_t c = 0; c < a.k; ++c) {
        const int64_t blk = c / kT5BlockWeights, e = c % kT5BlockWeights;
        const int code = d.codes[wrow[blk * kT5BlockBytes + e % 32]][e / 32];
        acc += (code - 1) * x[c];  // an invalid byte (code -1) gives garbage, never a crash
      }
      a.y[m * a.n + r] = acc;
    }
  }
}

}  // namespace bitnet
