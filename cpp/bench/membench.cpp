// membench.cpp: a streaming read-bandwidth probe for tools/bench/bench_kernels.py's roofline column.
//
// Reads a buffer much larger than the last-level cache with plain 64-bit loads and software prefetch, split
// across the same thread pool, each task reading its range as `streams` interleaved sequential streams.
// Not a full STREAM: read-only, one pattern, meant to say what the packed GEMV could reach.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "bench.h"
#include "threadpool.h"

namespace bitnet {
namespace {

constexpr int kMaxStreams = 8;

struct Probe {
  const uint64_t* data;
  int64_t words_per_task;
  int64_t words;
  int streams;
  std::vector<uint64_t> sums;
};

void probe_task(void* ctx, int64_t t) {
  Probe& p = *static_cast<Probe*>(ctx);
  const int64_t i0 = t * p.words_per_task, i1 = std::min(p.words, i0 + p.words_per_task);
  // `streams` interleaved sequential streams (the task's range cut in that many parts) with software
  // prefetch, like a GEMV tile reading that many rows far apart: one sequential stream leaves much of the
  // DRAM bandwidth unused on current cores (docs/kernels.md, "What bounds the AVX2 kernels", has figures).
  const int ns = p.streams;
  const int64_t q = (i1 - i0) / ns / 8 * 8;
  const uint64_t* s[kMaxStreams];
  for (int j = 0; j < ns; ++j) s[j] = p.data + i0 + j * q;
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (int64_t i = 0; i < q; i += 8) {
    for (int j = 0; j < ns; ++j) {
#if defined(__GNUC__)
      __builtin_prefetch(s[j] + i + 1024, 0, 2);  // 8 KB ahead
#endif
      a0 += s[j][i] + s[j][i + 4];
      a1 += s[j][i + 1] + s[j][i + 5];
      a2 += s[j][i + 2] + s[j][i + 6];
      a3 += s[j][i + 3] + s[j][i + 7];
    }
  }
  for (int64_t i = i0 + ns * q; i < i1; ++i) a0 += p.data[i];
  p.sums[static_cast<size_t>(t)] = a0 + a1 + a2 + a3;
}

}  // namespace

double measure_read_bandwidth(int64_t bytes, int threads, int reps, int streams) {
  threads = std::max(threads, 1);
  streams = std::clamp(streams, 1, kMaxStreams);
  const int64_t words = std::max<int64_t>(bytes / 8, 1024);
  std::vector<uint64_t> buf(static_cast<size_t>(words));
  for (int64_t i = 0; i < words; ++i) buf[static_cast<size_t>(i)] = static_cast<uint64_t>(i);
  Probe p{buf.data(), 0, words, streams, {}};
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
