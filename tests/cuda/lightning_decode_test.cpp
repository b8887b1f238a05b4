// The batched lightning decode (one launch for a batch of sequences) against the CPU reference
// run on each sequence alone, on fresh random inputs with poisoned outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "lightdesk/engine.h"
#include "lightdesk/cpu_ops.h"

namespace lightdesk {
namespace {

using namespace test;  // the shared helpers of the GPU tests (cuda_test_util.h)

template <typename T>
class CudaLightningDecodeTest : public GpuTest {
 protected:
  test::Random random;
  ThreadPool pool{2};
};

TYPED_TEST_SUITE(CudaLightningDecodeTest, ActivationTypes, ActivationName);

struct BatchShape {
  int batch, heads, head_dim;
  bool state_table;  // states through a table of pointers in shuffled order, else strided
};

TYPED_TEST(CudaLightningDecodeTest, BatchMatchesEachSequenceAlone) {
  // Batch and head counts on both sides of the kernel's choice between column slices and whole
  // rows (heads x batch >= 256); head_dim 100 leaves a slice part-empty, 42 is not a multiple of 4.
  for (const BatchShape& s :
       {BatchShape{1, 64, 128, false}, BatchShape{3, 4, 16, false}, BatchShape{16, 8, 128, true},
        BatchShape{5, 64, 128, false}, BatchShape{37, 8, 128, true}, BatchShape{9, 32, 100, false},
        BatchShape{70, 4, 42, true}, BatchShape{256, 2, 64, false}}) {
    SCOPED_TRACE("batch " + std::to_string(s.batch) + ", " + std::to_string(s.heads) + "x" +
                 std::to_string(s.head_dim) + (s.state_table ? ", state table" : ", strided states"));
    const std::int64_t d = s.head_dim, B = s.batch;
    const std::int64_t state_size = s.heads * d * d;
    // Strided states lie one spare state apart, so a write outside its state shows in a gap.
    const std::int64_t stride = 2 * state_size;
    DeviceArray<TypeParam> qkv(B * s.heads * 3 * d), out(B * s.heads * d);
    DeviceArray<float> states(B * stride), slopes(s.heads);
    const auto qkv_values = qkv.set(this->random.uniform(qkv.size(), -0.3f, 1.0f));
    auto ref_states = states.set(this->random.uniform(states.size(), -1.0f, 1.0f));
    const auto slope_values = slopes.set(this->random.uniform(s.heads, 0.005f, 0.9f));

    // Sequence b's state: the one at slot order[b] of the array.
    std::vector<int> order(static_cast<std::size_t>(B));
    std::iota(order.begin(), order.end(), 0);
    if (s.state_table) std::shuffle(order.begin(), order.end(), std::mt19937(this->random.seed()));
    DeviceArray<std::uintptr_t> table(static_cast<std::size_t>(B));
    std::vector<std::uintptr_t> pointers(static_cast<std::size_t>(B));
    for (std::int64_t b = 0; b < B; ++b)
      pointers[b] = reinterpret_cast<std::uintptr_t>(states.get() + order[b] * stride);
    cuda::check(cudaMemcpy(table.get(), pointers.data(), pointers.size() * sizeof(std::uintptr_t),
                           cudaMemcpyHostToDevice),
                "test upload");
    const cuda::LightningStates where =
        s.state_table ? cuda::LightningStates{nullptr, 0, reinterpret_cast<float* const*>(table.get())}
                      : cuda::LightningStates{states.get(), stride, nullptr};

    // Several steps, each continuing the states of the one before; outputs poisoned each time.
    std::vector<float> ref_out(out.size());
    for (int step = 0; step < 2; ++step) {
      out.poison();
      cuda::lightning_decode(qkv.get(), s.batch, s.heads, s.head_dim, slopes.get(), where, out.get(), nullptr);
      for (std::int64_t b = 0; b < B; ++b)
        cpu::lightning_decode(qkv_values.data() + b * s.heads * 3 * d, s.heads, s.head_dim, slope_values,
                              ref_states.data() + order[b] * stride, ref_out.data() + b * s.heads * d, this->pool);
    }
    EXPECT_CLOSE(out.get_values(), ref_out, tolerance<TypeParam>());
    // The states stay float32 in both modes; the gaps between them are untouched.
    EXPECT_CLOSE(states.get_values(), ref_states, 1e-5);
  }
}

TYPED_TEST(CudaLightningDecodeTest, RefusesBatchOutsideTheGrid) {
  DeviceArray<TypeParam> qkv(3 * 16), out(16);
  DeviceArray<float> state(16 * 16), slopes(1);
  EXPECT_THROW(cuda::lightning_decode(qkv.get(), cuda::kMaxLightningDecodeBatch + 1, 1, 16, slopes.get(),
                                      cuda::LightningStates{state.get(), 0, nullptr}, out.get(), nullptr),
               Error);
}

}  // namespace
}  // namespace lightdesk
