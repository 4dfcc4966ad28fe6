// bindings.cpp: the pybind11 module bitnet_ref._core.
//
// Only converts and checks arguments; all computing is in the kernels. Every argument is checked
// (type, dtype, ndim, shape, contiguity, buffer size) before any data pointer is read, results are
// allocated with the GIL held, and the GIL is released around the kernel alone. Accepts numpy
// arrays only: bitnet_ref/kernels.py turns torch tensors and other inputs into them first and is
// the documented API; this module is its implementation detail.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ternary.h"

namespace py = pybind11;

namespace {

using bitnet::Backend;

// Calls with fewer multiply-adds than this keep the GIL: at 100-200 G MAC/s they take well under a
// microsecond, and dropping and retaking the GIL costs ~0.1-0.2 us. Larger calls release it, so
// other Python threads run meanwhile.
constexpr int64_t kReleaseGilWork = int64_t{1} << 17;

// Runs kernel() (which must not touch Python objects) for a call of `work` multiply-adds, releasing the
// GIL around it when the work is large enough to pay for that.
template <class Kernel>
auto run_kernel(int64_t work, Kernel&& kernel) {
  if (work < kReleaseGilWork) return kernel();
  py::gil_scoped_release release;
  return kernel();
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Returns obj as an ndarray with the given dtype kind ('i' or 'u'), 1-byte items, ndim, C order.
py::array checked_array(const py::object& obj, const char* what, char kind, int ndim) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(what) + " must be a numpy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().kind() != kind || a.itemsize() != 1)
    throw py::type_error(std::string(what) + " must have dtype " + (kind == 'i' ? "int8" : "uint8") +
                         ", got " + dtype_name(a));
  if (a.ndim() != ndim)
    throw py::value_error(std::string(what) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(what) + " must be C-contiguous");
  return a;
}

void check_nk(int64_t n, int64_t k) {
  if (n < 0 || k < 0)
    throw py::value_error("n and k must be >= 0, got n=" + std::to_string(n) + ", k=" + std::to_string(k));
  if (k > bitnet::kMaxK)
    throw py::value_error("k=" + std::to_string(k) + " exceeds the supported maximum " +
                          std::to_string(bitnet::kMaxK) + " (int32 exactness bound)");
  if (n > (int64_t{1} << 40) / std::max<int64_t>(bitnet::row_stride_bytes(k), 1))
    throw py::value_error("n=" + std::to_string(n) + " is too large");
}

void check_packed_size(const py::array& packed, int64_t n, int64_t k) {
  const int64_t want = bitnet::packed_nbytes(n, k);
  if (packed.size() != want)
    throw py::value_error("packed buffer has " + std::to_string(packed.size()) + " bytes but n=" +
                          std::to_string(n) + ", k=" + std::to_string(k) + " needs " + std::to_string(want) +
                          " (truncated buffer, or wrong n/k)");
}

Backend parse_backend(const std::string& name) {
  if (name.empty()) return bitnet::default_backend();
  for (Backend b : {Backend::kScalar, Backend::kAvx2, Backend::kAvx512Vnni})
    if (name == bitnet::backend_name(b)) {
      if (!bitnet::backend_supported(b))
        throw py::value_error("backend '" + name + "' is not supported on this CPU/build");
      return b;
    }
  throw py::value_error("unknown backend '" + name + "'; expected one of scalar, avx2, avx512vnni");
}

// A writable 1-D uint8 array of n bytes whose data starts on a 64-byte boundary (a view into a
// slightly larger array, which it keeps alive). numpy's own allocations are only 16-byte aligned,
// and a weight buffer 16 bytes off a cache line makes every other 32- or 64-byte load split two
// lines: measured 3-4% slower GEMV (tools/bench_kernels.py, 4096 x 4096, one thread, hot).
py::array_t<uint8_t> aligned_bytes(int64_t n) {
  constexpr int64_t kAlign = 64;
  py::array_t<uint8_t> holder(n + kAlign - 1);
  uint8_t* base = holder.mutable_data();
  const auto off = static_cast<int64_t>((kAlign - reinterpret_cast<uintptr_t>(base) % kAlign) % kAlign);
  return py::array_t<uint8_t>({n}, {int64_t{1}}, base + off, holder);
}

py::array_t<uint8_t> pack(const py::object& codes_obj) {
  py::array codes = checked_array(codes_obj, "codes", 'i', 2);
  const int64_t n = codes.shape(0), k = codes.shape(1);
  check_nk(n, k);
  py::array_t<uint8_t> out = aligned_bytes(bitnet::packed_nbytes(n, k));
  const auto* src = static_cast<const int8_t*>(codes.data());
  uint8_t* dst = out.mutable_data();
  int64_t bad;
  {
    py::gil_scoped_release release;
    bad = bitnet::pack_ref(src, n, k, dst);
  }
  if (bad >= 0)
    throw py::value_error("codes must be in {-1, 0, 1}; found " + std::to_string(src[bad]) + " at (" +
                          std::to_string(bad / k) + ", " + std::to_string(bad % k) + ")");
  return out;
}

py::array_t<int8_t> unpack(const py::object& packed_obj, int64_t n, int64_t k) {
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  check_nk(n, k);
  check_packed_size(packed, n, k);
  py::array_t<int8_t> out({n, k});
  const auto* src = static_cast<const uint8_t*>(packed.data());
  int8_t* dst = out.mutable_data();
  int64_t bad;
  {
    py::gil_scoped_release release;
    bad = bitnet::unpack_ref(src, n, k, dst);
  }
  if (bad >= 0) {
    const int64_t kpad = bitnet::blocks_per_row(k) * bitnet::kBlockWeights;
    const int64_t row = bad / kpad, col = bad % kpad;
    throw py::value_error(std::string("packed buffer is corrupt: ") +
                          (col < k ? "code 3 (not a ternary value)" : "padding that is not weight 0") +
                          " at row " + std::to_string(row) + ", column " + std::to_string(col));
  }
  return out;
}

py::array_t<int32_t> matmul(const py::object& x_obj, const py::object& packed_obj, int64_t n, int64_t k,
                            const std::string& backend_name, int threads) {
  py::array x = checked_array(x_obj, "x", 'i', 2);
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  check_nk(n, k);
  if (x.shape(1) != k)
    throw py::value_error("x has " + std::to_string(x.shape(1)) + " columns but k=" + std::to_string(k));
  check_packed_size(packed, n, k);
  if (threads < 0) throw py::value_error("threads must be >= 1 (or 0 for the default)");
  const Backend backend = parse_backend(backend_name);
  const int64_t m = x.shape(0);
  py::array_t<int32_t> out({m, n});
  const auto* xp = static_cast<const int8_t*>(x.data());
  const auto* wp = static_cast<const uint8_t*>(packed.data());
  int32_t* yp = out.mutable_data();
  run_kernel(m * n * k, [&] { bitnet::matmul(xp, wp, yp, m, n, k, backend, threads); });
  return out;
}

// Returns obj as a 2-D C-contiguous float32 ndarray (checks only; never converts).
py::array checked_float_matrix(const py::object& obj, const char* what) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(what) + " must be a numpy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().kind() != 'f' || a.itemsize() != 4)
    throw py::type_error(std::string(what) + " must have dtype float32, got " + dtype_name(a));
  if (a.ndim() != 2)
    throw py::value_error(std::string(what) + " must be 2-D, got " + std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(what) + " must be C-contiguous");
  return a;
}

[[noreturn]] void throw_nonfinite(const py::array& x, int64_t bad) {
  const int64_t k = x.shape(1);
  const float v = static_cast<const float*>(x.data())[bad];
  throw py::value_error(std::string("x must be finite; found ") + (std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf") +
                        " at (" + std::to_string(bad / k) + ", " + std::to_string(bad % k) + ")");
}

py::tuple act_quant(const py::object& x_obj) {
  py::array x = checked_float_matrix(x_obj, "x");
  const int64_t m = x.shape(0), k = x.shape(1);
  py::array_t<int8_t> q({m, k});
  py::array_t<float> gamma({m, int64_t{1}});
  const auto* xp = static_cast<const float*>(x.data());
  int8_t* qp = q.mutable_data();
  float* gp = gamma.mutable_data();
  int64_t bad;
  {
    py::gil_scoped_release release;
    bad = bitnet::act_quant_rows(xp, m, k, qp, gp);
  }
  if (bad >= 0) throw_nonfinite(x, bad);
  return py::make_tuple(q, gamma);
}

py::array_t<float> quant_matmul(const py::object& x_obj, const py::object& packed_obj, int64_t n, int64_t k,
                                double beta, const std::string& backend_name, int threads) {
  py::array x = checked_float_matrix(x_obj, "x");
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  check_nk(n, k);
  if (x.shape(1) != k)
    throw py::value_error("x has " + std::to_string(x.shape(1)) + " columns but k=" + std::to_string(k));
  check_packed_size(packed, n, k);
  const float beta_f = static_cast<float>(beta);
  if (!std::isfinite(beta_f) || !(beta_f > 0.0f))
    throw py::value_error("beta must be a finite positive float32 value, got " + std::to_string(beta));
  if (threads < 0) throw py::value_error("threads must be >= 1 (or 0 for the default)");
  const Backend backend = parse_backend(backend_name);
  const int64_t m = x.shape(0);
  py::array_t<float> out({m, n});
  const auto* xp = static_cast<const float*>(x.data());
  const auto* wp = static_cast<const uint8_t*>(packed.data());
  float* yp = out.mutable_data();
  const int64_t bad =
      run_kernel(m * n * k, [&] { return bitnet::quant_matmul(xp, wp, yp, m, n, k, beta_f, backend, threads); });
  if (bad >= 0) throw_nonfinite(x, bad);
  return out;
}

#if defined(BITNET_HAVE_AVX2_KERNEL)
// Benchmark-only bindings for the bitnet.cpp-style I2_S baseline (cpp/bench_i2s_avx2.cpp).
void check_i2s(int64_t n, int64_t k) {
  if (!bitnet::cpu_has_avx2()) throw py::value_error("the I2_S benchmark baseline needs AVX2");
  check_nk(n, k);
  if (k == 0 || k % bitnet::kBlockWeights != 0)
    throw py::value_error("the I2_S layout needs k to be a positive multiple of 128, got " + std::to_string(k));
}

py::array_t<uint8_t> bench_i2s_repack(const py::object& packed_obj, int64_t n, int64_t k) {
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  check_i2s(n, k);
  check_packed_size(packed, n, k);  // == n * k / 4 when k % 128 == 0
  py::array_t<uint8_t> out = aligned_bytes(packed.size());  // aligned like ours (ggml aligns its buffers too)
  const auto* src = static_cast<const uint8_t*>(packed.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    bitnet::i2s_repack_bench(src, n, k, dst);
  }
  return out;
}

py::array_t<int32_t> bench_i2s_gemv(const py::object& x_obj, const py::object& packed_obj, int64_t n, int64_t k) {
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

// Per-call wall seconds of `reps` M = 1, one-thread GEMVs timed inside C++ (no Python call around each),
// rotating through the weight copies in `packs`: impl "i2s" runs the I2_S-style loop on I2_S-layout
// buffers, "avx2" / "avx512vnni" our kernel through bitnet::matmul (activation preparation included,
// as in every call). For the side by side in tools/bench_kernels.py, next to the Python-call timings.
std::vector<double> bench_gemv_seconds(const std::string& impl, const py::object& x_obj, const py::list& packs,
                                       int64_t n, int64_t k, int64_t reps) {
  py::array x = checked_array(x_obj, "x", 'i', 2);
  check_i2s(n, k);
  if (x.shape(0) != 1 || x.shape(1) != k)
    throw py::value_error("x must have shape (1, k) = (1, " + std::to_string(k) + ")");
  if (reps < 1 || reps > 1000000) throw py::value_error("reps must be in [1, 10^6]");
  if (packs.size() == 0) throw py::value_error("packs must hold at least one buffer");
  const bool i2s = impl == "i2s";
  const Backend backend = i2s ? Backend::kScalar : parse_backend(impl);
  if (!i2s && backend == Backend::kScalar) throw py::value_error("impl must be i2s, avx2 or avx512vnni");
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
        bitnet::matmul(xp, w, y.data(), 1, n, k, backend, 1);
      secs[static_cast<size_t>(r)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  return secs;
}
#endif

std::vector<std::string> supported_backends() {
  std::vector<std::string> out;
  for (Backend b : {Backend::kScalar, Backend::kAvx2, Backend::kAvx512Vnni})
    if (bitnet::backend_supported(b)) out.emplace_back(bitnet::backend_name(b));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "bitnet_ref._core: packed ternary weights and exact int8 x ternary matmul (use bitnet_ref.kernels)";
  m.attr("BLOCK_WEIGHTS") = bitnet::kBlockWeights;
  m.attr("BLOCK_BYTES") = bitnet::kBlockBytes;
  m.attr("MAX_K") = bitnet::kMaxK;
  m.def("pack", &pack, py::arg("codes"), "Pack int8 codes (N, K) in {-1,0,1} into a 1-D uint8 buffer.");
  m.def("unpack", &unpack, py::arg("packed"), py::arg("n"), py::arg("k"), "Unpack to int8 (N, K); checks every code.");
  m.def("matmul", &matmul, py::arg("x"), py::arg("packed"), py::arg("n"), py::arg("k"),
        py::arg("backend") = "", py::arg("threads") = 0,
        "Exact int32 (M, N) = x (M, K) int8 times unpacked weights transposed. backend '' = best.");
  m.def("act_quant", &act_quant, py::arg("x"),
        "Per-row absmax int8 quantization of float32 (M, K): (q int8 (M, K), gamma float32 (M, 1)), "
        "bit-exact with bitnet_ref.quant.act_quant. ValueError on NaN/inf.");
  m.def("quant_matmul", &quant_matmul, py::arg("x"), py::arg("packed"), py::arg("n"), py::arg("k"),
        py::arg("beta"), py::arg("backend") = "", py::arg("threads") = 0,
        "Fused BitLinear core: float32 (M, N) = float(act_quant(x).q . w^T) * (gamma * float32(beta)).");
  m.def("packed_nbytes", [](int64_t n, int64_t k) { check_nk(n, k); return bitnet::packed_nbytes(n, k); },
        py::arg("n"), py::arg("k"));
  m.def("has_avx2", &bitnet::cpu_has_avx2);
  m.def("has_avx512vnni", &bitnet::cpu_has_avx512vnni);
  m.def("default_backend", [] { return std::string(bitnet::backend_name(bitnet::default_backend())); });
  m.def("supported_backends", &supported_backends);
  m.def("set_threads", [](int t) {
    if (t < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(t));
    bitnet::set_default_threads(t);
  }, py::arg("threads"));
  m.def("get_threads", &bitnet::default_threads);
#if defined(BITNET_HAVE_AVX2_KERNEL)
  m.def("_bench_gemv_seconds", &bench_gemv_seconds, py::arg("impl"), py::arg("x"), py::arg("packs"), py::arg("n"),
        py::arg("k"), py::arg("reps"),
        "BENCHMARK ONLY: per-call seconds of reps M = 1 one-thread GEMVs timed in C++ (impl i2s/avx2/avx512vnni).");
  m.def("_bench_i2s_repack", &bench_i2s_repack, py::arg("packed"), py::arg("n"), py::arg("k"),
        "BENCHMARK ONLY: our packed buffer rewritten in bitnet.cpp's I2_S x86 layout (k % 128 == 0).");
  m.def("_bench_i2s_gemv", &bench_i2s_gemv, py::arg("x"), py::arg("packed_i2s"), py::arg("n"), py::arg("k"),
        "BENCHMARK ONLY: our re-implementation of bitnet.cpp's I2_S AVX2 1x1 GEMV loop, int32 (1, N). "
        "int16 accumulation: NOT exact for k > 2048 with adversarial x (see cpp/bench_i2s_avx2.cpp).");
#endif
  m.def("hardware_threads", &bitnet::hardware_threads);
  m.def("measure_read_bandwidth", [](int64_t bytes, int threads, int reps) {
    if (bytes < 1 || threads < 1 || reps < 1) throw py::value_error("bytes, threads and reps must be >= 1");
    py::gil_scoped_release release;
    return bitnet::measure_read_bandwidth(bytes, threads, reps);
  }, py::arg("bytes"), py::arg("threads") = 1, py::arg("reps") = 5,
  "Median streaming read bandwidth (GB/s) of a bytes-sized buffer; for tools/bench_kernels.py.");
  m.def("mac_peak", [](const std::string& backend, int64_t iters) {
    if (iters < 1 || iters > (int64_t{1} << 32)) throw py::value_error("iters must be in [1, 2^32]");
    const Backend b = parse_backend(backend);
    if (b == Backend::kScalar) throw py::value_error("mac_peak measures a SIMD backend (avx2 or avx512vnni)");
    py::gil_scoped_release release;
    return bitnet::mac_peak(b, iters);
  }, py::arg("backend"), py::arg("iters") = 20000000,
  "Multiply-adds per second of one core on the multiply instruction of `backend`; for tools/bench_kernels.py.");
}
