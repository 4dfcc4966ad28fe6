// test_decode_step.cpp: C++ tests for the fused decode step (decode_step.h), run by CTest (and under the
// sanitizers in CI, which is the point: the step indexes caches, heads and scratch by hand).
//
// A small random model (2 layers, grouped-query attention, K off the 128-weight block, both head formats, both
// FFN activations) is stepped through every position of its cache. Checks: every step succeeds with finite
// logits; the logits are bit-identical on every backend and thread count (the integer products are exact and
// the float glue is the same code, so any difference is a bug); the cache holds exactly the positions written;
// a non-finite embedding is reported as layer 0. Its agreement with the training forward is tested in pytest
// (tests/test_fused.py). Exits non-zero on any failure. Needs no Python.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "decode_step.h"

namespace {

using bitnet::Backend;

int g_checks = 0, g_failures = 0;
std::mt19937_64 rng(4242);

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok && ++g_failures <= 20) std::printf("FAIL: %s\n", what.c_str());
}

std::vector<float> randn(int64_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = d(rng);
  return v;
}

struct Owned {  // storage behind a DecodeModel's pointers
  std::vector<std::vector<uint8_t>> packed;
  std::vector<std::vector<float>> floats;
  std::vector<int8_t> q;
};

bitnet::TernaryLinear linear(Owned& o, int64_t n, int64_t k) {
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> codes(static_cast<size_t>(n * k));
  for (auto& c : codes) c = static_cast<int8_t>(d(rng));
  o.packed.emplace_back(static_cast<size_t>(bitnet::packed_nbytes(n, k)));
  bitnet::pack_ref(codes.data(), n, k, o.packed.back().data());
  return {o.packed.back().data(), n, k, 1.0f / std::sqrt(static_cast<float>(k))};
}

const float* floats(Owned& o, std::vector<float> v) {
  o.floats.push_back(std::move(v));
  return o.floats.back().data();
}

bitnet::DecodeModel make_model(Owned& o, bool int8_head, bool swiglu) {
  bitnet::DecodeModel m;
  m.d = 64, m.n_heads = 4, m.n_kv_heads = 2, m.head_dim = 16, m.ffn = 96, m.vocab = 50, m.context = 12;
  m.swiglu = swiglu;
  o.packed.reserve(64), o.floats.reserve(64);  // pointers into them must stay valid
  const int64_t kvd = m.n_kv_heads * m.head_dim;
  for (int l = 0; l < 2; ++l) {
    bitnet::DecodeLayer L;
    L.attn_norm = floats(o, std::vector<float>(64, 1.0f));
    L.attn_sub_norm = floats(o, std::vector<float>(64, 1.0f));
    L.ffn_norm = floats(o, std::vector<float>(64, 1.0f));
    L.ffn_sub_norm = floats(o, std::vector<float>(96, 1.0f));
    L.q = linear(o, m.d, m.d), L.k = linear(o, kvd, m.d), L.v = linear(o, kvd, m.d), L.o = linear(o, m.d, m.d);
    L.gate = linear(o, m.ffn, m.d), L.up = linear(o, m.ffn, m.d), L.down = linear(o, m.d, m.ffn);
    m.layers.push_back(L);
  }
  m.final_norm = floats(o, std::vector<float>(64, 1.0f));
  m.emb.f32 = floats(o, randn(m.vocab * m.d, 0.5f));
  if (int8_head) {
    std::uniform_int_distribution<int> d(-127, 127);
    o.q.resize(static_cast<size_t>(m.vocab * m.d));
    for (auto& e : o.q) e = static_cast<int8_t>(d(rng));
    m.head.q = o.q.data();
    m.head.scale = floats(o, std::vector<float>(static_cast<size_t>(m.vocab), 0.01f));
  } else {
    m.head.f32 = floats(o, randn(m.vocab * m.d, 0.1f));
  }
  std::vector<float> cos(static_cast<size_t>(m.context * m.head_dim)), sin(cos.size());
  for (int64_t t = 0; t < m.context; ++t)
    for (int64_t i = 0; i < m.head_dim; ++i) {
      const double a = t / std::pow(10000.0, 2.0 * (i % 8) / 16.0);
      cos[t * m.head_dim + i] = static_cast<float>(std::cos(a));
      sin[t * m.head_dim + i] = static_cast<float>(std::sin(a));
    }
  m.rope_cos = floats(o, cos), m.rope_sin = floats(o, sin);
  return m;
}

// Logits of every position (context of them) for tokens t*7 % vocab, on one backend and thread count.
std::vector<float> run(const bitnet::DecodeModel& m, Backend b, int threads, std::vector<float>* kcache) {
  const int64_t per = static_cast<int64_t>(m.layers.size()) * m.context * m.n_kv_heads * m.head_dim;
  std::vector<float> k(static_cast<size_t>(per), 0.0f), v(k.size(), 0.0f), out;
  std::vector<float> logits(static_cast<size_t>(m.vocab));
  for (int64_t t = 0; t < m.context; ++t) {
    const int64_t bad =
        bitnet::decode_step(m, (t * 7) % m.vocab, t, k.data(), v.data(), m.context, logits.data(), b, threads);
    check(bad == -1, "step at position " + std::to_string(t) + " succeeds");
    for (float x : logits) check(std::isfinite(x), "finite logits");
    out.insert(out.end(), logits.begin(), logits.end());
  }
  if (kcache) *kcache = k;
  return out;
}

}  // namespace

int main() {
  for (bool int8_head : {false, true})
    for (bool swiglu : {false, true}) {
      Owned o;
      const auto m = make_model(o, int8_head, swiglu);
      const std::string label = std::string(int8_head ? "int8" : "fp32") + " head, " + (swiglu ? "swiglu" : "relu2");
      std::vector<float> kc;
      const auto want = run(m, Backend::kScalar, 1, &kc);
      for (Backend b : bitnet::kAllBackends)
        for (int t : {1, 2}) {
          if (!bitnet::backend_supported(b)) continue;
          check(run(m, b, t, nullptr) == want, label + ": logits bit-identical on backend " + bitnet::backend_name(b) +
                                                   ", threads " + std::to_string(t));
        }
      // every position of every layer's key cache was written (random keys are never exactly zero)
      const int64_t kvd = m.n_kv_heads * m.head_dim;
      bool all_written = true;
      for (size_t l = 0; l < m.layers.size(); ++l)
        for (int64_t t = 0; t < m.context; ++t) {
          const float* row = kc.data() + (static_cast<int64_t>(l) * m.context + t) * kvd;
          bool any = false;
          for (int64_t i = 0; i < kvd; ++i) any = any || row[i] != 0.0f;
          all_written = all_written && any;
        }
      check(all_written, label + ": every cache position written");
      // a non-finite embedding row stops the step in layer 0
      std::vector<float> emb(m.emb.f32, m.emb.f32 + m.vocab * m.d);
      emb[3 * m.d + 5] = NAN;
      auto m2 = m;
      m2.emb.f32 = emb.data();
      std::vector<float> k(static_cast<size_t>(2 * m.context * kvd)), v(k.size()), logits(static_cast<size_t>(m.vocab));
      check(bitnet::decode_step(m2, 3, 0, k.data(), v.data(), m.context, logits.data(), Backend::kScalar, 1) == 0,
            label + ": NaN embedding reported as layer 0");
    }
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
