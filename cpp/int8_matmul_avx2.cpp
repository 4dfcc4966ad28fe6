// int8_matmul_avx2.cpp: the AVX2 int8 x int8 row kernel of int8_matmul.h (compiled with -mavx2 -mfma only).
//
// Per 32 weights: one 32-byte load, two sign extensions to int16 (vpmovsxbw), two vpmaddwd against the
// activations already widened to int16, two int32 adds. Both operands in int16 keep every int8 value exact
// (-128 * -128 included; the vpmaddubsw sign trick would overflow there). Memory-bound at head sizes, so the
// GEMV's tiles read four rows far apart (four streams, below); the GEMM (several activation rows: a batch, a
// prompt's logits) widens each weight once for four activation rows and takes the rows in L2-sized chunks, so the
// head is read from memory once per call, not once per activation row. Not the oracle: int8_rows_ref is.
#include "int8_matmul.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>

namespace bitnet {
namespace {

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline __m256i dot32(const int8_t* w, const int16_t* x, __m256i acc) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(b));
  const __m256i hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(b, 1));
  acc = _mm256_add_epi32(acc, _mm256_madd_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16))));
}

// Rows r + i * step (i < RT) against one activation row. With step 1 the RT rows are RT * k contiguous bytes and
// consecutive tiles are contiguous too: one read stream, which each step prefetches RT * 32 bytes kPrefetch
// ahead of the tile's start (the rate at which the tile consumes its own). With rows spread a quarter of the
// range apart, the tile reads four streams at once and the hardware prefetchers follow them on their own.
constexpr int64_t kPrefetch = 16384;

template <int RT, bool kAdjacent>
inline void rows_tile(const int16_t* x, const int8_t* w, int32_t* y, int64_t k, int64_t r, int64_t step) {
  const int64_t kv = k / 32 * 32;
  __m256i acc[RT];
  for (int i = 0; i < RT; ++i) acc[i] = _mm256_setzero_si256();
  const int8_t* pf = w + r * k + kPrefetch;
  for (int64_t c = 0; c < kv; c += 32) {
    if (kAdjacent)
      for (int i = 0; i < RT * 32; i += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + c * RT + i), _MM_HINT_T0);
    for (int i = 0; i < RT; ++i) acc[i] = dot32(w + (r + i * step) * k + c, x + c, acc[i]);
  }
  for (int i = 0; i < RT; ++i) {
    int32_t s = hsum(acc[i]);
    const int8_t* wr = w + (r + i * step) * k;
    for (int64_t c = kv; c < k; ++c) s += int32_t{wr[c]} * int32_t{x[c]};
    y[r + i * step] = s;
  }
}

// GEMM (M > 1): one weight row against MT activation rows, each 32 weights widened once for all of them.
template <int MT>
inline void gemm_tile(const int16_t* const* x, const int8_t* w, int64_t k, int32_t* const* y, int64_t r) {
  const int64_t kv = k / 32 * 32;
  __m256i acc[MT];
  for (int i = 0; i < MT; ++i) acc[i] = _mm256_setzero_si256();
  for (int64_t c = 0; c < kv; c += 32) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c));
    const __m256i lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(b));
    const __m256i hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(b, 1));
    for (int i = 0; i < MT; ++i) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i] + c));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i] + c + 16));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1)));
    }
  }
  for (int i = 0; i < MT; ++i) {
    int32_t s = hsum(acc[i]);
    for (int64_t c = kv; c < k; ++c) s += int32_t{w[c]} * int32_t{x[i][c]};
    y[i][r] = s;
  }
}

// Rows of about this many weight bytes (L2-resident) go through every activation row before the next rows.
constexpr int64_t kGemmChunkBytes = 128 * 1024;

template <int MT>
void gemm_rows(const int16_t* xw, const int8_t* w, int32_t* y, int64_t m0, int64_t n, int64_t k, int64_t r0,
               int64_t r1) {
  const int16_t* x[MT];
  int32_t* yr[MT];
  for (int i = 0; i < MT; ++i) x[i] = xw + (m0 + i) * k, yr[i] = y + (m0 + i) * n;
  for (int64_t r = r0; r < r1; ++r) gemm_tile<MT>(x, w + r * k, k, yr, r);
}

}  // namespace

void int8_rows_avx2(const int16_t* xw, const int8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, int64_t n0,
                    int64_t n1) {
  if (m > 1) {  // GEMM: each chunk of weight rows is read from memory once for all m activation rows
    const int64_t chunk = std::max<int64_t>(1, kGemmChunkBytes / std::max<int64_t>(k, 1));
    for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
      const int64_t c1 = std::min(n1, c0 + chunk);
      int64_t i = 0;
      for (; i + 4 <= m; i += 4) gemm_rows<4>(xw, w, y, i, n, k, c0, c1);
      for (; i < m; ++i) gemm_rows<1>(xw, w, y, i, n, k, c0, c1);
    }
    return;
  }
  const int16_t* x = xw;
  // GEMV: tiles of four rows a quarter of [n0, n1) apart (four read streams: one core streams faster from four
  // than from one, see ternary_avx2_asm.cpp), then the 0-3 rows left over.
  const int64_t q = (n1 - n0) / 4;
  for (int64_t t = 0; t < q; ++t) rows_tile<4, false>(x, w, y, k, n0 + t, q);
  for (int64_t r = n0 + 4 * q; r < n1; ++r) rows_tile<1, true>(x, w, y, k, r, 1);
}

}  // namespace bitnet

#endif  // x86-64
