// bindings_decode.cpp: the decode-time parts of bitnet_ref._core beyond the ternary kernels: the exact int8 x
// int8 product of the int8 head (int8_matmul.h) and the fused forward (decode_step.h: a token, a prompt, a batch).
//
// As bindings.cpp: only converts and checks; every argument (type, dtype, shape, contiguity, range) is checked
// before a data pointer is read, and a bad one raises TypeError/ValueError with one line. FusedDecoder keeps a
// reference to every array it was built from, so the weights cannot be freed under it.
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"
#include "decode_step.h"
#include "int8_matmul.h"

namespace {

using bitnet::Backend;
using namespace bitnet::bind;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// obj as a C-contiguous array of the given dtype kind/itemsize and exact shape (checks only, never converts).
py::array checked(const py::object& obj, const std::string& what, char kind, int itemsize,
                  const std::vector<int64_t>& shape) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(what + " must be a numpy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  auto a = py::reinterpret_borrow<py::array>(obj);
  const char* want = kind == 'f' ? "float32" : kind == 'i' ? (itemsize == 1 ? "int8" : "int64") : "uint8";
  if (a.dtype().kind() != kind || a.itemsize() != itemsize)
    throw py::type_error(what + " must have dtype " + want + ", got " + dtype_name(a));
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
  if (!same) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    throw py::value_error(what + " must have shape " + s + (shape.size() == 1 ? ",)" : ")") + ", got " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(what + " must be C-contiguous");
  return a;
}

py::array_t<int32_t> int8_matmul(const py::object& x_obj, const py::object& w_obj, const std::string& backend_name,
                                 int threads) {
  py::array x = checked_array(x_obj, "x", 'i', 2);
  py::array w = checked_array(w_obj, "w", 'i', 2);
  const int64_t m = x.shape(0), k = x.shape(1), n = w.shape(0);
  if (w.shape(1) != k)
    throw py::value_error("x has " + std::to_string(k) + " columns but w has " + std::to_string(w.shape(1)));
  if (k > bitnet::kInt8MaxK)
    throw py::value_error("k=" + std::to_string(k) + " exceeds the supported maximum " +
                          std::to_string(bitnet::kInt8MaxK) + " (int32 exactness bound)");
  if (threads < 0) throw py::value_error("threads must be >= 1 (or 0 for the default)");
  const Backend backend = parse_backend(backend_name);
  py::array_t<int32_t> out({m, n});
  const auto* xp = static_cast<const int8_t*>(x.data());
  const auto* wp = static_cast<const int8_t*>(w.data());
  int32_t* yp = out.mutable_data();
  run_kernel(m * n * k, [&] { bitnet::int8_matmul(xp, wp, yp, m, n, k, backend, threads); });
  return out;
}

// The fused decoder: a DecodeModel over arrays it keeps alive.
class FusedDecoder {
 public:
  FusedDecoder(py::dict dims, py::list linears, py::list norms, const py::object& final_norm, py::tuple emb,
               py::tuple head, const py::object& rope_cos, const py::object& rope_sin, const std::string& format,
               const std::string& backend, int threads) {
    auto dim = [&](const char* key, int64_t lo, int64_t hi) {
      if (!dims.contains(key)) throw py::value_error(std::string("dims has no '") + key + "'");
      const auto v = dims[key].cast<int64_t>();
      if (v < lo || v > hi)
        throw py::value_error(std::string("dims['") + key + "'] must be in [" + std::to_string(lo) + ", " +
                              std::to_string(hi) + "], got " + std::to_string(v));
      return v;
    };
    auto& m = m_;
    m.d = dim("d_model", 2, bitnet::kInt8MaxK);
    m.n_heads = dim("n_heads", 1, m.d);
    m.n_kv_heads = dim("n_kv_heads", 1, m.n_heads);
    m.ffn = dim("ffn_hidden", 1, bitnet::kInt8MaxK);
    m.vocab = dim("vocab_size", 2, int64_t{1} << 24);
    m.context = dim("context", 1, int64_t{1} << 24);
    const int64_t n_layers = dim("n_layers", 1, 1 << 16);
    if (m.d % m.n_heads || m.n_heads % m.n_kv_heads || (m.d / m.n_heads) % 2)
      throw py::value_error("d_model, n_heads, n_kv_heads do not make whole, even heads and whole groups");
    m.head_dim = m.d / m.n_heads;
    if (!dims.contains("swiglu") || !dims.contains("eps")) throw py::value_error("dims needs 'swiglu' and 'eps'");
    m.swiglu = dims["swiglu"].cast<bool>();
    m.eps = dims["eps"].cast<float>();
    if (!std::isfinite(m.eps) || !(m.eps > 0.0f)) throw py::value_error("eps must be a finite positive float");
    m.format = parse_format(format);
    backend_ = parse_backend(backend);
    if (threads < 0) throw py::value_error("threads must be >= 1 (or 0 for the default)");
    threads_ = threads;
    const int64_t kvd = m.n_kv_heads * m.head_dim;
    if (py::len(linears) != static_cast<size_t>(7 * n_layers))
      throw py::value_error("linears must hold 7 (packed, beta) pairs per layer (q, k, v, o, gate, up, down)");
    if (py::len(norms) != static_cast<size_t>(4 * n_layers))
      throw py::value_error("norms must hold 4 arrays per layer (attn, attn_sub, ffn, ffn_sub)");
    const int64_t shapes[7][2] = {{m.d, m.d},   {kvd, m.d},   {kvd, m.d},  {m.d, m.d},
                                  {m.ffn, m.d}, {m.ffn, m.d}, {m.d, m.ffn}};
    m.layers.resize(static_cast<size_t>(n_layers));
    for (int64_t l = 0; l < n_layers; ++l) {
      auto& L = m.layers[static_cast<size_t>(l)];
      bitnet::TernaryLinear* lins[7] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
      for (int i = 0; i < 7; ++i) {
        const std::string what = "layer " + std::to_string(l) + " linear " + std::to_string(i);
        auto pair = linears[static_cast<size_t>(7 * l + i)].cast<py::tuple>();
        if (pair.size() != 2) throw py::value_error(what + " must be a (packed, beta) pair");
        const int64_t n = shapes[i][0], k = shapes[i][1];
        py::array p = checked(pair[0], what + " packed", 'u', 1, {packed_nbytes_of(m.format, n, k)});
        const auto beta = static_cast<float>(pair[1].cast<double>());
        if (!std::isfinite(beta) || !(beta > 0.0f)) throw py::value_error(what + " beta must be finite and > 0");
        *lins[i] = {static_cast<const uint8_t*>(p.data()), n, k, beta};
        keep_.push_back(p);
      }
      const float** ns[4] = {&L.attn_norm, &L.attn_sub_norm, &L.ffn_norm, &L.ffn_sub_norm};
      for (int i = 0; i < 4; ++i)
        *ns[i] = f32(norms[static_cast<size_t>(4 * l + i)], "layer " + std::to_string(l) + " norm " + std::to_string(i),
                     {i == 3 ? m.ffn : m.d});
    }
    m.final_norm = f32(final_norm, "final_norm", {m.d});
    m.emb = rows(emb, "emb");
    m.head = rows(head, "head");
    m.rope_cos = f32(rope_cos, "rope_cos", {m.context, m.head_dim});
    m.rope_sin = f32(rope_sin, "rope_sin", {m.context, m.head_dim});
  }

  // tokens (B, T) int64; pos: an int or (B,) int64, each sequence's first position; kcache/vcache (B, n_layers,
  // max_len, n_kv_heads, head_dim) float32 -> logits (B, T, vocab), or (B, vocab) (each sequence's last) if last_only.
  py::array_t<float> forward(const py::object& tokens_obj, const py::object& pos_obj, const py::object& k_obj,
                             const py::object& v_obj, bool last_only) {
    if (!py::isinstance<py::array>(tokens_obj)) throw py::type_error("tokens must be a numpy array");
    auto tk = py::reinterpret_borrow<py::array>(tokens_obj);
    if (tk.ndim() != 2) throw py::value_error("tokens must be 2-D (sequences, positions)");
    const int64_t b = tk.shape(0), t = tk.shape(1);
    tk = checked(tokens_obj, "tokens", 'i', 8, {b, t});
    if (last_only) return run(tk, b, t, pos_obj, k_obj, v_obj, true, {b, m_.vocab});
    return run(tk, b, t, pos_obj, k_obj, v_obj, false, {b, t, m_.vocab});
  }

  // tokens (B,) int64, one per sequence -> logits (B, vocab): forward with T = 1.
  py::array_t<float> step(const py::object& tokens_obj, const py::object& pos_obj, const py::object& k_obj,
                          const py::object& v_obj) {
    if (!py::isinstance<py::array>(tokens_obj)) throw py::type_error("tokens must be a numpy array");
    auto tk = py::reinterpret_borrow<py::array>(tokens_obj);
    if (tk.ndim() != 1) throw py::value_error("tokens must be 1-D");
    const int64_t b = tk.shape(0);
    tk = checked(tokens_obj, "tokens", 'i', 8, {b});
    return run(tk, b, 1, pos_obj, k_obj, v_obj, true, {b, m_.vocab});
  }

  void set_threads(int threads) {
    if (threads < 0) throw py::value_error("threads must be >= 1 (or 0 for the default)");
    threads_ = threads;
  }

 private:
  // Checks everything else (pos, the caches, every token) before a pointer is read, then runs decode_forward with
  // the GIL released.
  py::array_t<float> run(const py::array& tk, int64_t b, int64_t t, const py::object& pos_obj, const py::object& k_obj,
                         const py::object& v_obj, bool last_only, const std::vector<int64_t>& out_shape) {
    if (t < 1) throw py::value_error("tokens must hold at least one position per sequence");
    if (!py::isinstance<py::array>(k_obj)) throw py::type_error("kcache must be a numpy array");
    const auto ka = py::reinterpret_borrow<py::array>(k_obj);
    if (ka.ndim() != 5) throw py::value_error("kcache must be 5-D");
    const int64_t max_len = ka.shape(2);
    const std::vector<int64_t> cshape = {b, static_cast<int64_t>(m_.layers.size()), max_len, m_.n_kv_heads,
                                         m_.head_dim};
    py::array kc = checked(k_obj, "kcache", 'f', 4, cshape);
    py::array vc = checked(v_obj, "vcache", 'f', 4, cshape);
    if (!kc.writeable() || !vc.writeable()) throw py::value_error("kcache and vcache must be writable");
    {
      const auto* k0 = static_cast<const char*>(kc.data());
      const auto* v0 = static_cast<const char*>(vc.data());
      if (kc.nbytes() > 0 && k0 < v0 + vc.nbytes() && v0 < k0 + kc.nbytes())
        throw py::value_error("kcache and vcache must not overlap");
    }
    if (max_len > m_.context) throw py::value_error("the cache is longer than the model's context");
    std::vector<int64_t> pos(static_cast<size_t>(b));
    if (py::isinstance<py::array>(pos_obj)) {
      py::array pa = checked(pos_obj, "pos", 'i', 8, {b});
      std::copy_n(static_cast<const int64_t*>(pa.data()), b, pos.begin());
    } else {
      if (!py::isinstance<py::int_>(pos_obj) || py::isinstance<py::bool_>(pos_obj))
        throw py::type_error("pos must be an int or a (sequences,) int64 numpy array");
      int overflow = 0;
      const long long p = PyLong_AsLongLongAndOverflow(pos_obj.ptr(), &overflow);
      if (overflow != 0) throw py::value_error("pos is outside the cache of " + std::to_string(max_len));
      std::fill(pos.begin(), pos.end(), static_cast<int64_t>(p));
    }
    for (int64_t i = 0; i < b; ++i)
      if (pos[i] < 0 || pos[i] > max_len - t)
        throw py::value_error("positions " + std::to_string(pos[i]) + " .. " + std::to_string(pos[i] + t - 1) +
                              " of sequence " + std::to_string(i) + " are outside the cache of " +
                              std::to_string(max_len));
    const auto* tokens = static_cast<const int64_t*>(tk.data());
    for (int64_t i = 0; i < b * t; ++i)
      if (tokens[i] < 0 || tokens[i] >= m_.vocab)
        throw py::value_error("token " + std::to_string(tokens[i]) + " is outside the vocabulary of " +
                              std::to_string(m_.vocab));
    py::array_t<float> out(out_shape);
    bitnet::ForwardBatch fb;
    fb.tokens = tokens, fb.pos = pos.data(), fb.b = b, fb.t = t;
    fb.kcache = static_cast<float*>(kc.mutable_data()), fb.vcache = static_cast<float*>(vc.mutable_data());
    fb.max_len = max_len, fb.logits = out.mutable_data(), fb.all_logits = !last_only;
    int64_t bad;
    {
      py::gil_scoped_release release;
      bad = bitnet::decode_forward(m_, fb, backend_, threads_);
    }
    if (bad >= 0)
      throw py::value_error("non-finite activations in layer " + std::to_string(bad) + " (x must be finite)");
    return out;
  }

  const float* f32(const py::object& obj, const std::string& what, const std::vector<int64_t>& shape) {
    py::array a = checked(obj, what, 'f', 4, shape);
    keep_.push_back(a);
    return static_cast<const float*>(a.data());
  }

  // (f32 (V, d), None, None) or (None, q int8 (V, d), scale float32 (V,)).
  bitnet::RowMatrix rows(py::tuple t, const std::string& what) {
    if (t.size() != 3) throw py::value_error(what + " must be (float32 rows, None, None) or (None, int8 rows, scales)");
    bitnet::RowMatrix r;
    if (!t[0].is_none()) {
      r.f32 = f32(t[0], what + " rows", {m_.vocab, m_.d});
      return r;
    }
    py::array q = checked(t[1], what + " int8 rows", 'i', 1, {m_.vocab, m_.d});
    keep_.push_back(q);
    r.q = static_cast<const int8_t*>(q.data());
    r.scale = f32(t[2], what + " scales", {m_.vocab});
    return r;
  }

  bitnet::DecodeModel m_;
  Backend backend_ = Backend::kScalar;
  int threads_ = 0;
  std::vector<py::array> keep_;
};

}  // namespace

void register_decode(py::module_& m) {
  m.attr("INT8_MAX_K") = bitnet::kInt8MaxK;
  m.def("int8_matmul", &int8_matmul, py::arg("x"), py::arg("w"), py::arg("backend") = "", py::arg("threads") = 0,
        "Exact int32 (M, N) = x (M, K) int8 times w (N, K) int8 transposed. backend '' = best.");
  py::class_<FusedDecoder>(m, "FusedDecoder")
      .def(py::init<py::dict, py::list, py::list, py::object, py::tuple, py::tuple, py::object, py::object, std::string,
                    std::string, int>(),
           py::arg("dims"), py::arg("linears"), py::arg("norms"), py::arg("final_norm"), py::arg("emb"),
           py::arg("head"), py::arg("rope_cos"), py::arg("rope_sin"), py::arg("format") = "2", py::arg("backend") = "",
           py::arg("threads") = 0)
      .def("step", &FusedDecoder::step, py::arg("tokens"), py::arg("pos"), py::arg("kcache"), py::arg("vcache"),
           "One token per sequence at position pos (an int, or one per sequence): appends to the caches, returns "
           "logits (B, vocab) float32.")
      .def("forward", &FusedDecoder::forward, py::arg("tokens"), py::arg("pos"), py::arg("kcache"), py::arg("vcache"),
           py::arg("last_only") = false,
           "T tokens per sequence (tokens (B, T)) from position pos (an int, or one per sequence) in one call: "
           "appends to the caches, returns logits (B, T, vocab) float32, or (B, vocab) for each sequence's last "
           "token if last_only.")
      .def("set_threads", &FusedDecoder::set_threads, py::arg("threads"));
}
