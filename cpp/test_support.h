// test_support.h: what the two CTest executables share (test_ternary.cpp, test_ternary5.cpp): the check
// counter, the int64 oracle product, the list of backends this CPU runs, and the exact-equality harness that
// runs one matmul on every backend and thread count against the oracle. Header-only, anonymous namespace:
// each test executable gets its own counters.
#pragma once

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <vector>

#include "ternary.h"

namespace {

using bitnet::Backend;

int g_checks = 0;
int g_failures = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures <= 20) std::printf("FAIL: %s\n", what.c_str());
  }
}

// The oracle: int64 sums straight from the codes, no packing involved.
std::vector<int64_t> naive(const std::vector<int8_t>& x, const std::vector<int8_t>& codes, int64_t m, int64_t n,
                           int64_t k) {
  std::vector<int64_t> y(static_cast<size_t>(m * n), 0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t r = 0; r < n; ++r) {
      int64_t s = 0;
      for (int64_t c = 0; c < k; ++c) s += int64_t{x[i * k + c]} * codes[r * k + c];
      y[i * n + r] = s;
    }
  return y;
}

std::vector<Backend> backends() {
  std::vector<Backend> out;
  for (Backend b : bitnet::kAllBackends)
    if (bitnet::backend_supported(b)) out.push_back(b);
  return out;
}

std::string shape(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
}

// Runs `matmul` (bitnet::matmul or bitnet::matmul5, on `packed` in its format) on every backend at the given
// thread counts and compares it with the oracle, element for element.
template <typename Matmul>
void check_matmul_with(Matmul matmul, const std::vector<uint8_t>& packed, const std::vector<int8_t>& x,
                       const std::vector<int8_t>& codes, int64_t m, int64_t n, int64_t k, const std::string& label,
                       std::initializer_list<int> threads) {
  const auto want = naive(x, codes, m, n, k);
  for (Backend b : backends())
    for (int t : threads) {
      std::vector<int32_t> y(static_cast<size_t>(m * n), 0x5A5A5A5A);
      matmul(x.data(), packed.data(), y.data(), m, n, k, b, t);
      int64_t bad = -1;
      for (size_t i = 0; i < y.size() && bad < 0; ++i)
        if (int64_t{y[i]} != want[i]) bad = static_cast<int64_t>(i);
      std::string msg =
          label + " " + shape(m, n, k) + " backend=" + bitnet::backend_name(b) + " threads=" + std::to_string(t);
      if (bad >= 0)
        msg += " first mismatch at " + std::to_string(bad) + ": got " + std::to_string(y[bad]) + " want " +
               std::to_string(want[bad]);
      check(bad < 0, msg);
    }
}

}  // namespace
