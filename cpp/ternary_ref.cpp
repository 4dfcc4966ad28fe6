// ternary_ref.cpp: portable reference pack, unpack and int8 x ternary product.
//
// Plain C++ at the baseline instruction set. It is the oracle the SIMD kernels are tested
// against and the fallback on CPUs without AVX2 (ARM, old x86). Written for clarity first:
// the product decodes each weight as (code - 1) and multiplies, without the offset trick the
// SIMD kernels use, so the two are computed differently and a shared mistake is unlikely.
#include <algorithm>

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
            acc += ((b & 3) - 1) * xb[j] + (((b >> 2) & 3) - 1) * xb[j + 32] +
                   (((b >> 4) & 3) - 1) * xb[j + 64] + (((b >> 6) & 3) - 1) * xb[j + 96];
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

}  // namespace bitnet
