// threadpool.h: a small persistent thread pool for splitting kernel rows across cores.
//
// Workers are created once (grown on demand) and then wait for jobs, so a call pays a wake-up,
// never a thread creation. Workers spin briefly after a job before sleeping on a condition
// variable, so back-to-back calls (a decode loop) find them awake. The calling thread takes part
// in every job and takes tasks dynamically; once all tasks are taken it cancels helpers that have
// not started (asleep, or descheduled on a busy machine) instead of waiting for them, and waits
// only for helpers mid-task. One job runs at a time; a caller that finds the pool busy (another Python thread
// released the GIL and is mid-call) runs its job alone on its own thread instead of waiting.
// Not a general task system: no futures, no nesting, no priorities.
#pragma once

#include <cstdint>

namespace bitnet {

// fn(ctx, task) is called exactly once for each task in [0, ntasks), from up to `threads`
// threads (the caller included). Returns when all tasks are done.
using TaskFn = void (*)(void* ctx, int64_t task);
void parallel_for(int threads, int64_t ntasks, TaskFn fn, void* ctx);

}  // namespace bitnet
