// test_ternary.cpp: C++ tests for the packed format and every kernel path (run by CTest).
//
// Checks, for exact equality: the documented bit layout on a hand-made block; pack -> unpack round
// trips; corrupt buffers and bad codes are reported; and every kernel the CPU supports (scalar
// reference, AVX2, AVX-512 VNNI), single- and multi-threaded, against an int64 product computed
// straight from the unpacked codes, over many shapes (K = 1, K off the 128 block, K large, M > 1)
// and the overflow corners (x = -128 or 127 everywhere with all -1 / 0 / +1 weights). Also the
// float activation quantizer (bit tricks vs std::nearbyint) and the fused quant_matmul, bit for bit.
// Prints a summary and exits non-zero on any failure. Needs no Python.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench.h"
#include "ternary.h"
#include "test_support.h"

namespace {

std::mt19937_64 rng(12345);

std::vector<int8_t> random_codes(int64_t n, int64_t k) {
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> c(static_cast<size_t>(n * k));
  for (auto& v : c) v = static_cast<int8_t>(d(rng));
  return c;
}

std::vector<int8_t> random_x(int64_t m, int64_t k) {
  std::uniform_int_distribution<int> d(-128, 127);
  std::vector<int8_t> x(static_cast<size_t>(m * k));
  for (auto& v : x) v = static_cast<int8_t>(d(rng));
  return x;
}

std::vector<uint8_t> pack(const std::vector<int8_t>& codes, int64_t n, int64_t k) {
  std::vector<uint8_t> p(static_cast<size_t>(bitnet::packed_nbytes(n, k)));
  const int64_t bad = bitnet::pack_ref(codes.data(), n, k, p.data());
  check(bad == -1, "pack_ref accepted valid codes");
  return p;
}

// Runs every backend at the given thread counts and compares with the oracle.
// At M = 1 also with the AVX2 assembly GEMV's other row order (KernelArgs::gemv_adjacent, the benchmark's
// baseline), which only that kernel reads.
void check_matmul(const std::vector<int8_t>& x, const std::vector<int8_t>& codes, int64_t m, int64_t n, int64_t k,
                  const std::string& label, std::initializer_list<int> threads = {1}) {
  const auto packed = pack(codes, n, k);
  check_matmul_with([](auto... args) { bitnet::matmul(args...); }, packed, x, codes, m, n, k, label, threads);
  if (m == 1)
    check_matmul_with([](auto... args) { bitnet::matmul(args..., true); }, packed, x, codes, m, n, k,
                      label + " adjacent", threads);
}

void test_layout() {
  // Element 0 = +1 (code 2), 32 = -1 (code 0), 64 = +1 (code 2), 96 = 0 (code 1) -> byte 0 is
  // 2 | 0 << 2 | 2 << 4 | 1 << 6 = 0x62; element 129 (block 1, byte 1, bits 0-1) = -1.
  const int64_t k = 130;
  std::vector<int8_t> codes(k, 0);
  codes[0] = 1, codes[32] = -1, codes[64] = 1, codes[129] = -1;
  const auto p = pack(codes, 1, k);
  check(p.size() == 64, "row of K=130 takes two 32-byte blocks");
  check(p[0] == 0x62, "byte 0 holds elements 0, 32, 64, 96 at bits 0-1, 2-3, 4-5, 6-7");
  check(p[1] == 0x55, "an all-zero byte is four code-1 fields");
  check(p[32 + 1] == 0x54, "element 129 is block 1, byte 1, bits 0-1; the rest of that byte is padding");
  check(p[32 + 2] == 0x55, "padding bytes are code 1");
}

void test_roundtrip() {
  for (int64_t k : {1, 2, 31, 32, 33, 64, 96, 127, 128, 129, 200, 255, 256, 257, 1000})
    for (int64_t n : {1, 2, 3, 7}) {
      const auto codes = random_codes(n, k);
      const auto p = pack(codes, n, k);
      check(static_cast<int64_t>(p.size()) == n * ((k + 127) / 128) * 32, "packed size " + shape(1, n, k));
      std::vector<int8_t> back(codes.size(), 99);
      const int64_t bad = bitnet::unpack_ref(p.data(), n, k, back.data());
      check(bad == -1 && back == codes, "pack/unpack round trip " + shape(1, n, k));
    }
}

void test_bad_input() {
  std::vector<int8_t> codes = random_codes(3, 50);
  codes[2 * 50 + 7] = 2;
  std::vector<uint8_t> p(static_cast<size_t>(bitnet::packed_nbytes(3, 50)));
  check(bitnet::pack_ref(codes.data(), 3, 50, p.data()) == 2 * 50 + 7, "pack_ref reports the first bad code");
  codes[2 * 50 + 7] = -128;
  check(bitnet::pack_ref(codes.data(), 3, 50, p.data()) == 2 * 50 + 7, "pack_ref rejects -128");

  const auto good = pack(random_codes(2, 40), 2, 40);
  std::vector<int8_t> out(80);
  auto corrupt = good;
  corrupt[32 + 5] |= 0x03;  // row 1, element 5 -> code 3
  check(bitnet::unpack_ref(corrupt.data(), 2, 40, out.data()) == 128 + 5, "unpack_ref reports code 3");
  corrupt = good;
  corrupt[10] = static_cast<uint8_t>((corrupt[10] & ~0x30) | 0x20);  // row 0, element 74: padding, code 2
  check(bitnet::unpack_ref(corrupt.data(), 2, 40, out.data()) == 74, "unpack_ref reports bad padding");
}

void test_matmul_shapes() {
  // K picks every case of the GEMV loops: 256-weight steps 0-3 (odd and even), a trailing 128-block or not.
  const int64_t ks[] = {1,   2,   3,   31,  32,  33,  63,  64,  65,  127,  128,  129, 130,
                        255, 256, 257, 383, 384, 385, 512, 700, 850, 1000, 4096, 4100};
  // N: the AVX2 GEMV's four-row tiles (1, 2, 4 of them) with 0-3 rows left over, and fewer rows than a tile
  const int64_t ns[] = {1, 2, 3, 4, 5, 7, 9, 11, 17};
  const int64_t ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17};
  for (int64_t k : ks)
    for (int64_t n : ns)
      for (int64_t m : ms) {
        if (k >= 1000 && (n > 5 || m > 5) && !(m == 1 && n == 11)) continue;  // keep the run short
        check_matmul(random_x(m, k), random_codes(n, k), m, n, k, "random");
      }
  // Large K, and enough work to go multi-threaded (M*N*K >= 2^21).
  check_matmul(random_x(1, 11008), random_codes(260, 11008), 1, 260, 11008, "random large", {1, 2, 3});
  check_matmul(random_x(8, 4096), random_codes(70, 4096), 8, 70, 4096, "random gemm", {1, 2, 4});
  // K beyond 16 steps: the AVX-512 GEMM cuts K into slices (even and odd block counts)
  check_matmul(random_x(16, 11008), random_codes(21, 11008), 16, 21, 11008, "random gemm sliced", {1, 2});
  check_matmul(random_x(9, 8320), random_codes(6, 8320), 9, 6, 8320, "random gemm sliced odd", {1});
  check_matmul(random_x(3, 20000), random_codes(37, 20000), 3, 37, 20000, "random K=20000", {1, 2});
  check_matmul(random_x(64, 300), random_codes(130, 300), 64, 130, 300, "random M=64", {1, 3});
}

void test_empty_shapes() {
  // K = 0: every sum is empty, on every path, for M = 1 (GEMV) and M > 1 (GEMM).
  for (int64_t m : {1, 3, 9}) check_matmul(std::vector<int8_t>(), std::vector<int8_t>(), m, 4, 0, "empty K");
  // M = 0 or N = 0: nothing to compute, nothing written out of bounds.
  check_matmul(std::vector<int8_t>(), random_codes(3, 10), 0, 3, 10, "empty M");
  check_matmul(random_x(2, 10), std::vector<int8_t>(), 2, 0, 10, "empty N");
}

void test_overflow_corners() {
  for (int64_t k : {1, 128, 129, 1024, 2047, 4096, 11008, 20000})
    for (int wv : {-1, 0, 1})
      for (int xv : {-128, 127})
        for (int64_t m : {1, 2, 8}) {  // M = 1: the GEMV loops (row tiles + a leftover row); 2, 8: the GEMM tiles
          const int64_t n = 5;
          std::vector<int8_t> codes(static_cast<size_t>(n * k), static_cast<int8_t>(wv));
          std::vector<int8_t> x(static_cast<size_t>(m * k), static_cast<int8_t>(xv));
          check_matmul(x, codes, m, n, k,
                       "corner w=" + std::to_string(wv) + " x=" + std::to_string(xv) + " m=" + std::to_string(m));
        }
  // The largest supported K: |y| = 128 * 2^22 = 2^29. Five rows (+1, -1, +1, -1, +1) so the GEMV
  // tiles of two and four rows and a leftover row all see it.
  const int64_t k = bitnet::kMaxK;
  std::vector<int8_t> codes(static_cast<size_t>(5 * k));
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t c = 0; c < k; ++c) codes[r * k + c] = static_cast<int8_t>(r % 2 == 0 ? 1 : -1);
  std::vector<int8_t> x(static_cast<size_t>(k), -128);
  check_matmul(x, codes, 1, 5, k, "corner K=kMaxK");
}

// Several threads call matmul at once, each asking for a multi-threaded split: one of them gets
// the pool, the others run alone; all must get exact results.
void test_concurrent_callers() {
  const int64_t n = 300, k = 4096, m = 2;
  const auto codes = random_codes(n, k);
  const auto packed = pack(codes, n, k);
  std::vector<std::vector<int8_t>> xs;
  std::vector<std::vector<int64_t>> want;
  for (int i = 0; i < 4; ++i) {
    xs.push_back(random_x(m, k));
    want.push_back(naive(xs.back(), codes, m, n, k));
  }
  std::vector<int> ok(4, 1);
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([&, i] {
      for (int rep = 0; rep < 20; ++rep) {
        std::vector<int32_t> y(static_cast<size_t>(m * n));
        bitnet::matmul(xs[i].data(), packed.data(), y.data(), m, n, k, bitnet::default_backend(), 2 + rep % 3);
        for (size_t j = 0; j < y.size(); ++j)
          if (int64_t{y[j]} != want[i][j]) ok[i] = 0;
      }
    });
  for (auto& t : ts) t.join();
  for (int i = 0; i < 4; ++i) check(ok[i] == 1, "concurrent caller " + std::to_string(i));
}

// act_quant_rows (bit tricks) against act_quant_rows_naive (std::nearbyint), bit for bit, on rows
// that stress the rounding: random scales over 60 decades, exact .5 ties, zeros, -0, subnormals,
// values under the 1e-5 floor, huge values. Then non-finite values are reported at their index.
void test_act_quant() {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> e(-30, 30), half(-1016, 1016);
  std::vector<std::vector<float>> rows;
  for (int r = 0; r < 400; ++r) {
    const int64_t k = 1 + r % 300;
    std::vector<float> x(static_cast<size_t>(k));
    const float scale = std::pow(10.0f, static_cast<float>(e(rng)));
    for (auto& v : x) v = u(rng) * scale;
    rows.push_back(x);
  }
  for (int r = 0; r < 200; ++r) {  // x * inv lands on k + 0.5 often: ties must go to even
    std::vector<float> x(257);
    for (auto& v : x) v = static_cast<float>(half(rng)) / 8.0f;
    x[r % 257] = (r % 2 ? 127.0f : -127.0f);  // absmax 127 -> inv close to 1
    rows.push_back(x);
  }
  rows.push_back(std::vector<float>(100, 0.0f));
  rows.push_back(std::vector<float>(100, -0.0f));
  rows.push_back(std::vector<float>(50, 3e-6f));
  rows.push_back({1e-45f, -1e-40f, 1e-38f, 0.0f});
  rows.push_back({3e38f, -3e38f, 1.0f, -1e30f});
  rows.push_back({1e-5f, -5e-6f, 2.5e-6f});
  for (const auto& x : rows) {
    const int64_t k = static_cast<int64_t>(x.size());
    std::vector<int8_t> q1(x.size()), q2(x.size());
    float g1 = -1, g2 = -2;
    const int64_t bad = bitnet::act_quant_rows(x.data(), 1, k, q1.data(), &g1);
    bitnet::act_quant_rows_naive(x.data(), 1, k, q2.data(), &g2);
    check(bad == -1 && q1 == q2 && std::memcmp(&g1, &g2, sizeof g1) == 0,
          "act_quant_rows equals the naive quantizer, K=" + std::to_string(k) + " x0=" + std::to_string(x[0]));
  }
  // A tie by construction: absmax 127 gives inv = (1/127)*127 = 1 exactly in float32, so 2.5 -> 2, 3.5 -> 4.
  {
    std::vector<float> x = {127.0f, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1.5f};
    std::vector<int8_t> q(x.size());
    float g;
    bitnet::act_quant_rows(x.data(), 1, 7, q.data(), &g);
    check(q == std::vector<int8_t>({127, 2, 4, -2, 0, 0, 2}) && g == 1.0f, "round half to even on exact ties");
  }
  // Non-finite input: the flat index of the first one, in row-major order, and nothing written to q.
  for (float badv : {std::nanf(""), INFINITY, -INFINITY}) {
    std::vector<float> x(3 * 40, 0.5f);
    x[2 * 40 + 7] = badv;
    x[1 * 40 + 39] = badv;
    std::vector<int8_t> q(x.size(), 42);
    std::vector<float> g(3);
    check(bitnet::act_quant_rows(x.data(), 3, 40, q.data(), g.data()) == 79 && q == std::vector<int8_t>(x.size(), 42),
          "act_quant_rows reports the first non-finite value and leaves q alone");
  }
}

// quant_matmul against act_quant_rows_naive + the int64 oracle + the float32 scaling, bit for bit.
void test_quant_matmul() {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct S {
    int64_t m, n, k;
  };
  for (S sh : {S{1, 5, 1}, S{1, 17, 300}, S{3, 9, 129}, S{8, 20, 4096}, S{5, 3, 0}, S{0, 4, 10}, S{2, 260, 2048}}) {
    std::vector<float> x(static_cast<size_t>(sh.m * sh.k));
    for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng) * (i % 7 == 0 ? 40.0f : 1.0f);
    const auto codes = random_codes(sh.n, sh.k);
    const auto packed = pack(codes, sh.n, sh.k);
    std::vector<int8_t> q(x.size());
    std::vector<float> gamma(static_cast<size_t>(sh.m));
    bitnet::act_quant_rows_naive(x.data(), sh.m, sh.k, q.data(), gamma.data());
    const auto acc = naive(q, codes, sh.m, sh.n, sh.k);
    const float beta = 0.0371f;
    std::vector<float> want(static_cast<size_t>(sh.m * sh.n));
    for (int64_t i = 0; i < sh.m; ++i)
      for (int64_t j = 0; j < sh.n; ++j) want[i * sh.n + j] = static_cast<float>(acc[i * sh.n + j]) * (gamma[i] * beta);
    for (Backend b : backends())
      for (int t : {1, 2}) {
        std::vector<float> y(want.size(), -7.0f);
        const int64_t bad = bitnet::quant_matmul(x.data(), packed.data(), y.data(), sh.m, sh.n, sh.k, beta, b, t);
        check(bad == -1 && (y.empty() || std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) == 0),
              "quant_matmul " + shape(sh.m, sh.n, sh.k) + " backend=" + bitnet::backend_name(b) +
                  " threads=" + std::to_string(t));
      }
  }
  std::vector<float> x(2 * 10, 1.0f);
  x[13] = INFINITY;
  const auto packed = pack(random_codes(3, 10), 3, 10);
  std::vector<float> y(6, -7.0f);
  check(bitnet::quant_matmul(x.data(), packed.data(), y.data(), 2, 3, 10, 1.0f, bitnet::default_backend(), 1) == 13 &&
            y == std::vector<float>(6, -7.0f),
        "quant_matmul reports non-finite x and writes nothing");
}

// The bitnet.cpp-style I2_S baseline (bench/i2s_avx2.cpp, benchmark only): equal to the oracle where
// int16 cannot wrap (random activations; any activations for K <= 2048), and wrapping where the
// published loop wraps (K = 4096, +1 weights, x = -128), while our kernels stay exact there.
void test_i2s_baseline() {
#if defined(BITNET_HAVE_AVX2_KERNEL)
  if (!bitnet::cpu_has_avx2()) return;
  auto run_i2s = [](const std::vector<int8_t>& x, const std::vector<int8_t>& codes, int64_t n, int64_t k) {
    const auto ours = pack(codes, n, k);
    std::vector<uint8_t> w(ours.size());
    bitnet::i2s_repack_bench(ours.data(), n, k, w.data());
    std::vector<int32_t> y(static_cast<size_t>(n));
    bitnet::i2s_gemv_bench(w.data(), x.data(), n, k, y.data());
    return y;
  };
  for (int64_t k : {128, 256, 1024, 2048, 4096, 4224, 11008}) {
    const int64_t n = 7;
    const auto x = random_x(1, k);
    const auto codes = random_codes(n, k);
    const auto want = naive(x, codes, 1, n, k);
    const auto y = run_i2s(x, codes, n, k);
    bool ok = true;
    for (int64_t r = 0; r < n; ++r) ok = ok && int64_t{y[r]} == want[r];
    check(ok, "I2_S baseline equals the oracle on random input, K=" + std::to_string(k));
  }
  // K = 2048: 16 blocks per lane, the worst case -32768 still fits int16.
  for (int wv : {-1, 1})
    for (int xv : {-128, 127}) {
      const int64_t k = 2048;
      const auto y = run_i2s(std::vector<int8_t>(k, static_cast<int8_t>(xv)),
                             std::vector<int8_t>(2 * k, static_cast<int8_t>(wv)), 2, k);
      check(y[0] == wv * xv * k && y[1] == wv * xv * k, "I2_S baseline exact at K=2048 corners");
    }
  // K = 4096, w = +1, x = -128: each int16 lane sums 32 blocks * -2048 = -65536, which wraps to 0, so
  // the baseline returns 0 - act_sum = +524288 instead of -524288. Our kernels: exact.
  const int64_t k = 4096;
  const std::vector<int8_t> x(k, -128), codes(2 * k, 1);
  const auto y = run_i2s(x, codes, 2, k);
  check(y[0] == 524288 && y[1] == 524288, "I2_S baseline wraps at K=4096 as the published loop does");
  check_matmul(x, codes, 1, 2, k, "ours exact where I2_S wraps");
#endif
}

// The benchmark's ARM multiply-ceiling loops (cpp/bench/mac_loop_neon*_asm.cpp) run on every NEON backend this
// CPU has (an sdot on a CPU without it would kill the test) and report a rate. (x86: tests/test_kernels.py.)
void test_mac_peak_neon() {
#if defined(BITNET_HAVE_NEON_ASM)
  if (bitnet::backend_supported(Backend::kNeon)) check(bitnet::mac_peak(Backend::kNeon, 20000) > 1e6, "mac_peak neon");
#endif
#if defined(BITNET_HAVE_NEON_DOTPROD_ASM)
  if (bitnet::backend_supported(Backend::kNeonDotprod))
    check(bitnet::mac_peak(Backend::kNeonDotprod, 20000) > 1e6, "mac_peak dotprod");
#endif
}

}  // namespace

int main() {
  std::printf("backends on this CPU:");
  for (Backend b : backends()) std::printf(" %s", bitnet::backend_name(b));
  std::printf(" (default %s)\n", bitnet::backend_name(bitnet::default_backend()));
  test_layout();
  test_roundtrip();
  test_bad_input();
  test_matmul_shapes();
  test_empty_shapes();
  test_overflow_corners();
  test_concurrent_callers();
  test_act_quant();
  test_quant_matmul();
  test_i2s_baseline();
  test_mac_peak_neon();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
