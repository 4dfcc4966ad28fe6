// vector_math.h: elementwise float functions of the fused forward written so that GCC vectorises the loops calling
// them at the baseline instruction set (it leaves float selects, std::min / std::max and calls to expf as scalar
// code, and a call to expf per element cost about as much as all the other float work of a prompt): relu and
// clamp as masks on the bits, exp in straight-line arithmetic (softmax in attention_kernel.h, SiLU in
// decode_step.cpp).
//
// fast_exp: Cody-Waite reduction x = n ln2 + r (|r| <= ln2 / 2, ln2 split in a high part with zero low bits and a low
// part, so n * ln2_hi is exact), the Cephes library's expf polynomial for exp(r) (1 + r + r^2 p(r), p of degree 5),
// and 2^n built in the exponent bits. Within 1 ulp of std::exp for x in [-87, 88] (CTest checks it there); x is
// clamped to it first, so the result is always finite and normal (exp(-87) ~ 1.6e-38 where std::exp gives values
// down to 0: nothing the softmax sums or the SiLU quotient can see). Not for general use: no NaN handling (the
// callers' inputs are finite: the fused forward stops at the first non-finite activation before any exp).
#pragma once

#include <cstdint>
#include <cstring>

namespace bitnet {

inline float from_bits(uint32_t b) {
  float r;
  std::memcpy(&r, &b, sizeof r);
  return r;
}

inline uint32_t to_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// max(x, 0) (and +0 for -0): x where x > 0, else 0
inline float relu(float x) { return from_bits(to_bits(x) & (0u - static_cast<uint32_t>(x > 0.0f))); }

// x clamped to [lo, hi]
inline float clamp(float x, float lo, float hi) {
  const uint32_t below = 0u - static_cast<uint32_t>(x < lo), above = 0u - static_cast<uint32_t>(x > hi);
  return from_bits((to_bits(x) & ~(below | above)) | (to_bits(lo) & below) | (to_bits(hi) & above));
}

inline float fast_exp(float x) {
  x = clamp(x, -87.0f, 88.0f);
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 355 / 512: n * kLn2Hi is exact for |n| <= 2^15
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (ternary_ref.cpp)
  const float n = (x * kLog2e + kMagic) - kMagic;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  const float z = r * r;
  float p = 1.9875691500e-4f;  // Cephes expf's polynomial: exp(r) ~ 1 + r + r^2 p(r)
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * z + r) + 1.0f;
  const auto scale = from_bits(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);  // 2^n, n in [-126, 127]
  return p * scale;
}

}  // namespace bitnet
