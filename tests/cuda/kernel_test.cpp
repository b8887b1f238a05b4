// The CUDA kernels' own paths against the CPU reference ops (lightdesk/cpu_ops.h in core/) on fresh
// random inputs of several shapes, ragged ones included, with the outputs poisoned before the
// kernel runs: the kernels below the op interface (swiglu, the MoE's grouping, GEMMs and
// combine, the router), the prefill in pieces and with caller workspaces, each attention
// kernel, paged caches and graph-planned decode. The ops themselves (norms, elementwise,
// embedding, RoPE, lightning and softmax attention, the MoE layer) are checked on every backend
// by tests/engine/backend_ops_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <tuple>

#include "cuda_test_util.h"
#include "lightdesk/cpu_ops.h"
#include "src/cuda_kv_cache.h"

namespace lightdesk {
namespace {

using namespace test;  // the shared helpers of the GPU tests (cuda_test_util.h)

template <typename T>
class CudaKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LIGHTDESK_SKIP_WITHOUT_GPU();
    limits = cuda::query_launch_limits();
  }
  void synchronize() { cuda::check(cudaDeviceSynchronize(), "kernel under test"); }

  cuda::LaunchLimits limits;
  test::Random random;
  ThreadPool pool{2};
};

TYPED_TEST_SUITE(CudaKernelTest, ActivationTypes, ActivationName);

TYPED_TEST(CudaKernelTest, FillUniform) {
  const std::int64_t n = 100003;
  DeviceArray<TypeParam> a(n), b(n);
  a.poison();
  b.poison();
  cuda::fill_uniform(a.get(), n, 42, -2.0f, 3.0f, nullptr);
  cuda::fill_uniform(b.get(), n, 42, -2.0f, 3.0f, nullptr);
  const auto values = a.get_values();
  EXPECT_EQ(values, b.get_values()) << "the same seed gives the same values";
  double sum = 0.0;
  for (float v : values) {
    ASSERT_GE(v, -2.0f);
    ASSERT_LE(v, 3.0f);
    sum += v;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.02);
}

TYPED_TEST(CudaKernelTest, Swiglu) {
  for (auto [rows, width] : {std::pair<std::int64_t, std::int64_t>{1, 48}, {9, 300}}) {
    DeviceArray<TypeParam> gate_up(rows * 2 * width), out(rows * width);
    const auto gu = gate_up.set(this->random.uniform(gate_up.size(), -4.0f, 4.0f));
    out.poison();
    cuda::swiglu(gate_up.get(), rows, width, out.get(), nullptr);
    std::vector<float> ref(out.size());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < width; ++c)
        ref[r * width + c] = cpu::silu(gu[r * 2 * width + c]) * gu[r * 2 * width + width + c];
    EXPECT_CLOSE(out.get_values(), ref, tolerance<TypeParam>());
  }
}

struct LightningShape {
  std::int64_t rows;
  int heads, head_dim;
};

// Prefills `shape.rows` rows in calls of `pieces` rows each (the last takes the rest), each call
// continuing from the state the one before left, against one CPU prefill of all rows from the
// same random state. With `given_workspace` the calls get a workspace of the planned size,
// `workspace_offset` bytes into an allocation, else they allocate their own.
template <typename T>
void check_lightning_prefill(test::Random& random, ThreadPool& pool, const cuda::LaunchLimits& limits,
                             const LightningShape& s, std::int64_t pieces, bool given_workspace,
                             std::size_t workspace_offset = 0) {
  SCOPED_TRACE(std::to_string(s.rows) + " rows in pieces of " + std::to_string(pieces) + ", " +
               std::to_string(s.heads) + "x" + std::to_string(s.head_dim));
  const std::int64_t d = s.head_dim;
  DeviceArray<T> qkv(s.rows * s.heads * 3 * d), out(s.rows * s.heads * d);
  DeviceArray<float> state(s.heads * d * d), slopes(s.heads);
  const auto qkv_values = qkv.set(random.uniform(qkv.size(), -0.3f, 1.0f));
  auto ref_state = state.set(random.uniform(state.size(), -1.0f, 1.0f));
  const auto slope_values = slopes.set(random.uniform(s.heads, 0.005f, 0.9f));
  out.poison();
  for (std::int64_t first = 0; first < s.rows; first += pieces) {
    const std::int64_t rows = std::min(pieces, s.rows - first);
    const std::size_t bytes = cuda::lightning_prefill_workspace_bytes<T>(rows, s.heads, s.head_dim, limits);
    DeviceArray<std::uint8_t> workspace(given_workspace ? bytes + workspace_offset : 0);
    cuda::lightning_prefill(qkv.get() + first * s.heads * 3 * d, rows, s.heads, s.head_dim, slopes.get(), state.get(),
                            out.get() + first * s.heads * d, limits, nullptr,
                            given_workspace ? workspace.get() + workspace_offset : nullptr, given_workspace ? bytes : 0);
  }
  std::vector<float> ref_out(out.size());
  cpu::lightning_prefill(qkv_values.data(), s.rows, s.heads, s.head_dim, slope_values, 256, ref_state.data(),
                         ref_out.data(), pool);
  const auto out_values = out.get_values(), state_values = state.get_values();
  std::printf("[ measured ] lightning prefill %s %lld rows (pieces %lld) %dx%d: relative error out %.3g, state %.3g\n",
              std::is_same_v<T, float> ? "f32" : "bf16", static_cast<long long>(s.rows),
              static_cast<long long>(pieces), s.heads, s.head_dim, relative_error(out_values, ref_out),
              relative_error(state_values, ref_state));
  EXPECT_LT(relative_error(out_values, ref_out), tolerance<T>()) << "output; seed " << random.seed();
  // The state stays float32 in both modes: the session continues from it.
  EXPECT_LT(relative_error(state_values, ref_state), 1e-5) << "state; seed " << random.seed();
}

TYPED_TEST(CudaKernelTest, LightningPrefillFromExistingState) {
  // Ragged row counts split the 64-row chunks; head_dim 100 (not a multiple of 8) takes the
  // CUDA-core kernel in both modes; 5000 rows at d 128 split into several runs of chunks, the
  // last run shorter than the others; 4613 rows end in a run of one chunk of 5 rows; 1500 rows
  // at d 64 leave the warps of value columns 64.. nothing but zero padding; 20000 rows make 35
  // runs, more than one batch of the scan over the runs' states, the last batch partial, and
  // (slopes of at least 0.005) the first runs' states decay past 2^-32 before the end, so their
  // state pass takes one bf16 part, the last runs' two.
  for (const LightningShape& s : {LightningShape{2, 2, 16}, LightningShape{80, 4, 16}, LightningShape{130, 3, 64},
                                  LightningShape{300, 2, 128}, LightningShape{65, 2, 100},
                                  LightningShape{5000, 3, 128}, LightningShape{4613, 2, 128},
                                  LightningShape{1500, 5, 64}, LightningShape{20000, 2, 128}})
    check_lightning_prefill<TypeParam>(this->random, this->pool, this->limits, s, s.rows, false);
}

TYPED_TEST(CudaKernelTest, LightningPrefillInPieces) {
  // Chunked prefill of a long session: each call continues from the last one's state; the
  // pieces end inside a chunk. With and without a workspace from the caller, and with one not
  // 16-byte aligned (left unused).
  check_lightning_prefill<TypeParam>(this->random, this->pool, this->limits, {2345, 2, 128}, 1000, true);
  check_lightning_prefill<TypeParam>(this->random, this->pool, this->limits, {700, 4, 64}, 333, false);
  check_lightning_prefill<TypeParam>(this->random, this->pool, this->limits, {1300, 3, 128}, 650, true, 4);
}

struct AttentionShape {
  std::int64_t rows, first_position;
  int heads, kv_heads, head_dim;
};

TYPED_TEST(CudaKernelTest, SoftmaxAttention) {
  for (const AttentionShape& s : {AttentionShape{1, 0, 4, 2, 16}, AttentionShape{1, 700, 8, 2, 128},
                                  AttentionShape{37, 0, 4, 2, 16}, AttentionShape{65, 100, 8, 8, 64},
                                  AttentionShape{20, 3, 6, 2, 100},
                                  // Keys split over several thread blocks, the last split ragged.
                                  AttentionShape{1, 5000, 4, 2, 64}, AttentionShape{3, 3000, 4, 1, 16},
                                  // MiniMax's 64/8 heads: several packed-row tiles; a chunk continuing
                                  // a session (keys split too); decode over a long context.
                                  AttentionShape{300, 0, 16, 2, 128}, AttentionShape{70, 4000, 64, 8, 128},
                                  AttentionShape{1, 20000, 64, 8, 128},
                                  // The decode kernel: one 16-row tile per KV head, both of a
                                  // thread's rows in use (2 positions × 8 heads), head_dim padded;
                                  // splits of a few stages ending inside one; a group of 3 (15 rows).
                                  AttentionShape{2, 5000, 16, 2, 64}, AttentionShape{1, 777, 16, 2, 128},
                                  AttentionShape{5, 1000, 6, 2, 96}, AttentionShape{1, 131, 64, 8, 128},
                                  // A group of 3: packed-row tiles end inside a group.
                                  AttentionShape{29, 129, 12, 4, 32},
                                  // Many 128-row tiles over ragged 128-key tiles; a chunk continuing
                                  // a session with its keys split, head_dim padded to 128.
                                  AttentionShape{600, 333, 16, 2, 128}, AttentionShape{257, 1500, 8, 1, 64}}) {
    SCOPED_TRACE(std::to_string(s.rows) + " rows after " + std::to_string(s.first_position));
    const std::int64_t positions = s.first_position + s.rows;
    DeviceArray<TypeParam> q(s.rows * s.heads * s.head_dim), out(q.size());
    DeviceArray<TypeParam> keys(positions * s.kv_heads * s.head_dim), values(keys.size());
    const auto qs = q.set(this->random.uniform(q.size(), -1.0f, 1.0f));
    const auto ks = keys.set(this->random.uniform(keys.size(), -1.0f, 1.0f));
    const auto vs = values.set(this->random.uniform(values.size(), -1.0f, 1.0f));
    std::vector<float> ref(out.size());
    cpu::softmax_attention(qs.data(), s.rows, s.first_position, ks.data(), vs.data(), s.heads, s.kv_heads, s.head_dim,
                           ref.data(), this->pool);
    // The device's prefill kernel (on Hopper the warpgroup-MMA one), and the mma.sync one that
    // devices without sm_90a take.
    cuda::LaunchLimits without_hopper = this->limits;
    without_hopper.attention_hopper_blocks = 0;
    for (const cuda::LaunchLimits& device_limits : {this->limits, without_hopper}) {
      SCOPED_TRACE(device_limits.attention_hopper_blocks > 0 ? "Hopper prefill kernel" : "mma.sync prefill kernel");
      out.poison();
      cuda::softmax_attention(q.get(), s.rows, s.first_position, keys.get(), values.get(), s.heads, s.kv_heads,
                              s.head_dim, out.get(), device_limits, nullptr);
      EXPECT_CLOSE(out.get_values(), ref, tolerance<TypeParam>());
    }
  }
}

// Decode as the backend's CUDA graph runs it: launches planned for a position bound (the split
// workspace too), the position read from device memory, here from far below the bound up to it.
// The values past the visible positions are NaN: a kernel that lets one into a sum fails.
TYPED_TEST(CudaKernelTest, SoftmaxDecodePlannedForALongerCache) {
  const int heads = 64, kv_heads = 8, d = 128;
  const std::int64_t bound = 4095, kv_width = std::int64_t{kv_heads} * d;
  DeviceArray<TypeParam> q(heads * d), out(q.size()), keys((bound + 1) * kv_width), values(keys.size());
  DeviceArray<std::int64_t> step_position(1);
  DeviceArray<std::uint8_t> workspace(
      cuda::softmax_attention_workspace_bytes<TypeParam>(1, bound, heads, kv_heads, d, this->limits));
  const auto key_values = this->random.uniform(keys.size(), -1.0f, 1.0f);
  const auto value_values = this->random.uniform(values.size(), -1.0f, 1.0f);
  for (const std::int64_t position : {0, 1, 63, 64, 65, 700, 2048, 4000, 4095}) {
    SCOPED_TRACE("position " + std::to_string(position) + " of a launch planned for " + std::to_string(bound));
    const auto ks = keys.set(key_values), vs = values.set(value_values);
    const std::int64_t visible = (position + 1) * kv_width;
    cuda::check(cudaMemset(keys.get() + visible, 0xFF, (keys.size() - visible) * sizeof(TypeParam)), "poison");
    cuda::check(cudaMemset(values.get() + visible, 0xFF, (values.size() - visible) * sizeof(TypeParam)), "poison");
    cuda::check(cudaMemcpy(step_position.get(), &position, sizeof position, cudaMemcpyHostToDevice), "upload");
    const auto qs = q.set(this->random.uniform(q.size(), -1.0f, 1.0f));
    out.poison();
    cuda::softmax_attention(q.get(), 1, cuda::Position(step_position.get(), bound),
                            cuda::contiguous_kv<const TypeParam>(keys.get(), values.get(), kv_width), heads, kv_heads,
                            d, out.get(), this->limits, nullptr, workspace.get(), workspace.size());
    std::vector<float> ref(out.size());
    cpu::softmax_attention(qs.data(), 1, position, ks.data(), vs.data(), heads, kv_heads, d, ref.data(), this->pool);
    EXPECT_CLOSE(out.get_values(), ref, tolerance<TypeParam>());
  }
}

// The cache in pages handed out in shuffled order: rows in and out, and attention over them.
struct PagedAttentionShape {
  int page_shift;
  std::int64_t rows;
  int heads, kv_heads, head_dim;
};

TYPED_TEST(CudaKernelTest, PagedKvCache) {
  // Pages of 64 and 128 positions under key tiles of 64 (decode) and 128 (prefill); MiniMax's
  // 64/8 heads with a chunk of rows crossing several pages.
  for (const PagedAttentionShape& s : {PagedAttentionShape{6, 40, 16, 4, 64}, PagedAttentionShape{7, 40, 16, 4, 64},
                                       PagedAttentionShape{6, 1, 16, 4, 64}, PagedAttentionShape{6, 300, 64, 8, 128}}) {
    const int page_shift = s.page_shift, heads = s.heads, kv_heads = s.kv_heads, d = s.head_dim;
    const std::int64_t first_position = 777, rows = s.rows, positions = first_position + rows;
    const std::int64_t kv_width = std::int64_t{kv_heads} * d, page = std::int64_t{1} << page_shift;
    const std::int64_t pages = (positions + page - 1) / page + 3;  // spare pages stay unused
    SCOPED_TRACE("pages of " + std::to_string(page) + ", " + std::to_string(rows) + " rows");
    std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(this->random.seed()));
    DeviceArray<std::int32_t> page_table(table.size());
    cuda::check(cudaMemcpy(page_table.get(), table.data(), table.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice),
                "upload");
    DeviceArray<TypeParam> key_pool(pages * page * kv_width), value_pool(key_pool.size());
    key_pool.poison();
    value_pool.poison();
    const cuda::KvCacheView<TypeParam> kv{key_pool.get(), value_pool.get(), page_table.get(), page * kv_width,
                                          page_shift};
    DeviceArray<TypeParam> keys(positions * kv_width), values(keys.size()), back(keys.size());
    const auto ks = keys.set(this->random.uniform(keys.size(), -1.0f, 1.0f));
    const auto vs = values.set(this->random.uniform(values.size(), -1.0f, 1.0f));
    // Two writes, as a prefill and then a continuing chunk store them.
    cuda::write_kv_rows(keys.get(), values.get(), first_position, 0, kv_width, kv, nullptr);
    cuda::write_kv_rows(keys.get() + first_position * kv_width, values.get() + first_position * kv_width, rows,
                        first_position, kv_width, kv, nullptr);
    back.poison();
    cuda::read_kv_rows<TypeParam, TypeParam>(kv.as_const(), 0, positions, kv_width, back.get(), nullptr, nullptr);
    EXPECT_EQ(back.get_values(), ks);
    back.poison();
    cuda::read_kv_rows<TypeParam, TypeParam>(kv.as_const(), 0, positions, kv_width, nullptr, back.get(), nullptr);
    EXPECT_EQ(back.get_values(), vs);

    DeviceArray<TypeParam> q(rows * heads * d), out(q.size());
    const auto qs = q.set(this->random.uniform(q.size(), -1.0f, 1.0f));
    out.poison();
    cuda::softmax_attention(q.get(), rows, first_position, kv.as_const(), heads, kv_heads, d, out.get(), this->limits,
                            nullptr);
    std::vector<float> ref(out.size());
    cpu::softmax_attention(qs.data(), rows, first_position, ks.data(), vs.data(), heads, kv_heads, d, ref.data(),
                           this->pool);
    EXPECT_CLOSE(out.get_values(), ref, tolerance<TypeParam>());

    // float32 rows in and out of a T cache (state import and export), rounded to T on the way in.
    DeviceArray<float> rows_in(positions * kv_width), rows_out(rows_in.size());
    DeviceArray<TypeParam> rounded(rows_in.size());
    const auto expected = rounded.set(rows_in.set(this->random.uniform(rows_in.size(), -1.0f, 1.0f)));
    cuda::write_kv_rows<TypeParam, float>(nullptr, rows_in.get(), positions, 0, kv_width, kv, nullptr);
    rows_out.poison();
    cuda::read_kv_rows<TypeParam, float>(kv.as_const(), 0, positions, kv_width, nullptr, rows_out.get(), nullptr);
    EXPECT_EQ(rows_out.get_values(), expected);
  }
}

// The backend's page pool: growing moves its memory but keeps the pages handed out and what they hold.
TEST(CudaKvPagePoolTest, GrowingKeepsPagesAndContents) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  test::Random random;
  DeviceContext device(0);
  const std::int64_t kv_width = 24, positions = 3 * KvPagePool::kPagePositions;
  KvPagePool pool(device, 2, kv_width, sizeof(float));
  const std::vector<std::int32_t> held = pool.take(3);
  DeviceArray<std::int32_t> table(held.size());
  cuda::check(cudaMemcpy(table.get(), held.data(), held.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice),
              "upload");
  DeviceArray<float> keys(positions * kv_width), values(keys.size()), back(keys.size());
  const auto ks = keys.set(random.uniform(keys.size(), -1.0f, 1.0f));
  const auto vs = values.set(random.uniform(values.size(), -1.0f, 1.0f));
  cuda::write_kv_rows(keys.get(), values.get(), positions, 0, kv_width, pool.view<float>(1, table.get()), nullptr);
  cuda::check(cudaDeviceSynchronize(), "write");

  const void* before = pool.memory();
  const std::vector<std::int32_t> more = pool.take(40);  // past the first 8 pages: the pool grows
  EXPECT_NE(pool.memory(), before);
  std::vector<std::int32_t> all = held;
  all.insert(all.end(), more.begin(), more.end());
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end()) << "a page handed out twice";

  back.poison();
  cuda::read_kv_rows<float, float>(pool.view<float>(1, table.get()).as_const(), 0, positions, kv_width, back.get(), nullptr,
                            nullptr);
  EXPECT_EQ(back.get_values(), ks);
  back.poison();
  cuda::read_kv_rows<float, float>(pool.view<float>(1, table.get()).as_const(), 0, positions, kv_width, nullptr, back.get(),
                            nullptr);
  EXPECT_EQ(back.get_values(), vs);

  // Pages given back are taken again before the pool grows.
  pool.give_back(more);
  const void* grown = pool.memory();
  EXPECT_EQ(pool.take(40).size(), 40u);
  EXPECT_EQ(pool.memory(), grown);
}

// Widths in and out of whole 16-byte pieces.
TYPED_TEST(CudaKernelTest, CombineExperts) {
  const std::int64_t rows = 11;
  const int k = 3;
  for (const std::int64_t width : {std::int64_t{90}, std::int64_t{96}}) {
    SCOPED_TRACE("width " + std::to_string(width));
    DeviceArray<TypeParam> expert_out(rows * k * width), out(rows * width);
    DeviceArray<std::int32_t> slot_rows(rows * k);
    DeviceArray<float> weights(rows * k);
    const auto ys = expert_out.set(this->random.uniform(expert_out.size(), -1.0f, 1.0f));
    const auto ws = weights.set(this->random.uniform(weights.size(), 0.0f, 1.0f));
    std::vector<std::int32_t> slots(rows * k);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937(this->random.seed()));
    cuda::check(
        cudaMemcpy(slot_rows.get(), slots.data(), slots.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice),
        "upload");
    const auto reference = [&](bool permuted) {
      std::vector<float> ref(out.size(), 0.0f);
      for (std::int64_t r = 0; r < rows; ++r)
        for (int i = 0; i < k; ++i) {
          const std::int64_t row = permuted ? slots[r * k + i] : r * k + i;
          for (std::int64_t c = 0; c < width; ++c) ref[r * width + c] += ys[row * width + c] * ws[r * k + i];
        }
      return ref;
    };
    out.poison();
    cuda::combine_experts(expert_out.get(), slot_rows.get(), weights.get(), rows, k, width, out.get(), nullptr);
    EXPECT_CLOSE(out.get_values(), reference(true), tolerance<TypeParam>());
    // No slot rows: expert_out in slot order, as the device-routed path leaves it.
    out.poison();
    cuda::combine_experts(expert_out.get(), static_cast<const std::int32_t*>(nullptr), weights.get(), rows, k, width,
                          out.get(), nullptr);
    EXPECT_CLOSE(out.get_values(), reference(false), tolerance<TypeParam>());
  }
}

// The permutation to experts on the device: group sizes, a slot → row map that is one to one and
// lands in the slot's expert's rows, and the tokens copied there. Widths in and out of 16-byte
// pieces; more experts than slots (empty experts).
TYPED_TEST(CudaKernelTest, GroupByExpert) {
  for (auto [rows, k, experts, width] :
       {std::tuple<std::int64_t, int, int, std::int64_t>{300, 2, 8, 96}, {5, 2, 32, 70}, {1000, 3, 5, 13}}) {
    SCOPED_TRACE(std::to_string(rows) + " rows, top " + std::to_string(k) + " of " + std::to_string(experts));
    const std::int64_t slots = rows * k;
    DeviceArray<TypeParam> x(rows * width), grouped(slots * width);
    DeviceArray<std::int32_t> ids(slots), first_row(experts + 1), slot_rows(slots), cursor(experts);
    const auto xs = x.set(this->random.uniform(x.size(), -1.0f, 1.0f));
    const auto chosen = this->random.integers(slots, 0, experts - 1);
    cuda::check(cudaMemcpy(ids.get(), chosen.data(), slots * sizeof(std::int32_t), cudaMemcpyHostToDevice), "upload");
    grouped.poison();
    cuda::check(cudaMemset(first_row.get(), 0xFF, first_row.size() * sizeof(std::int32_t)), "poison");
    cuda::check(cudaMemset(slot_rows.get(), 0xFF, slot_rows.size() * sizeof(std::int32_t)), "poison");
    cuda::group_by_expert(ids.get(), rows, k, experts, x.get(), width, first_row.get(), slot_rows.get(), grouped.get(),
                          cursor.get(), nullptr);
    std::vector<std::int32_t> firsts(first_row.size()), rows_of(slots);
    cuda::check(cudaMemcpy(firsts.data(), first_row.get(), firsts.size() * sizeof(std::int32_t),
                           cudaMemcpyDeviceToHost),
                "download");
    cuda::check(cudaMemcpy(rows_of.data(), slot_rows.get(), rows_of.size() * sizeof(std::int32_t),
                           cudaMemcpyDeviceToHost),
                "download");
    std::vector<std::int32_t> expected_first(experts + 1, 0);
    for (std::int32_t id : chosen) ++expected_first[id + 1];
    for (int e = 0; e < experts; ++e) expected_first[e + 1] += expected_first[e];
    EXPECT_EQ(firsts, expected_first);
    std::vector<float> ref(grouped.size());
    std::vector<bool> taken(slots, false);
    for (std::int64_t slot = 0; slot < slots; ++slot) {
      const std::int32_t row = rows_of[slot], e = chosen[slot];
      ASSERT_GE(row, expected_first[e]) << "slot " << slot;
      ASSERT_LT(row, expected_first[e + 1]) << "slot " << slot;
      ASSERT_FALSE(taken[row]) << "row " << row << " taken twice";
      taken[row] = true;
      std::copy_n(xs.data() + (slot / k) * width, width, ref.data() + row * width);
    }
    EXPECT_EQ(grouped.get_values(), ref);
  }
}

// One grouped GEMM over ragged groups, empty ones included, against per-group CPU products:
// groups of many rows (the tiling by tokens) and of a few (the tiling by weight rows), with
// groups and widths that split the tiles.
TEST(CudaGroupedLinearTest, MatchesCpu) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  test::Random random;
  const cuda::LaunchLimits limits = cuda::query_launch_limits();
  const std::int64_t in = 200, out = 264;
  for (const std::vector<std::int32_t>& sizes : {std::vector<std::int32_t>{0, 1, 300, 0, 129, 7, 256, 0},
                                                 std::vector<std::int32_t>{0, 3, 70, 1, 0, 9, 2, 0}}) {
    const int groups = static_cast<int>(sizes.size());
    std::vector<std::int32_t> first(sizes.size() + 1, 0);
    for (std::size_t g = 0; g < sizes.size(); ++g) first[g + 1] = first[g] + sizes[g];
    const std::int64_t rows = first.back();
    SCOPED_TRACE(std::to_string(rows) + " rows in " + std::to_string(groups) + " groups");
    DeviceArray<cuda::bf16> x(rows * in), w(groups * out * in), y(rows * out);
    DeviceArray<std::int32_t> first_row(first.size());
    const auto xs = x.set(random.uniform(x.size(), -1.0f, 1.0f));
    const auto ws = w.set(random.uniform(w.size(), -0.2f, 0.2f));
    cuda::check(cudaMemcpy(first_row.get(), first.data(), first.size() * sizeof(std::int32_t),
                           cudaMemcpyHostToDevice),
                "upload");
    DeviceBuffer workspace(cuda::grouped_linear_workspace_bytes(groups, limits), "grouped GEMM workspace");
    y.poison();
    cuda::grouped_linear(x.get(), first_row.get(), groups, rows, in, w.get(), out, y.get(), limits,
                         workspace.as<void>(), workspace.bytes(), nullptr);
    std::vector<float> ref(y.size());
    ThreadPool pool(2);
    for (int g = 0; g < groups; ++g)
      cpu::linear(xs.data() + first[g] * in, sizes[g], in, ws.data() + g * out * in, out, ref.data() + first[g] * out,
                  pool);
    EXPECT_LT(relative_error(y.get_values(), ref), tolerance<cuda::bf16>()) << "seed " << random.seed();
    // Widths past 16-byte pieces are refused, not read out of bounds.
    EXPECT_THROW(cuda::grouped_linear(x.get(), first_row.get(), groups, rows, in - 1, w.get(), out, y.get(), limits,
                                      workspace.as<void>(), workspace.bytes(), nullptr),
                 Error);
  }
}

// The whole MoE layer against cpu::moe_experts: few rows take the device-routed path (expert
// products with the ids read on the device), more rows the grouped one: ragged expert loads,
// empty experts (32 experts, 9 rows), groups past one GEMM tile, and widths that are not whole
// 16-byte pieces (bf16 falls back to a GEMM per expert).
// The router is float32 whatever the activation type.
TEST(CudaRouterTest, TopKMatchesCpu) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  test::Random random;
  for (auto [rows, experts, k] : {std::tuple<std::int64_t, int, int>{1, 4, 2}, {77, 32, 2}, {300, 8, 8}, {5, 64, 6}}) {
    SCOPED_TRACE(std::to_string(experts) + " experts, top " + std::to_string(k));
    DeviceArray<float> logits(rows * experts), weights(rows * k);
    DeviceArray<std::int32_t> ids(rows * k);
    const auto ls = logits.set(random.uniform(logits.size(), -3.0f, 3.0f));
    std::vector<int> ref_ids(ids.size());
    std::vector<float> ref_weights(ids.size());
    cpu::route_top_k(ls.data(), rows, experts, k, ref_ids.data(), ref_weights.data());
    for (const bool by_expert : {false, true}) {
      SCOPED_TRACE(by_expert ? "by expert" : "by weight");
      if (by_expert) {
        // The same routes, each row's sorted by expert id.
        for (std::int64_t r = 0; r < rows; ++r) {
          std::vector<std::pair<int, float>> routes;
          for (int i = 0; i < k; ++i) routes.emplace_back(ref_ids[r * k + i], ref_weights[r * k + i]);
          std::sort(routes.begin(), routes.end());
          for (int i = 0; i < k; ++i) std::tie(ref_ids[r * k + i], ref_weights[r * k + i]) = routes[i];
        }
      }
      weights.poison();
      cuda::check(cudaMemset(ids.get(), 0xFF, ids.size() * sizeof(std::int32_t)), "poison");
      cuda::route_top_k(logits.get(), rows, experts, k, by_expert, ids.get(), weights.get(), nullptr);
      std::vector<std::int32_t> got_ids(ids.size());
      cuda::check(cudaMemcpy(got_ids.data(), ids.get(), got_ids.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost),
                  "download");
      EXPECT_EQ(got_ids, std::vector<std::int32_t>(ref_ids.begin(), ref_ids.end())) << "seed " << random.seed();
      EXPECT_LT(relative_error(weights.get_values(), ref_weights), 1e-6) << "seed " << random.seed();
    }
  }
}

}  // namespace
}  // namespace lightdesk
