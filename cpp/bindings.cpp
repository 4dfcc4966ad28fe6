// bindings.cpp: the pybind11 module bitnet_ref._core.
//
// Only converts and checks arguments; all computing is in the kernels. Every argument is checked
// (type, dtype, ndim, shape, contiguity, buffer size) before any data pointer is read, results are
// allocated with the GIL held, and the GIL is released around the kernel alone. Accepts numpy
// arrays only: bitnet_ref/runtime/kernels.py turns torch tensors and other inputs into them first and is
// the documented API; this module is its implementation detail. The kernels and their bindings only:
// the benchmark-only code is in bitnet_ref._bench (bench/bindings.cpp).
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"
#include "ternary.h"

namespace {

using bitnet::Backend;
using bitnet::PackedFormat;
using namespace bitnet::bind;

py::array_t<uint8_t> pack(const py::object& codes_obj, const std::string& format_name) {
  py::array codes = checked_array(codes_obj, "codes", 'i', 2);
  const auto format = parse_format(format_name);
  const int64_t n = codes.shape(0), k = codes.shape(1);
  check_nk(n, k);
  py::array_t<uint8_t> out = aligned_bytes(packed_nbytes_of(format, n, k));
  const auto* src = static_cast<const int8_t*>(codes.data());
  uint8_t* dst = out.mutable_data();
  int64_t bad;
  {
    py::gil_scoped_release release;
    bad = format == PackedFormat::k1_6Bit ? bitnet::pack5_ref(src, n, k, dst) : bitnet::pack_ref(src, n, k, dst);
  }
  if (bad >= 0)
    throw py::value_error("codes must be in {-1, 0, 1}; found " + std::to_string(src[bad]) + " at (" +
                          std::to_string(bad / k) + ", " + std::to_string(bad % k) + ")");
  return out;
}

py::array_t<int8_t> unpack(const py::object& packed_obj, int64_t n, int64_t k, const std::string& format_name) {
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  const auto format = parse_format(format_name);
  check_nk(n, k);
  check_packed_size(packed, n, k, format);
  py::array_t<int8_t> out({n, k});
  const auto* src = static_cast<const uint8_t*>(packed.data());
  int8_t* dst = out.mutable_data();
  int64_t bad;
  {
    py::gil_scoped_release release;
    bad = format == PackedFormat::k1_6Bit ? bitnet::unpack5_ref(src, n, k, dst) : bitnet::unpack_ref(src, n, k, dst);
  }
  if (bad >= 0) {
    const int64_t kpad = format == PackedFormat::k1_6Bit ? bitnet::t5_blocks_per_row(k) * bitnet::kT5BlockWeights
                                                         : bitnet::blocks_per_row(k) * bitnet::kBlockWeights;
    const int64_t row = bad / kpad, col = bad % kpad;
    const char* what =
        format == PackedFormat::k1_6Bit ? "a byte that encodes no five ternary values" : "code 3 (not a ternary value)";
    throw py::value_error(std::string("packed buffer is corrupt: ") +
                          (col < k ? what : "padding that is not weight 0") + " at row " + std::to_string(row) +
                          ", column " + std::to_string(col));
  }
  return out;
}

py::array_t<int32_t> matmul(const py::object& x_obj, const py::object& packed_obj, int64_t n, int64_t k,
                            const std::string& backend_name, int threads, const std::string& format_name) {
  py::array x = checked_array(x_obj, "x", 'i', 2);
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  const auto format = parse_format(format_name);
  check_nk(n, k);
  if (x.shape(1) != k)
    throw py::value_error("x has " + std::to_string(x.shape(1)) + " columns but k=" + std::to_string(k));
  check_packed_size(packed, n, k, format);
  if (threads < 0) throw py::value_error("threads must be >= 1 (or 0 for the default)");
  const Backend backend = parse_backend(backend_name);
  const int64_t m = x.shape(0);
  py::array_t<int32_t> out({m, n});
  const auto* xp = static_cast<const int8_t*>(x.data());
  const auto* wp = static_cast<const uint8_t*>(packed.data());
  int32_t* yp = out.mutable_data();
  run_kernel(m * n * k, [&] {
    if (format == PackedFormat::k1_6Bit)
      bitnet::matmul5(xp, wp, yp, m, n, k, backend, threads);
    else
      bitnet::matmul(xp, wp, yp, m, n, k, backend, threads);
  });
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
  if (a.ndim() != 2) throw py::value_error(std::string(what) + " must be 2-D, got " + std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(what) + " must be C-contiguous");
  return a;
}

[[noreturn]] void throw_nonfinite(const py::array& x, int64_t bad) {
  const int64_t k = x.shape(1);
  const float v = static_cast<const float*>(x.data())[bad];
  throw py::value_error(std::string("x must be finite; found ") +
                        (std::isnan(v) ? "nan"
                         : v > 0       ? "inf"
                                       : "-inf") +
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
                                double beta, const std::string& backend_name, int threads,
                                const std::string& format_name) {
  py::array x = checked_float_matrix(x_obj, "x");
  py::array packed = checked_array(packed_obj, "packed", 'u', 1);
  const auto format = parse_format(format_name);
  check_nk(n, k);
  if (x.shape(1) != k)
    throw py::value_error("x has " + std::to_string(x.shape(1)) + " columns but k=" + std::to_string(k));
  check_packed_size(packed, n, k, format);
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
  const int64_t bad = run_kernel(
      m * n * k, [&] { return bitnet::quant_matmul(xp, wp, yp, m, n, k, beta_f, backend, threads, format); });
  if (bad >= 0) throw_nonfinite(x, bad);
  return out;
}

std::vector<std::string> supported_backends() {
  std::vector<std::string> out;
  for (Backend b : bitnet::kAllBackends)
    if (bitnet::backend_supported(b)) out.emplace_back(bitnet::backend_name(b));
  return out;
}

}  // namespace

void register_decode(py::module_& m);  // bindings_decode.cpp

PYBIND11_MODULE(_core, m) {
  m.doc() = "bitnet_ref._core: packed ternary weights and exact int8 x ternary matmul (use bitnet_ref.kernels)";
  m.attr("BLOCK_WEIGHTS") = bitnet::kBlockWeights;
  m.attr("BLOCK_BYTES") = bitnet::kBlockBytes;
  m.attr("MAX_K") = bitnet::kMaxK;
  m.attr("T5_BLOCK_WEIGHTS") = bitnet::kT5BlockWeights;
  m.def("pack", &pack, py::arg("codes"), py::arg("format") = "2",
        "Pack int8 codes (N, K) in {-1,0,1} into a 1-D uint8 buffer; format \"2\" (2-bit) or \"1.6\".");
  m.def("unpack", &unpack, py::arg("packed"), py::arg("n"), py::arg("k"), py::arg("format") = "2",
        "Unpack to int8 (N, K); checks every code.");
  m.def("matmul", &matmul, py::arg("x"), py::arg("packed"), py::arg("n"), py::arg("k"), py::arg("backend") = "",
        py::arg("threads") = 0, py::arg("format") = "2",
        "Exact int32 (M, N) = x (M, K) int8 times unpacked weights transposed. backend '' = best.");
  m.def("act_quant", &act_quant, py::arg("x"),
        "Per-row absmax int8 quantization of float32 (M, K): (q int8 (M, K), gamma float32 (M, 1)), "
        "bit-exact with bitnet_ref.quant.act_quant. ValueError on NaN/inf.");
  m.def("quant_matmul", &quant_matmul, py::arg("x"), py::arg("packed"), py::arg("n"), py::arg("k"), py::arg("beta"),
        py::arg("backend") = "", py::arg("threads") = 0, py::arg("format") = "2",
        "Fused BitLinear core: float32 (M, N) = float(act_quant(x).q . w^T) * (gamma * float32(beta)).");
  m.def(
      "packed_nbytes",
      [](int64_t n, int64_t k, const std::string& format) {
        const auto f = parse_format(format);
        check_nk(n, k);
        return packed_nbytes_of(f, n, k);
      },
      py::arg("n"), py::arg("k"), py::arg("format") = "2");
  m.def("has_avx2", &bitnet::cpu_has_avx2);
  m.def("has_avx512vnni", &bitnet::cpu_has_avx512vnni);
  m.def("default_backend", [] { return std::string(bitnet::backend_name(bitnet::default_backend())); });
  m.def("supported_backends", &supported_backends);
  m.def(
      "set_threads",
      [](int t) {
        if (t < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(t));
        bitnet::set_default_threads(t);
      },
      py::arg("threads"));
  m.def("get_threads", &bitnet::default_threads);
  m.def("hardware_threads", &bitnet::hardware_threads);
  register_decode(m);
}
