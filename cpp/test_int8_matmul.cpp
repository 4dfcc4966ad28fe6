// test_int8_matmul.cpp: C++ tests for the int8 x int8 product of the int8 head (int8_matmul.h), run by CTest.
//
// Checks, for exact equality against an int64 product computed the obvious way: every backend this CPU runs
// (portable reference, AVX2), one and two threads, over K off and on the 32-weight SIMD step (1 .. 2560 + 7),
// N off the 4-row tile and past the 256-row task, M = 1 (GEMV) and 3, 4, 9 (the GEMM's tiles of four and the rest),
// the GEMM's weight chunks; the overflow corners (every x and w at -128, at 127, mixed) up to K = kInt8MaxK, GEMV and
// GEMM. Exits non-zero on any failure. Needs no Python.
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "int8_matmul.h"

namespace {

using bitnet::Backend;

int g_checks = 0, g_failures = 0;
std::mt19937_64 rng(8128);

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok && ++g_failures <= 20) std::printf("FAIL: %s\n", what.c_str());
}

std::vector<int8_t> random_ints(int64_t count, int lo, int hi) {
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<int8_t> v(static_cast<size_t>(count));
  for (auto& e : v) e = static_cast<int8_t>(d(rng));
  return v;
}

void check_product(const std::vector<int8_t>& x, const std::vector<int8_t>& w, int64_t m, int64_t n, int64_t k,
                   const std::string& label) {
  std::vector<int64_t> want(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t r = 0; r < n; ++r) {
      int64_t s = 0;
      for (int64_t c = 0; c < k; ++c) s += int64_t{x[i * k + c]} * w[r * k + c];
      want[i * n + r] = s;
    }
  for (Backend b : bitnet::kAllBackends)  // the non-x86 ones run the reference: int8_matmul has AVX2 only
    for (int t : {1, 2}) {
      if (!bitnet::backend_supported(b)) continue;
      std::vector<int32_t> y(static_cast<size_t>(m * n), 0x5A5A5A5A);
      bitnet::int8_matmul(x.data(), w.data(), y.data(), m, n, k, b, t);
      int64_t bad = -1;
      for (size_t i = 0; i < y.size() && bad < 0; ++i)
        if (int64_t{y[i]} != want[i]) bad = static_cast<int64_t>(i);
      std::string msg = label + " M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k) +
                        " backend=" + bitnet::backend_name(b) + " threads=" + std::to_string(t);
      if (bad >= 0) msg += " first mismatch at " + std::to_string(bad);
      check(bad < 0, msg);
    }
}

}  // namespace

int main() {
  for (int64_t k : {1, 31, 32, 33, 64, 100, 256, 2560 + 7})
    for (int64_t n : {1, 3, 4, 5, 6, 7, 9, 300})  // tiles of four spread rows with 0-3 rows left over
      for (int64_t m : {1, 3, 4, 9})              // the GEMM's tiles of four activation rows and the rows left over
        check_product(random_ints(m * k, -128, 127), random_ints(n * k, -128, 127), m, n, k, "random");
  check_product(random_ints(2560, -128, 127), random_ints(1100 * 2560, -127, 127), 1, 1100, 2560, "head-like");
  check_product(random_ints(5 * 2560, -128, 127), random_ints(120 * 2560, -127, 127), 5, 120, 2560, "chunked GEMM");
  const int64_t k = bitnet::kInt8MaxK, n = 6;
  for (auto [xv, wv] : {std::pair{-128, -128}, std::pair{127, 127}, std::pair{-128, 127}, std::pair{127, -128}}) {
    std::vector<int8_t> x(static_cast<size_t>(4 * k), static_cast<int8_t>(xv));
    std::vector<int8_t> w(static_cast<size_t>(n * k), static_cast<int8_t>(wv));
    for (int64_t m : {1, 4})  // the GEMV and the GEMM
      check_product(x, w, m, n, k, "corner x=" + std::to_string(xv) + " w=" + std::to_string(wv));
  }
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
