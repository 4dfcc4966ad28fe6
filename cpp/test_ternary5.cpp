// test_ternary5.cpp: C++ tests for the 1.6-bit packed format (ternary5.h) and its kernels (run by CTest).
//
// Checks, for exact equality: the documented encoding on a hand-made block and on every one of the 243
// five-code groups (and that the 13 unused bytes are refused); pack -> unpack round trips; bad codes and
// corrupt buffers reported at the right index; every kernel path (portable reference, AVX2, and the
// AVX-512 backend name, which runs the AVX2 kernel), single- and multi-threaded, against an int64 product
// computed straight from the codes, over K in every class (off the 160 block, at and past the 12-block
// int16 widening, large), odd N and M, the overflow corners up to K = kMaxK; and the fused quant_matmul
// against the 2-bit format bit for bit. Exits non-zero on any failure. Needs no Python.
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "ternary5.h"
#include "test_support.h"

namespace {

std::mt19937_64 rng(54321);

std::vector<int8_t> random_ints(int64_t count, int lo, int hi) {
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<int8_t> v(static_cast<size_t>(count));
  for (auto& e : v) e = static_cast<int8_t>(d(rng));
  return v;
}

std::vector<uint8_t> pack5(const std::vector<int8_t>& codes, int64_t n, int64_t k) {
  std::vector<uint8_t> p(static_cast<size_t>(bitnet::t5_packed_nbytes(n, k)), 0xEE);
  check(bitnet::pack5_ref(codes.data(), n, k, p.data()) == -1, "pack5_ref accepted valid codes");
  return p;
}

void check_matmul(const std::vector<int8_t>& x, const std::vector<int8_t>& codes, int64_t m, int64_t n, int64_t k,
                  const std::string& label, std::initializer_list<int> threads = {1}) {
  check_matmul_with(bitnet::matmul5, pack5(codes, n, k), x, codes, m, n, k, label, threads);
}

void test_layout() {
  // Elements 0, 32, 64, 96, 128 = +1, -1, +1, 0, 0: codes 2, 0, 2, 1, 1, v = 162 + 18 + 3 + 1 = 184,
  // byte = ceil(184 * 256 / 243) = 194. Element 161 (block 1, byte 1, c0) = -1.
  const int64_t k = 162;
  std::vector<int8_t> codes(k, 0);
  codes[0] = 1, codes[32] = -1, codes[64] = 1, codes[161] = -1;
  const auto p = pack5(codes, 1, k);
  check(p.size() == 64, "a row of K=162 takes two 32-byte blocks");
  check(p[0] == 194, "byte 0 holds elements 0, 32, 64, 96, 128 as ceil(v * 256 / 243)");
  check(p[1] == 0x80, "five zero weights are the byte 0x80");
  check(p[32 + 1] == bitnet::t5_encode(0, 1, 1, 1, 1), "element 161 is block 1, byte 1, the leading code");
  check(p[32 + 2] == 0x80, "padding bytes are 0x80");
}

// Every five-code group survives pack -> unpack and the SIMD decode (one row holding all 243 groups,
// against random activations); the 13 bytes no group encodes are reported by unpack5_ref.
void test_every_byte() {
  const int64_t k = 8 * bitnet::kT5BlockWeights;  // 256 bytes: groups v = byte index mod 243
  std::vector<int8_t> codes(static_cast<size_t>(k));
  for (int64_t b = 0; b < 256; ++b) {
    const int v = static_cast<int>(b % 243);
    const int digit[5] = {v / 81 % 3, v / 27 % 3, v / 9 % 3, v / 3 % 3, v % 3};
    for (int i = 0; i < 5; ++i) codes[(b / 32) * 160 + 32 * i + b % 32] = static_cast<int8_t>(digit[i] - 1);
  }
  const auto p = pack5(codes, 1, k);
  std::vector<int8_t> back(codes.size());
  check(bitnet::unpack5_ref(p.data(), 1, k, back.data()) == -1 && back == codes, "all 243 groups round-trip");
  for (int m : {1, 3}) check_matmul(random_ints(m * k, -128, 127), codes, m, 1, k, "all 243 groups");

  int invalid = 0;
  for (int b = 0; b < 256; ++b) {
    std::vector<uint8_t> one(32, bitnet::kT5PadByte);
    one[5] = static_cast<uint8_t>(b);
    std::vector<int8_t> out(160);
    const int64_t bad = bitnet::unpack5_ref(one.data(), 1, 160, out.data());
    bool encodes = false;
    for (int v = 0; v < 243; ++v) encodes |= (v * 256 + 242) / 243 == b;
    invalid += !encodes;
    check(encodes ? bad == -1 : bad == 5, "unpack5_ref on byte " + std::to_string(b));
  }
  check(invalid == 13, "13 of the 256 bytes encode no group");
}

void test_roundtrip() {
  for (int64_t k : {1, 2, 31, 32, 33, 127, 128, 159, 160, 161, 200, 319, 320, 321, 1000})
    for (int64_t n : {1, 2, 3, 7}) {
      const auto codes = random_ints(n * k, -1, 1);
      const auto p = pack5(codes, n, k);
      check(static_cast<int64_t>(p.size()) == n * ((k + 159) / 160) * 32, "packed size " + shape(1, n, k));
      std::vector<int8_t> back(codes.size(), 99);
      check(bitnet::unpack5_ref(p.data(), n, k, back.data()) == -1 && back == codes, "round trip " + shape(1, n, k));
    }
}

void test_bad_input() {
  std::vector<int8_t> codes = random_ints(3 * 50, -1, 1);
  std::vector<uint8_t> p(static_cast<size_t>(bitnet::t5_packed_nbytes(3, 50)));
  codes[2 * 50 + 7] = 2;
  check(bitnet::pack5_ref(codes.data(), 3, 50, p.data()) == 2 * 50 + 7, "pack5_ref reports the first bad code");
  codes[2 * 50 + 7] = -128;
  check(bitnet::pack5_ref(codes.data(), 3, 50, p.data()) == 2 * 50 + 7, "pack5_ref rejects -128");

  const auto good = pack5(random_ints(2 * 40, -1, 1), 2, 40);
  std::vector<int8_t> out(80);
  auto corrupt = good;
  corrupt[32 + 5] = 1;  // no group encodes 1 (ceil(256 v / 243) jumps from 0 to 2); row 1, element 5
  check(bitnet::unpack5_ref(corrupt.data(), 2, 40, out.data()) == 160 + 5, "unpack5_ref reports an invalid byte");
  corrupt = good;
  corrupt[10] = bitnet::t5_encode(1, 1, 1, 1, 2);  // element 10 is 0 (padding too); element 138, padding, is +1
  check(bitnet::unpack5_ref(corrupt.data(), 2, 40, out.data()) == 138, "unpack5_ref reports bad padding");
}

void test_matmul_shapes() {
  // K around the 160 block, and around the 12-block (1920) int16 widening of the AVX2 kernel.
  const int64_t ks[] = {1,   2,   31,  32,  33,   64,   127,  128,  129,  159,  160,  161,  319, 320,
                        321, 480, 640, 850, 1000, 1919, 1920, 1921, 2080, 3840, 3841, 4096, 4100};
  const int64_t ns[] = {1, 2, 3, 4, 5, 9, 17};
  const int64_t ms[] = {1, 2, 3, 4, 5, 6, 8, 9, 17};
  for (int64_t k : ks)
    for (int64_t n : ns)
      for (int64_t m : ms) {
        if (k >= 1000 && (n > 5 || m > 5)) continue;  // keep the run short
        check_matmul(random_ints(m * k, -128, 127), random_ints(n * k, -1, 1), m, n, k, "random");
      }
  check_matmul(random_ints(11008, -128, 127), random_ints(260 * 11008, -1, 1), 1, 260, 11008, "random large",
               {1, 2, 3});
  check_matmul(random_ints(8 * 4096, -128, 127), random_ints(70 * 4096, -1, 1), 8, 70, 4096, "random gemm", {1, 2, 4});
  check_matmul(random_ints(3 * 20000, -128, 127), random_ints(37 * 20000, -1, 1), 3, 37, 20000, "random K=20000",
               {1, 2});
  // K = 0, M = 0, N = 0
  for (int64_t m : {1, 3}) check_matmul({}, {}, m, 4, 0, "empty K");
  check_matmul({}, random_ints(30, -1, 1), 0, 3, 10, "empty M");
  check_matmul(random_ints(20, -128, 127), {}, 2, 0, 10, "empty N");
}

void test_overflow_corners() {
  for (int64_t k : {1, 160, 161, 1920, 1921, 4096, 11008, 20000})
    for (int wv : {-1, 0, 1})
      for (int xv : {-128, 127})
        for (int64_t m : {1, 2, 5}) {
          const int64_t n = 5;
          check_matmul(std::vector<int8_t>(static_cast<size_t>(m * k), static_cast<int8_t>(xv)),
                       std::vector<int8_t>(static_cast<size_t>(n * k), static_cast<int8_t>(wv)), m, n, k,
                       "corner w=" + std::to_string(wv) + " x=" + std::to_string(xv));
        }
  const int64_t k = bitnet::kMaxK;  // |y| = 2^29
  std::vector<int8_t> codes(static_cast<size_t>(3 * k));
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t c = 0; c < k; ++c) codes[r * k + c] = static_cast<int8_t>(r % 2 == 0 ? 1 : -1);
  check_matmul(std::vector<int8_t>(static_cast<size_t>(k), -128), codes, 1, 3, k, "corner K=kMaxK");
}

// The fused BitLinear core gives the same floats from either format.
void test_quant_matmul_formats_agree() {
  const int64_t m = 3, n = 11, k = 1000;
  std::vector<float> x(static_cast<size_t>(m * k));
  std::normal_distribution<float> d(0.0f, 2.0f);
  for (auto& v : x) v = d(rng);
  const auto codes = random_ints(n * k, -1, 1);
  std::vector<uint8_t> p2(static_cast<size_t>(bitnet::packed_nbytes(n, k)));
  check(bitnet::pack_ref(codes.data(), n, k, p2.data()) == -1, "pack_ref");
  const auto p5 = pack5(codes, n, k);
  for (Backend b : backends()) {
    std::vector<float> y2(static_cast<size_t>(m * n)), y5(static_cast<size_t>(m * n));
    bitnet::quant_matmul(x.data(), p2.data(), y2.data(), m, n, k, 0.37f, b, 1);
    bitnet::quant_matmul(x.data(), p5.data(), y5.data(), m, n, k, 0.37f, b, 1, bitnet::PackedFormat::k1_6Bit);
    check(y2 == y5, std::string("quant_matmul 1.6-bit == 2-bit, backend ") + bitnet::backend_name(b));
  }
}

}  // namespace

int main() {
  std::printf("backends on this CPU:");
  for (Backend b : backends()) std::printf(" %s", bitnet::backend_name(b));
  std::printf("\n");
  test_layout();
  test_every_byte();
  test_roundtrip();
  test_bad_input();
  test_matmul_shapes();
  test_overflow_corners();
  test_quant_matmul_formats_agree();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
