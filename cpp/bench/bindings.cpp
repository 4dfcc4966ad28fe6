// bench/bindings.cpp: the pybind11 module bitnet_ref._bench, benchmark-only code for tools/bench/bench_kernels.py.
//
// Kept out of bitnet_ref._core so that the shipped extension is the kernels and their bindings only.
// Same rules as ../bindings.cpp, and the same checks (../bindings.h): only converts and checks
// arguments, every argument checked before any data pointer is read, the GIL released around the work.
// Nothing in the bitnet_ref package imports it.
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "bench.h"
#include "bindings.h"

namespace {

using bitnet::Backend;
using namespace bitnet::bind;

#if defined(BITNET_HAVE_AVX2_KERNEL)
// The bitnet.cpp-style I2_S baseline (i2s_avx2.cpp).
void check_i2s(int64_t n, int64_t k) {
  if (!bitnet::cpu_has_avx2()) throw py::value_error("the I2_S benchmark baseline needs AVX2");
  check_nk(n, k);
  if (k == 0 || k % bitnet::kBlockWeights != 0)
    throw py::value_error("the I2_S layout needs k to be a positive multiple of 128, got " + std::to_string(k));
}

py::array_t<uint8_t> i2s_repack(const py::object& packed_obj, int64_t n, int64_t k) {
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  check_i2s(n, k);
  check_packed_size(packed, n, k);                          // == n * k / 4 when k % 128 == 0
  py::array_t<uint8_t> out = aligned_bytes(packed.size());  // aligned like ours (ggml aligns its buffers too)
  const auto* src = static_cast<const uint8_t*>(packed.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    bitnet::i2s_repack_bench(src, n, k, dst);
  }
  return out;
}

py::array_t<int32_t> i2s_gemv(const py::object& x_obj, const py::object& packed_obj, int64_t n, int64_t k) {
  py::array x = checked_array(x_obj, "x", 'i', 2);
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  check_i2s(n, k);
  if (x.shape(0) != 1 || x.shape(1) != k)
    throw py::value_error("x must have shape (1, k) = (1, " + std::to_string(k) + ")");
  check_packed_size(packed, n, k);
  py::array_t<int32_t> out({int64_t{1}, n});
  const auto* xp = static_cast<const int8_t*>(x.data());
  const auto* wp = static_cast<const uint8_t*>(packed.data());
  int32_t* yp = out.mutable_data();
  run_kernel(n * k, [&] { bitnet::i2s_gemv_bench(wp, xp, n, k, yp); });  // as matmul: like with like
  return out;
}

// Per-call wall seconds of `reps` M = 1 GEMVs timed inside C++ (no Python call around each),
// rotating through the weight copies in `packs`: impl "i2s" runs the I2_S-style loop on I2_S-layout
// buffers, "avx2" / "avx512vnni" our kernel through bitnet::matmul (activation preparation included,
// as in every call), "avx2-adjacent" the AVX2 kernel with its tiles' rows adjacent (one read stream; the
// baseline of the row-order section). For the side by side in tools/bench/bench_kernels.py, next to the
// Python-call timings. `threads` as for matmul (the I2_S loop always runs on one).
std::vector<double> gemv_seconds(const std::string& impl, const py::object& x_obj, const py::list& packs, int64_t n,
                                 int64_t k, int64_t reps, int threads) {
  py::array x = checked_array(x_obj, "x", 'i', 2);
  check_i2s(n, k);
  if (x.shape(0) != 1 || x.shape(1) != k)
    throw py::value_error("x must have shape (1, k) = (1, " + std::to_string(k) + ")");
  if (reps < 1 || reps > 1000000) throw py::value_error("reps must be in [1, 10^6]");
  if (packs.size() == 0) throw py::value_error("packs must hold at least one buffer");
  if (threads < 1 || threads > 1024) throw py::value_error("threads must be in [1, 1024]");
  const bool i2s = impl == "i2s";
  const bool adjacent = impl == "avx2-adjacent";
  const Backend backend = i2s ? Backend::kScalar : parse_backend(adjacent ? "avx2" : impl);
  if (!i2s && backend == Backend::kScalar) throw py::value_error("impl must be i2s, avx2, avx2-adjacent or avx512vnni");
  std::vector<py::array> held;  // keeps the buffers alive while the GIL is released
  std::vector<const uint8_t*> ws;
  for (const auto& obj : packs) {
    py::array a = checked_array(py::reinterpret_borrow<py::object>(obj), "packs[i]", 'u', 1);
    check_packed_size(a, n, k);
    ws.push_back(static_cast<const uint8_t*>(a.data()));
    held.push_back(a);
  }
  const auto* xp = static_cast<const int8_t*>(x.data());
  std::vector<int32_t> y(static_cast<size_t>(n));
  std::vector<double> secs(static_cast<size_t>(reps));
  {
    py::gil_scoped_release release;
    for (int64_t r = 0; r < reps; ++r) {
      const uint8_t* w = ws[static_cast<size_t>(r) % ws.size()];
      const auto t0 = std::chrono::steady_clock::now();
      if (i2s)
        bitnet::i2s_gemv_bench(w, xp, n, k, y.data());
      else
        bitnet::matmul(xp, w, y.data(), 1, n, k, backend, threads, adjacent);
      secs[static_cast<size_t>(r)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  return secs;
}
#endif

}  // namespace

PYBIND11_MODULE(_bench, m) {
  m.doc() = "bitnet_ref._bench: benchmark-only code for tools/bench/bench_kernels.py (not part of the kernels API)";
  m.def(
      "measure_read_bandwidth",
      [](int64_t bytes, int threads, int reps, int streams) {
        if (bytes < 1 || threads < 1 || reps < 1) throw py::value_error("bytes, threads and reps must be >= 1");
        if (streams < 1 || streams > 8) throw py::value_error("streams must be in [1, 8]");
        py::gil_scoped_release release;
        return bitnet::measure_read_bandwidth(bytes, threads, reps, streams);
      },
      py::arg("bytes"), py::arg("threads") = 1, py::arg("reps") = 5, py::arg("streams") = 4,
      "Median streaming read bandwidth (GB/s) of a bytes-sized buffer, read as `streams` sequential streams per "
      "task; for tools/bench/bench_kernels.py.");
  m.def(
      "mac_peak",
      [](const std::string& backend, int64_t iters) {
        if (iters < 1 || iters > (int64_t{1} << 32)) throw py::value_error("iters must be in [1, 2^32]");
        const Backend b = parse_backend(backend);
        if (b == Backend::kScalar)
          throw py::value_error("mac_peak measures a SIMD backend (avx2, avx512vnni, neon or dotprod)");
        py::gil_scoped_release release;
        return bitnet::mac_peak(b, iters);
      },
      py::arg("backend"), py::arg("iters") = 20000000,
      "Multiply-adds per second of one core on the multiply instruction of `backend`; for "
      "tools/bench/bench_kernels.py.");
#if defined(BITNET_HAVE_AVX2_KERNEL)
  m.def("gemv_seconds", &gemv_seconds, py::arg("impl"), py::arg("x"), py::arg("packs"), py::arg("n"), py::arg("k"),
        py::arg("reps"), py::arg("threads") = 1,
        "Per-call seconds of reps M = 1 GEMVs timed in C++ (impl i2s/avx2/avx2-adjacent/avx512vnni).");
  m.def("i2s_repack", &i2s_repack, py::arg("packed"), py::arg("n"), py::arg("k"),
        "Our packed buffer rewritten in bitnet.cpp's I2_S x86 layout (k % 128 == 0).");
  m.def("i2s_gemv", &i2s_gemv, py::arg("x"), py::arg("packed_i2s"), py::arg("n"), py::arg("k"),
        "Our re-implementation of bitnet.cpp's I2_S AVX2 1x1 GEMV loop, int32 (1, N). "
        "int16 accumulation: NOT exact for k > 2048 with adversarial x (see cpp/bench/i2s_avx2.cpp).");
#endif
}
