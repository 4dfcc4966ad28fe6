// membench.cpp: a streaming read-bandwidth probe for tools/bench_kernels.py's roofline column.
//
// Reads a buffer much larger than the last-level cache with plain 64-bit loads and the same
// software prefetch distance the kernels use, split across the same thread pool.
// Not a full STREAM: read-only, one pattern, meant to say what the packed GEMV could reach.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "bench.h"
#include "threadpool.h"

namespace bitnet {
namespace {

struct Probe {
  const uint64_t* data;
  int64_t words_per_task;
  int64_t words;
  std::vector<uint64_t> sums;
};

void probe_task(void* ctx, int64_t t) {
  Probe& p = *static_cast<Probe*>(ctx);
  const int64_t i0 = t * p.words_per_task, i1 = std::min(p.words, i0 + p.words_per_task);
  // Four interleaved streams with software prefetch, like a 4-row GEMV tile: one sequential
  // stream with no prefetch leaves much of the DRAM bandwidth unused on current cores.
  const int64_t q = (i1 - i0) / 4 / 8 * 8;
  const uint64_t* s[4] = {p.data + i0, p.data + i0 + q, p.data + i0 + 2 * q, p.data + i0 + 3 * q};
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (int64_t i = 0; i < q; i += 8) {
    for (int j = 0; j < 4; ++j) {
#if defined(__GNUC__)
      __builtin_prefetch(s[j] + i + 1024, 0, 2);  // 8 KB ahead
#endif
      a0 += s[j][i] + s[j][i + 4];
      a1 += s[j][i + 1] + s[j][i + 5];
      a2 += s[j][i + 2] + s[j][i + 6];
      a3 += s[j][i + 3] + s[j][i + 7];
    }
  }
  for (int64_t i = i0 + 4 * q; i < i1; ++i) a0 += p.data[i];
  p.sums[static_cast<size_t>(t)] = a0 + a1 + a2 + a3;
}

}  // namespace

double measure_read_bandwidth(int64_t bytes, int threads, int reps) {
  threads = std::max(threads, 1);
  const int64_t words = std::max<int64_t>(bytes / 8, 1024);
  std::vector<uint64_t> buf(static_cast<size_t>(words));
  for (int64_t i = 0; i < words; ++i) buf[static_cast<size_t>(i)] = static_cast<uint64_t>(i);
  Probe p{buf.data(), 0, words, {}};
  const int64_t ntasks = int64_t{threads} * 4;
  p.words_per_task = (words + ntasks - 1) / ntasks;
  p.sums.assign(static_cast<size_t>(ntasks), 0);
  std::vector<double> rates;
  uint64_t check = 0;
  for (int r = 0; r < std::max(reps, 1) + 1; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(threads, ntasks, probe_task, &p);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (uint64_t v : p.sums) check += v;
    if (r > 0) rates.push_back(static_cast<double>(words * 8) / s / 1e9);  // first pass warms up
  }
  std::sort(rates.begin(), rates.end());
  volatile uint64_t sink = check;  // keep the sums alive
  (void)sink;
  return rates[rates.size() / 2];
}

}  // namespace bitnet
