// ternary.h: the packed ternary weight format and the int8 x ternary kernels of bitnet_ref.
//
// This header is the one place the packed format is written down. It declares the portable
// reference kernels (ternary_ref.cpp), the SIMD row kernels (ternary_avx2.cpp, ternary_avx512.cpp,
// ternary_neon*.cpp), and the dispatcher (dispatch.cpp) that picks one at run time and splits rows across threads.
// It is not a general quantization library: no scales, no float math. The one other bit width, the
// 1.6-bit format (five weights per byte), is written down in ternary5.h. The
// benchmark-only code (bitnet_ref._bench) is declared apart, in bench/bench.h.
//
// ---------------------------------------------------------------------------------------------
// Packed format (2 bits per weight, ggml TQ2_0 bit order, no scale)
//
//   weight w in {-1, 0, +1}  ->  code c = w + 1 in {0, 1, 2}   (code 3 is invalid)
//
//   * Row-major: row n of the (N, K) weight matrix starts at byte n * row_stride_bytes(K).
//   * Each row is split into blocks of kBlockWeights = 128 weights stored in kBlockBytes = 32 bytes.
//     The last block of a row is padded with weight 0 (code 1) up to 128 weights, so
//         row_stride_bytes(K) = ceil(K / 128) * 32   and   packed_nbytes(N, K) = N * row_stride_bytes(K).
//   * Inside a block, byte j (0 <= j < 32) holds
//         element j       in bits 0-1,
//         element j + 32  in bits 2-3,
//         element j + 64  in bits 4-5,
//         element j + 96  in bits 6-7.
//     One 32-byte load therefore unpacks into 32 consecutive weights per 2-bit field with a
//     shift and a mask, which is what the AVX2 and AVX-512 kernels do.
//   * The per-tensor scale (beta) is NOT stored here; the Python runtime layer keeps it.
//
// Product computed by every kernel, exactly, in int32:
//
//   y[m, n] = sum_k x[m, k] * w[n, k],   x int8 in [-128, 127].
//
// The SIMD kernels multiply the unsigned codes by x (maddubs / vpdpbusd) and subtract sum_k x[m, k]
// once per row ("offset trick": sum c*x - sum x = sum (c-1)*x = sum w*x). Padding weights have
// code 1 and the kernels pad x with zeros, so padding contributes nothing.
//
// Exactness bound: |y| <= 128 * K, and the largest intermediate is sum_k c*x >= -256 * K.
// kMaxK = 2^22 keeps every intermediate far inside int32 (256 * 2^22 = 2^30).
// ---------------------------------------------------------------------------------------------
#pragma once

#include <cstddef>
#include <cstdint>

namespace bitnet {

constexpr int64_t kBlockWeights = 128;  // weights per block
constexpr int64_t kBlockBytes = 32;     // bytes per block
constexpr int kBitsPerWeight = 2;
constexpr uint8_t kPadCode = 1;  // code of weight 0, used for padding
constexpr int64_t kMaxK = int64_t{1} << 22;
static_assert(kBlockWeights * kBitsPerWeight == kBlockBytes * 8, "a block is 128 2-bit weights in 32 bytes");
static_assert(kBlockWeights == 4 * kBlockBytes, "byte j of a block holds elements j, j+32, j+64, j+96");
static_assert(256 * kMaxK <= (int64_t{1} << 30),
              "sum_k c*x (and its x4-scaled SIMD partial sums, spread over >= 8 lanes) fits int32");

constexpr int64_t blocks_per_row(int64_t k) { return (k + kBlockWeights - 1) / kBlockWeights; }
constexpr int64_t row_stride_bytes(int64_t k) { return blocks_per_row(k) * kBlockBytes; }
constexpr int64_t packed_nbytes(int64_t n, int64_t k) { return n * row_stride_bytes(k); }

static_assert(row_stride_bytes(1) == 32 && row_stride_bytes(128) == 32 && row_stride_bytes(129) == 64, "");

// How far ahead (bytes) the AVX-512 assembly GEMV prefetches weights (its tiles are adjacent rows, one
// read stream): rows are 0.25-3 KB, too short for the hardware prefetcher to ramp up on each, so it
// fetches eight rows ahead at the rate it consumes its own, and at least 8 KB so short rows still keep
// enough DRAM requests in flight (docs/kernels.md, "Why the hot loops are written as they are"). The AVX2 assembly GEMV
// reads four streams instead and needs no software prefetch (ternary_avx2_asm.cpp).
constexpr int64_t gemv_prefetch_bytes(int64_t k) {
  return 8 * row_stride_bytes(k) > 8192 ? 8 * row_stride_bytes(k) : 8192;
}

// ---- portable reference (ternary_ref.cpp) ----------------------------------------------------

// Packs codes (N, K) int8 in {-1, 0, 1}, row-major, into out[packed_nbytes(n, k)].
// Returns -1 on success, or the flat index of the first value outside {-1, 0, 1} (out is then
// partially written and must be discarded).
int64_t pack_ref(const int8_t* codes, int64_t n, int64_t k, uint8_t* out);

// Unpacks into out (N, K) int8. Returns -1 on success, or the flat index (row * K_padded + col)
// of the first invalid 2-bit field: code 3 anywhere, or a padding field that is not code 1.
int64_t unpack_ref(const uint8_t* packed, int64_t n, int64_t k, int8_t* out);

// ---- activation quantization (ternary_ref.cpp) ---------------------------------------------------
//
// Per-row absmax int8 quantization, bit for bit what bitnet_ref.quant.act_quant computes on float32
// with torch (2.13), for each row x of length k:
//   s     = max(max_k |x[k]|, 1e-5f)
//   inv   = (1.0f / s) * 127.0f          (torch evaluates 127 / s as reciprocal(s) * 127: two roundings)
//   q[k]  = clamp(round_half_even(x[k] * inv), -128, 127)
//   gamma = s / 127.0f
// All in float32, no FMA contraction. Since |x[k]| <= s, |x[k] * inv| <= 127 * (1 + 2^-22).
constexpr float kActEps = 1e-5f;
constexpr float kActQmax = 127.0f;

// Quantizes x (m, k) row-major into q (m, k) and gamma (m). Reads all of x first: returns -1 on
// success, or the flat index of the first NaN/inf in x, in which case q is not written (gamma may be).
int64_t act_quant_rows(const float* x, int64_t m, int64_t k, int8_t* q, float* gamma);
// The same arithmetic written the obvious way (std::nearbyint, no bit tricks); the CTest oracle for
// act_quant_rows. x must be finite.
void act_quant_rows_naive(const float* x, int64_t m, int64_t k, int8_t* q, float* gamma);

// ---- kernels -----------------------------------------------------------------------------------

// Everything a row kernel needs. The dispatcher fills it once per call.
struct KernelArgs {
  const int8_t* x = nullptr;      // (m, k) activations as given, row stride k (reference kernel)
  const int8_t* xp = nullptr;     // (m, xp_stride) zero-padded activations in the layout the SIMD kernel wants
  int64_t xp_stride = 0;          // bytes per row of xp (multiple of 64)
  const int32_t* xsum = nullptr;  // (m) sum_k x[m, k]
  const uint8_t* w = nullptr;     // packed weights, row stride row_stride_bytes(k)
  int32_t* y = nullptr;           // (m, n) output, row stride n
  int64_t m = 0, n = 0, k = 0;
  // The AVX2 assembly GEMV's row order: false (always, outside benchmarks) = the four rows of a tile a
  // quarter of the range apart (four read streams), true = adjacent rows (one stream), the order it had
  // before and the benchmark's baseline. Same result either way.
  bool gemv_adjacent = false;
};

// A row kernel computes y[:, n0:n1] for all m.
using RowKernel = void (*)(const KernelArgs& a, int64_t n0, int64_t n1);

// Portable reference: reads a.x, decodes each weight as code - 1. The oracle for the others.
void rows_ref(const KernelArgs& a, int64_t n0, int64_t n1);
// AVX2 (maddubs): a.xp in natural order, padded to a multiple of 128 with zeros.
void rows_avx2(const KernelArgs& a, int64_t n0, int64_t n1);
// AVX-512 VNNI (vpdpbusd): a.xp permuted per 256 weights (see ternary_avx512.cpp), padded to 256.
void rows_avx512vnni(const KernelArgs& a, int64_t n0, int64_t n1);
// AArch64 NEON, ARMv8.0 (smlal) and ARMv8.2 dot product (sdot): a.xp as for AVX2 (ternary_neon*.cpp).
void rows_neon(const KernelArgs& a, int64_t n0, int64_t n1);
void rows_neon_dotprod(const KernelArgs& a, int64_t n0, int64_t n1);
// The inline-assembly loops (ternary_avx2_asm.cpp, ternary_avx512_asm.cpp; built when
// BITNET_HAVE_AVX2_ASM / BITNET_HAVE_AVX512_ASM): the M = 1 rows from r0 in whole tiles of four rows
// (AVX2: a quarter of the range apart, see ternary_avx2_asm.cpp; AVX-512: adjacent), and the AVX-512 GEMM
// for activation rows m0 .. m0+7 in pairs of weight rows. Each returns the first row it did not compute;
// the callers finish the rest with the intrinsic tiles.
int64_t gemv_rows_avx2_asm(const KernelArgs& a, int64_t r0, int64_t r1);
int64_t gemv_rows_avx512vnni_asm(const KernelArgs& a, int64_t r0, int64_t r1);
int64_t gemm_rows_avx512vnni_asm(const KernelArgs& a, int64_t r0, int64_t r1, int64_t m0);
// Writes the AVX-512 activation layout for one row: out has round_up(k, 256) bytes.
void permute_x_avx512(const int8_t* x, int64_t k, int8_t* out);

// ---- dispatcher (dispatch.cpp) -----------------------------------------------------------------

enum class Backend { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kNeon = 3, kNeonDotprod = 4 };
constexpr Backend kAllBackends[] = {Backend::kScalar, Backend::kAvx2, Backend::kAvx512Vnni, Backend::kNeon,
                                    Backend::kNeonDotprod};

const char* backend_name(Backend b);
bool cpu_has_avx2();          // AVX2 + FMA present and this build contains the AVX2 kernel
bool cpu_has_avx512vnni();    // AVX-512 F/BW/VL/VNNI present and this build contains the kernel
bool cpu_has_neon();          // AArch64 (NEON is part of its base ISA) and this build contains the kernel
bool cpu_has_neon_dotprod();  // the ARMv8.2 dot product present and this build contains the kernel
bool backend_supported(Backend b);
// Best supported backend, or kScalar when BITNET_REF_FORCE_SCALAR=1 (read once, at first use).
Backend default_backend();

// Threads used when a call passes threads <= 0. Starts at 1 (see dispatch.cpp for why).
void set_default_threads(int threads);
int default_threads();
int hardware_threads();

// y (m, n) = x (m, k) . w^T, exact. Arguments must already be validated (sizes, k <= kMaxK).
// threads <= 0 uses default_threads(). Safe to call from several threads at once.
// gemv_adjacent: KernelArgs::gemv_adjacent (benchmarks only).
void matmul(const int8_t* x, const uint8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, Backend backend,
            int threads, bool gemv_adjacent = false);

// The packed formats: this header's 2-bit one, and the 1.6-bit one of ternary5.h (w then holds that format).
enum class PackedFormat { k2Bit = 0, k1_6Bit = 1 };

// Fused BitLinear core: y (m, n) float32 = float(q . w^T) * (gamma[row] * beta), where (q, gamma) =
// act_quant_rows(x) and the int32 product is exact (as matmul). gamma * beta is one float32 multiply,
// then one more with the converted accumulator: the order of quant.fake_quant_linear and
// bitnet_ref/runtime/packed.py. Returns -1, or the flat index of the first non-finite x (y not written).
int64_t quant_matmul(const float* x, const uint8_t* w, float* y, int64_t m, int64_t n, int64_t k, float beta,
                     Backend backend, int threads, PackedFormat format = PackedFormat::k2Bit);

}  // namespace bitnet
