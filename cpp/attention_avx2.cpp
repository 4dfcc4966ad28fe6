// attention_avx2.cpp: attention_kernel.h compiled with AVX2 (and no FMA contraction): eight float lanes per
// instruction and two-row score tiles, the same numbers as the portable build. Only x86-64; called by attention.cpp
// after it has checked the CPU.
#include "attention_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)

namespace bitnet {

void attention_block_avx2(const AttentionArgs& a, int64_t r0, int64_t rows, int64_t h) {
  thread_local std::vector<float> scratch;
  attend_block(a, r0, rows, h, scratch);
}

}  // namespace bitnet

#endif  // x86-64
