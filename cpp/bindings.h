// bindings.h: the argument checks the two pybind11 modules share, bindings.cpp (bitnet_ref._core) and
// bench/bindings.cpp (bitnet_ref._bench), so both refuse bad input with the same one-line errors.
//
// Every check runs before any data pointer is read. Include only from a binding file: it defines the
// alias py = pybind11.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "ternary.h"
#include "ternary5.h"

namespace py = pybind11;

namespace bitnet::bind {

// Calls with fewer multiply-adds than this keep the GIL: at 100-200 G MAC/s they take well under a
// microsecond, and dropping and retaking the GIL costs ~0.1-0.2 us. Larger calls release it, so
// other Python threads run meanwhile.
inline constexpr int64_t kReleaseGilWork = int64_t{1} << 17;

// Runs kernel() (which must not touch Python objects) for a call of `work` multiply-adds, releasing the
// GIL around it when the work is large enough to pay for that.
template <class Kernel>
auto run_kernel(int64_t work, Kernel&& kernel) {
  if (work < kReleaseGilWork) return kernel();
  py::gil_scoped_release release;
  return kernel();
}

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Returns obj as an ndarray with the given dtype kind ('i' or 'u'), 1-byte items, ndim, C order.
inline py::array checked_array(const py::object& obj, const char* what, char kind, int ndim) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(what) + " must be a numpy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().kind() != kind || a.itemsize() != 1)
    throw py::type_error(std::string(what) + " must have dtype " + (kind == 'i' ? "int8" : "uint8") + ", got " +
                         dtype_name(a));
  if (a.ndim() != ndim)
    throw py::value_error(std::string(what) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(what) + " must be C-contiguous");
  return a;
}

inline void check_nk(int64_t n, int64_t k) {
  if (n < 0 || k < 0)
    throw py::value_error("n and k must be >= 0, got n=" + std::to_string(n) + ", k=" + std::to_string(k));
  if (k > bitnet::kMaxK)
    throw py::value_error("k=" + std::to_string(k) + " exceeds the supported maximum " + std::to_string(bitnet::kMaxK) +
                          " (int32 exactness bound)");
  if (n > (int64_t{1} << 40) / std::max<int64_t>(bitnet::row_stride_bytes(k), 1))
    throw py::value_error("n=" + std::to_string(n) + " is too large");
}

// "2" (ternary.h) or "1.6" (ternary5.h).
inline bitnet::PackedFormat parse_format(const std::string& name) {
  if (name == "2") return bitnet::PackedFormat::k2Bit;
  if (name == "1.6") return bitnet::PackedFormat::k1_6Bit;
  throw py::value_error("unknown packed format '" + name + "'; expected \"2\" or \"1.6\"");
}

inline int64_t packed_nbytes_of(bitnet::PackedFormat f, int64_t n, int64_t k) {
  return f == bitnet::PackedFormat::k1_6Bit ? bitnet::t5_packed_nbytes(n, k) : bitnet::packed_nbytes(n, k);
}

inline void check_packed_size(const py::array& packed, int64_t n, int64_t k,
                              bitnet::PackedFormat f = bitnet::PackedFormat::k2Bit) {
  const int64_t want = packed_nbytes_of(f, n, k);
  if (packed.size() != want)
    throw py::value_error("packed buffer has " + std::to_string(packed.size()) + " bytes but n=" + std::to_string(n) +
                          ", k=" + std::to_string(k) + " needs " + std::to_string(want) +
                          " (truncated buffer, or wrong n/k)");
}

inline Backend parse_backend(const std::string& name) {
  if (name.empty()) return bitnet::default_backend();
  for (Backend b : bitnet::kAllBackends)
    if (name == bitnet::backend_name(b)) {
      if (!bitnet::backend_supported(b))
        throw py::value_error("backend '" + name + "' is not supported on this CPU/build");
      return b;
    }
  throw py::value_error("unknown backend '" + name + "'; expected one of scalar, avx2, avx512vnni, neon, dotprod");
}

// A writable 1-D uint8 array of n bytes whose data starts on a 64-byte boundary (a view into a
// slightly larger array, which it keeps alive). numpy's own allocations are only 16-byte aligned,
// and a weight buffer 16 bytes off a cache line makes every other 32- or 64-byte load split two
// lines, which measurably slows the GEMV (docs/kernels.md, "Why the hot loops are written as they are").
inline py::array_t<uint8_t> aligned_bytes(int64_t n) {
  constexpr int64_t kAlign = 64;
  py::array_t<uint8_t> holder(n + kAlign - 1);
  uint8_t* base = holder.mutable_data();
  const auto off = static_cast<int64_t>((kAlign - reinterpret_cast<uintptr_t>(base) % kAlign) % kAlign);
  return py::array_t<uint8_t>({n}, {int64_t{1}}, base + off, holder);
}

}  // namespace bitnet::bind
