// The softmax of one row of attention scores: the CPU prefill's hottest loop after the GEMMs
// (tens of millions of exp per layer at 24K tokens). This file alone is built with -ffast-math
// (engine/CMakeLists.txt): only then does glibc declare the vector exp of libmvec, and GCC turns
// the exp loop into 4-, 8- or 16-wide calls (one clone per instruction set, picked at load time).
// libmvec's expf is within 4 ulp; the scores are finite, so fast-math's no-NaN assumption holds.
#include <algorithm>
#include <cmath>

#include "lightdesk/cpu_ops.h"

namespace lightdesk::cpu {

__attribute__((target_clones("avx512f", "avx2", "default")))
void softmax_row(float* row, std::int64_t count) {
  float max_score = row[0];
  for (std::int64_t j = 1; j < count; ++j) max_score = std::max(max_score, row[j]);
  float sum = 0.0f;
  for (std::int64_t j = 0; j < count; ++j) sum += row[j] = std::exp(row[j] - max_score);
  const float inverse = 1.0f / sum;
  for (std::int64_t j = 0; j < count; ++j) row[j] *= inverse;
}

}  // namespace lightdesk::cpu
