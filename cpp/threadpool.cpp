// threadpool.cpp: implementation of parallel_for (see threadpool.h for the design).
#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define BITNET_HAVE_ATFORK 1
#endif

namespace bitnet {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How long an idle worker keeps polling before it sleeps. Long enough to bridge the Python work
// between two kernel calls of a decode step, short enough not to hog a shared core.
constexpr auto kSpin = std::chrono::microseconds(100);

class Pool {
 public:
  static constexpr int kMaxWorkers = 1023;

  Pool() : slots_(new Slot[kMaxWorkers]) {}

  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
    }
    word_.fetch_add(1);
    cv_work_.notify_all();
    for (auto& t : workers_) t.join();
  }

  std::mutex& job_mutex() { return job_mu_; }

  // Caller holds job_mutex().
  void run(int threads, int64_t ntasks, TaskFn fn, void* ctx) {
    const int helpers = std::min(threads - 1, kMaxWorkers);
    while (static_cast<int>(workers_.size()) < helpers) {
      const int id = static_cast<int>(workers_.size());
      const uint64_t seen = word_.load();
      workers_.emplace_back([this, id, seen] { worker(id, seen); });
    }
    fn_ = fn;
    ctx_ = ctx;
    ntasks_ = ntasks;
    next_.store(0, std::memory_order_relaxed);
    // A worker takes part only by moving its slot from kAssigned to kStarted; the release stores
    // publish the job fields above to it.
    for (int i = 0; i < static_cast<int>(workers_.size()); ++i)
      slots_[i].state.store(i < helpers ? kAssigned : kCancelled, std::memory_order_release);
    word_.fetch_add(1);  // seq_cst: wakes spinning workers; pairs with sleepers_ below
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_work_.notify_all();
    }
    drain();
    // All tasks are taken. Helpers that have not started yet (asleep, or descheduled on a busy
    // machine) are cancelled rather than waited for; only helpers mid-task are waited for.
    for (int i = 0; i < helpers; ++i) {
      int expected = kAssigned;
      if (slots_[i].state.compare_exchange_strong(expected, kCancelled)) continue;
      for (unsigned spin = 0; slots_[i].state.load(std::memory_order_acquire) != kFinished; ++spin) {
        if (spin < 4096) {
          cpu_relax();
        } else {
          std::this_thread::yield();
        }
      }
    }
  }

 private:
  enum : int { kAssigned = 0, kStarted = 1, kCancelled = 2, kFinished = 3 };
  struct alignas(64) Slot {
    std::atomic<int> state{kCancelled};
  };

  void drain() {
    for (int64_t t; (t = next_.fetch_add(1, std::memory_order_relaxed)) < ntasks_;) fn_(ctx_, t);
  }

  void worker(int id, uint64_t seen) {
    for (;;) {
      // Wait for a new job: spin first, then sleep.
      auto t0 = std::chrono::steady_clock::now();
      for (unsigned i = 0; word_.load(std::memory_order_acquire) == seen; ++i) {
        cpu_relax();
        if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 > kSpin) {
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1);
          cv_work_.wait(lk, [&] { return word_.load() != seen || stop_.load(); });
          sleepers_.fetch_sub(1);
          break;
        }
      }
      seen = word_.load(std::memory_order_acquire);
      if (stop_.load()) return;
      int expected = kAssigned;
      if (!slots_[id].state.compare_exchange_strong(expected, kStarted, std::memory_order_acq_rel)) continue;
      drain();
      slots_[id].state.store(kFinished, std::memory_order_release);
    }
  }

  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;      // guards sleeping/waking
  std::condition_variable cv_work_;
  std::vector<std::thread> workers_;
  std::unique_ptr<Slot[]> slots_;
  std::atomic<uint64_t> word_{0};  // job generation
  std::atomic<int> sleepers_{0};
  std::atomic<int64_t> next_{0};
  // The job; written by the caller before the slots are armed, read by workers that start it.
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t ntasks_ = 0;
  std::atomic<bool> stop_{false};
};

// The pool is created on first use and deliberately never destroyed: joining threads from a
// static destructor at interpreter exit is a classic hang. After fork() the child has no workers,
// so it drops (leaks) the parent's pool and makes a fresh one on its next call.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_pool_mu;

#ifdef BITNET_HAVE_ATFORK
void forget_pool_in_child() { g_pool.store(nullptr); }
#endif

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  std::lock_guard<std::mutex> lk(g_pool_mu);
  p = g_pool.load();
  if (!p) {
#ifdef BITNET_HAVE_ATFORK
    static const bool registered = (pthread_atfork(nullptr, nullptr, forget_pool_in_child), true);
    (void)registered;
#endif
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

void parallel_for(int threads, int64_t ntasks, TaskFn fn, void* ctx) {
  if (threads > ntasks) threads = static_cast<int>(ntasks);
  if (threads <= 1) {
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  Pool& p = pool();
  std::unique_lock<std::mutex> lk(p.job_mutex(), std::try_to_lock);
  if (!lk.owns_lock()) {  // another thread's job is running: do ours alone rather than queue
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  p.run(threads, ntasks, fn, ctx);
}

}  // namespace bitnet
