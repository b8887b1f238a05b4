// The element-wise activations over arrays. Like cpu_softmax_row.cpp, built with -ffast-math so
// that GCC calls libmvec's vector exp (within 4 ulp), one clone per instruction set; an exp that
// overflows gives silu -0 and sigmoid 0, as in exact arithmetic.
#include "lightdesk/cpu_ops.h"

namespace lightdesk::cpu {

__attribute__((target_clones("avx512f", "avx2", "default")))
void silu(float* x, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) x[i] = silu(x[i]);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void multiply_by_sigmoid(float* x, const float* gate, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) x[i] *= sigmoid(gate[i]);
}

}  // namespace lightdesk::cpu
