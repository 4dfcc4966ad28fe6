// test_decode_step.cpp: C++ tests for the fused forward (decode_step.h: a token, a prompt, a batch of sequences),
// run by CTest (and under valgrind and the sanitizers in CI, which is the point: the forward indexes caches, heads
// and scratch by hand).
//
// A small random model (2 layers, grouped-query attention, K off the 128-weight block, both head formats, both
// FFN activations) is stepped through every position of its cache. Checks: every step succeeds with finite
// logits; the logits are bit-identical on every backend and thread count (the integer products are exact and
// the float glue is the same code, so any difference is a bug); the cache holds exactly the positions written;
// a non-finite embedding is reported as layer 0. Then the same positions as prompts (prefill): in one call, in
// two calls, with only the last logits, longer than one chunk of rows; and as a batch of sequences at different
// positions: all bit-identical with the token-at-a-time run, logits and caches. And fast_exp (vector_math.h)
// within 1 ulp of std::exp over its whole range. Its agreement with the training forward is tested in pytest
// (tests/test_fused.py). Exits non-zero on any failure. Needs no Python.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "decode_step.h"
#include "vector_math.h"

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

bitnet::DecodeModel make_model(Owned& o, bool int8_head, bool swiglu, int64_t context = 12) {
  bitnet::DecodeModel m;
  m.d = 64, m.n_heads = 4, m.n_kv_heads = 2, m.head_dim = 16, m.ffn = 96, m.vocab = 50, m.context = context;
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

int64_t token_at(int64_t seq, int64_t t, int64_t vocab) { return (t * 7 + seq * 11) % vocab; }

// Logits of every position (context of them) for tokens token_at(seq, t), a token per call, on one backend and
// thread count; the key cache it filled in *kcache if asked.
std::vector<float> run(const bitnet::DecodeModel& m, Backend b, int threads, std::vector<float>* kcache,
                       int64_t seq = 0) {
  const int64_t per = static_cast<int64_t>(m.layers.size()) * m.context * m.n_kv_heads * m.head_dim;
  std::vector<float> k(static_cast<size_t>(per), 0.0f), v(k.size(), 0.0f), out;
  std::vector<float> logits(static_cast<size_t>(m.vocab));
  for (int64_t t = 0; t < m.context; ++t) {
    const int64_t bad =
        bitnet::decode_step(m, token_at(seq, t, m.vocab), t, k.data(), v.data(), m.context, logits.data(), b, threads);
    check(bad == -1, "step at position " + std::to_string(t) + " succeeds");
    for (float x : logits) check(std::isfinite(x), "finite logits");
    out.insert(out.end(), logits.begin(), logits.end());
  }
  if (kcache) *kcache = k;
  return out;
}

// B sequences (seq ids s0 .. s0 + b - 1), each t tokens from its own position pos[i], into caches (b, L, context,
// Hkv, hd); returns the logits (all of them, or each sequence's last).
std::vector<float> forward(const bitnet::DecodeModel& m, int64_t s0, const std::vector<int64_t>& pos, int64_t t,
                           std::vector<float>& k, std::vector<float>& v, bool all, Backend backend, int threads) {
  const auto b = static_cast<int64_t>(pos.size());
  std::vector<int64_t> tokens(static_cast<size_t>(b * t));
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < t; ++j) tokens[i * t + j] = token_at(s0 + i, pos[i] + j, m.vocab);
  std::vector<float> logits(static_cast<size_t>((all ? b * t : b) * m.vocab));
  bitnet::ForwardBatch fb;
  fb.tokens = tokens.data(), fb.pos = pos.data(), fb.b = b, fb.t = t, fb.kcache = k.data(), fb.vcache = v.data();
  fb.max_len = m.context, fb.logits = logits.data(), fb.all_logits = all;
  check(bitnet::decode_forward(m, fb, backend, threads) == -1, "forward succeeds");
  return logits;
}

// Prompts: the positions of run() as one call, as two, last logits only, on every backend and thread count; the
// logits and the caches bit-identical with run()'s.
void test_prefill(const bitnet::DecodeModel& m, const std::string& label) {
  std::vector<float> kc;
  const auto want = run(m, Backend::kScalar, 1, &kc);
  const size_t per = kc.size(), V = static_cast<size_t>(m.vocab), T = static_cast<size_t>(m.context);
  for (Backend b : bitnet::kAllBackends)
    for (int th : {1, 2}) {
      if (!bitnet::backend_supported(b)) continue;
      const std::string where = label + ", backend " + bitnet::backend_name(b) + ", threads " + std::to_string(th);
      std::vector<float> k(per, 0.0f), v(per, 0.0f);
      check(forward(m, 0, {0}, m.context, k, v, true, b, th) == want && k == kc, where + ": prefill in one call");
      std::vector<float> k2(per, 0.0f), v2(per, 0.0f);
      auto first = forward(m, 0, {0}, 5, k2, v2, false, b, th);
      auto rest = forward(m, 0, {5}, m.context - 5, k2, v2, true, b, th);
      const bool same = std::equal(first.begin(), first.end(), want.begin() + 4 * V) &&
                        std::equal(rest.begin(), rest.end(), want.begin() + 5 * V) && k2 == kc && v2 == v;
      check(same, where + ": prefill in two calls, the first with its last logits only");
    }
  (void)T;
}

// A batch of three sequences at different positions (prefixes of 3, 7 and 5 tokens, each filled alone), then two
// more tokens each in one call: every row as in the sequence's own token-at-a-time run.
void test_batch(const bitnet::DecodeModel& m, const std::string& label) {
  const size_t per = static_cast<size_t>(m.layers.size() * m.context * m.n_kv_heads * m.head_dim);
  const int64_t V = m.vocab;
  std::vector<std::vector<float>> want, kwant;
  for (int64_t s = 0; s < 3; ++s) {
    std::vector<float> kc;
    want.push_back(run(m, Backend::kScalar, 1, &kc, s));
    kwant.push_back(kc);
  }
  const std::vector<int64_t> pos = {3, 7, 5};
  for (Backend b : bitnet::kAllBackends)
    for (int th : {1, 2}) {
      if (!bitnet::backend_supported(b)) continue;
      std::vector<float> k(3 * per, 0.0f), v(3 * per, 0.0f);
      for (int64_t s = 0; s < 3; ++s) {  // each sequence's prefix, alone, into its slice of the caches
        std::vector<float> ks(per, 0.0f), vs(per, 0.0f);
        forward(m, s, {0}, pos[s], ks, vs, false, b, th);
        std::copy(ks.begin(), ks.end(), k.begin() + s * per);
        std::copy(vs.begin(), vs.end(), v.begin() + s * per);
      }
      const auto got = forward(m, 0, pos, 2, k, v, true, b, th);  // (3, 2, V)
      bool same = true;
      for (int64_t s = 0; s < 3; ++s) {
        same = same && std::equal(got.begin() + s * 2 * V, got.begin() + (s + 1) * 2 * V, want[s].begin() + pos[s] * V);
        const auto cache = k.begin() + s * per;  // layer 0's filled positions, and layer 1's
        const int64_t kvd = m.n_kv_heads * m.head_dim, filled = (pos[s] + 2) * kvd;
        same =
            same && std::equal(cache, cache + filled, kwant[s].begin()) &&
            std::equal(cache + m.context * kvd, cache + m.context * kvd + filled, kwant[s].begin() + m.context * kvd);
      }
      check(same, label + ": a batch at positions 3, 7, 5 as each sequence alone, backend " + bitnet::backend_name(b) +
                      ", threads " + std::to_string(th));
    }
}

// A prompt longer than one chunk of rows (decode_step.cpp's kChunkRows = 256) in one call, on the default backend.
void test_long_prefill() {
  Owned o;
  const auto m = make_model(o, true, false, 300);
  std::vector<float> kc;
  const auto want = run(m, bitnet::default_backend(), 1, &kc);
  std::vector<float> k(kc.size(), 0.0f), v(kc.size(), 0.0f);
  const auto got = forward(m, 0, {0}, m.context, k, v, true, bitnet::default_backend(), 2);
  check(got == want && k == kc, "a prompt of 300 positions (two chunks) in one call");
}

// fast_exp against std::exp (float32, correctly rounded to within 0.5 ulp by glibc) over [-87, 88]: within 1 ulp.
void test_fast_exp() {
  int64_t worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.000977f) {
    const float want = std::exp(x), got = bitnet::fast_exp(x);
    const int64_t ulp = std::llabs(static_cast<int64_t>(bitnet::to_bits(got)) - bitnet::to_bits(want));
    worst = std::max(worst, ulp);
  }
  check(worst <= 1, "fast_exp within 1 ulp of std::exp on [-87, 88] (worst " + std::to_string(worst) + ")");
  check(bitnet::fast_exp(-1000.0f) > 0.0f && std::isfinite(bitnet::fast_exp(1000.0f)), "fast_exp clamps");
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
      test_prefill(m, label);
      test_batch(m, label);
    }
  test_long_prefill();
  test_fast_exp();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
