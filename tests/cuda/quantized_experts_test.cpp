// The quantized-expert kernels (int8, int4 in the canonical layouts) against the CPU reference of
// the same format (core's expert_quant), on fresh random inputs with the outputs poisoned
// first: the GPU quantizer (bytes, scales and offsets, padding included), the
// dequantization a prefill reads, the decode GEMV over ragged rows per expert (partial last
// groups, inputs not a multiple of 32, several groups, 1 to 64 tokens, gated and not), and the
// MoE layer with quantized experts on both of its paths against cpu::moe_experts on the
// dequantized weights; and the demo model's experts as the CUDA backend quantizes them at load.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <tuple>

#include "cuda_test_util.h"
#include "lightdesk/cpu_ops.h"
#include "lightdesk/engine.h"
#include "lightdesk/expert_quant.h"
#include "lightdesk/thread_pool.h"
#include "src/cuda_moe.h"
#include "src/expert_cache.h"
#include "src/model_config.h"
#include "src/model_weights.h"
#include "test_util.h"

namespace lightdesk {
namespace {

using namespace test;  // the shared helpers of the GPU tests (cuda_test_util.h)

static_assert(cuda::kInt4Group == kInt4GroupSize, "the kernels' int4 group is the format's");

// Row-major float32 [rows, cols] quantized by the CPU reference (core's expert_quant).
QuantizedMatrix quantize(const std::vector<float>& w, std::int64_t rows, std::int64_t cols, ExpertDType dtype,
                         Int4Variant variant) {
  return quantize_matrix(reinterpret_cast<const std::byte*>(w.data()), DType::F32, rows, cols, dtype, variant);
}

// A quantized matrix uploaded, viewed as `experts` matrices of rows / experts rows.
class DeviceQuantized {
 public:
  DeviceQuantized(const QuantizedMatrix& m, int experts)
      : packed_(m.view().layout.packed_bytes()),
        row_scales_(std::max<std::size_t>(m.view().layout.rows, 1)),
        scales_(std::max<std::size_t>(m.view().layout.rows * m.view().layout.groups(), 1)),
        offsets_(scales_.size()) {
    const QuantizedView q = m.view();
    upload(packed_.get(), q.packed, packed_.size());
    if (q.layout.dtype == ExpertDType::Int8) {
      upload(row_scales_.get(), q.row_scales, static_cast<std::size_t>(q.layout.rows) * sizeof(float));
    } else {
      upload(scales_.get(), q.group_scales, scales_.size() * sizeof(__half));
      upload(offsets_.get(), q.group_offsets, offsets_.size() * sizeof(__half));
    }
    view_.format = q.layout.dtype == ExpertDType::Int8 ? cuda::QuantFormat::Int8 : cuda::QuantFormat::Int4;
    view_.rows = q.layout.rows / experts;
    view_.cols = q.layout.cols;
    view_.packed = packed_.get();
    view_.row_scales = row_scales_.get();
    view_.group_scales = scales_.get();
    view_.group_offsets = offsets_.get();
  }
  const cuda::QuantizedExperts& view() const { return view_; }
  // The device's bytes as a QuantizedMatrix of `layout`.
  QuantizedMatrix download(const QuantLayout& layout) const {
    QuantizedMatrix m(layout);
    get(m.packed().data(), packed_.get(), m.packed().size());
    get(m.row_scales().data(), row_scales_.get(), m.row_scales().size() * sizeof(float));
    get(m.group_scales().data(), scales_.get(), m.group_scales().size() * sizeof(std::uint16_t));
    get(m.group_offsets().data(), offsets_.get(), m.group_offsets().size() * sizeof(std::uint16_t));
    return m;
  }
  // Every byte 0xFF (NaN scales), so what the quantizer does not write shows.
  void poison() {
    packed_.poison();
    row_scales_.poison();
    scales_.poison();
    offsets_.poison();
  }

 private:
  static void upload(void* to, const void* from, std::size_t bytes) {
    cuda::check(cudaMemcpy(to, from, bytes, cudaMemcpyHostToDevice), "upload");
  }
  static void get(void* to, const void* from, std::size_t bytes) {
    if (bytes > 0) cuda::check(cudaMemcpy(to, from, bytes, cudaMemcpyDeviceToHost), "download");
  }
  DeviceArray<std::uint8_t> packed_;
  DeviceArray<float> row_scales_;
  DeviceArray<__half> scales_, offsets_;
  cuda::QuantizedExperts view_;
};

// The cases' formats: int8, and int4 made by either variant (the kernels decode them alike).
struct FormatCase {
  ExpertDType dtype;
  Int4Variant variant;
  const char* name;
};
constexpr FormatCase kFormats[] = {{ExpertDType::Int8, Int4Variant::Symmetric, "int8"},
                                   {ExpertDType::Int4, Int4Variant::Symmetric, "int4 sym"},
                                   {ExpertDType::Int4, Int4Variant::Asymmetric, "int4 asym"}};

// Weights with a row of zeros (scale 0) and one of a constant (int4 asym: range 0).
std::vector<float> test_weights(Random& random, std::int64_t rows, std::int64_t cols) {
  std::vector<float> w = random.uniform(static_cast<std::size_t>(rows * cols), -0.3f, 0.3f);
  std::fill_n(w.begin(), cols, 0.0f);
  if (rows > 2) std::fill_n(w.begin() + 2 * cols, cols, 0.125f);
  return w;
}

class CudaQuantizedExpertsTest : public GpuTest {
 protected:
  Random random;
};

// The GPU quantizer against the CPU's, bit for bit, padding included. The widths include those
// the loader quantizes (CUDA backend, ModelOptions::expert_dtype): the fixtures' hidden 48 and
// 64 and expert widths 24 and 48, the demo's 256 and 64 (int4: one partial group of 24, 48 or
// 64; rows of 12 or 24 bytes padded to 16 or 32), and several groups with a partial last one.
TEST_F(CudaQuantizedExpertsTest, QuantizeMatchesCpu) {
  const int experts = 2;
  const std::int64_t rows = 4;
  for (const FormatCase& f : kFormats)
    for (const std::int64_t cols : {24, 48, 64, 96, 200, 256, 300}) {
      SCOPED_TRACE(std::string(f.name) + ", cols " + std::to_string(cols));
      const std::vector<float> w = test_weights(random, experts * rows, cols);
      DeviceArray<cuda::bf16> device_w(w.size());
      const std::vector<float> stored = device_w.set(w);  // the kernel's inputs, rounded to bf16
      QuantizedMatrix ref = quantize(stored, experts * rows, cols, f.dtype, f.variant);
      DeviceQuantized out(ref, experts);
      out.poison();
      cuda::quantize_experts(device_w.get(), experts, out.view(), f.variant == Int4Variant::Symmetric, nullptr);
      QuantizedMatrix got = out.download(ref.layout());
      EXPECT_EQ(got.packed(), ref.packed()) << "seed " << random.seed();
      EXPECT_EQ(got.row_scales(), ref.row_scales()) << "seed " << random.seed();
      EXPECT_EQ(got.group_scales(), ref.group_scales()) << "seed " << random.seed();
      EXPECT_EQ(got.group_offsets(), ref.group_offsets()) << "seed " << random.seed();
    }
}

TEST_F(CudaQuantizedExpertsTest, DequantizeMatchesTheFormat) {
  const int experts = 3;
  const std::int64_t rows = 5;
  for (const FormatCase& f : kFormats)
    for (const std::int64_t cols : {48, 200, 384}) {
      SCOPED_TRACE(std::string(f.name) + ", cols " + std::to_string(cols));
      const QuantizedMatrix q =
          quantize(test_weights(random, experts * rows, cols), experts * rows, cols, f.dtype, f.variant);
      const DeviceQuantized device_q(q, experts);
      const std::vector<float> all = dequantize(q.view());
      // Experts 1 and 2 only: the offset into the stack.
      const std::vector<float> ref(all.begin() + rows * cols, all.end());
      DeviceArray<float> out_f32(ref.size());
      DeviceArray<cuda::bf16> out_bf16(ref.size());
      out_f32.poison();
      out_bf16.poison();
      cuda::dequantize_experts(device_q.view(), 1, 2, out_f32.get(), nullptr);
      cuda::dequantize_experts(device_q.view(), 1, 2, out_bf16.get(), nullptr);
      EXPECT_LT(relative_error(out_f32.get_values(), ref), 1e-6) << "seed " << random.seed();
      EXPECT_LT(relative_error(out_bf16.get_values(), ref), tolerance<cuda::bf16>()) << "seed " << random.seed();
    }
}

float silu(float v) { return v / (1.0f + std::exp(-v)); }

// The GEMV over rows grouped by expert, with `counts` rows for each expert, against float64
// products with the decoded weights.
void check_gemv(Random& random, const FormatCase& f, std::int64_t out_rows, std::int64_t cols,
                const std::vector<std::int32_t>& counts, bool gated, std::int64_t max_rows_per_expert) {
  const int experts = static_cast<int>(counts.size());
  std::vector<std::int32_t> first(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), first.begin() + 1);
  const std::int64_t rows = first.back();
  const QuantizedMatrix q =
      quantize(test_weights(random, experts * out_rows, cols), experts * out_rows, cols, f.dtype, f.variant);
  const DeviceQuantized device_q(q, experts);
  const std::int64_t x_width = gated ? 2 * cols : cols;
  DeviceArray<cuda::bf16> x(rows * x_width), out(rows * out_rows);
  DeviceArray<std::int32_t> first_row(first.size());
  const std::vector<float> xs = x.set(random.uniform(x.size(), gated ? -2.0f : -1.0f, gated ? 2.0f : 1.0f));
  cuda::check(cudaMemcpy(first_row.get(), first.data(), first.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice),
              "upload");
  out.poison();
  const cuda::LaunchLimits limits = cuda::query_launch_limits();
  cuda::quantized_expert_gemv(device_q.view(), first_row.get(), experts, x.get(), gated, rows, max_rows_per_expert,
                              out.get(), limits, nullptr);
  const std::vector<float> w = dequantize(q.view());
  std::vector<float> ref(out.size(), 0.0f);
  for (int e = 0; e < experts; ++e)
    for (std::int64_t j = first[e]; j < first[e + 1]; ++j)
      for (std::int64_t r = 0; r < out_rows; ++r) {
        double sum = 0.0;
        for (std::int64_t c = 0; c < cols; ++c) {
          const float in = gated ? silu(xs[j * x_width + c]) * xs[j * x_width + cols + c] : xs[j * x_width + c];
          sum += static_cast<double>(w[(e * out_rows + r) * cols + c]) * in;
        }
        ref[j * out_rows + r] = static_cast<float>(sum);
      }
  EXPECT_LT(relative_error(out.get_values(), ref), tolerance<cuda::bf16>()) << "seed " << random.seed();
}

TEST_F(CudaQuantizedExpertsTest, GemvMatchesTheFormat) {
  // Ragged rows per expert, empty experts included; an expert past kMaxQuantGemvTokens rows.
  const std::vector<std::int32_t> ragged{0, 1, 0, 3, 2, 6};
  for (const FormatCase& f : kFormats)
    for (const bool gated : {false, true})
      for (const auto& [out_rows, cols] : {std::pair<std::int64_t, std::int64_t>{37, 48},
                                          {264, 200},
                                          {40, 256},
                                          {17, 1000},
                                          {128, 520}}) {
        SCOPED_TRACE(std::string(f.name) + (gated ? ", gated" : "") + ", " + std::to_string(out_rows) + " x " +
                     std::to_string(cols));
        check_gemv(random, f, out_rows, cols, ragged, gated, 6);
        // The kernel's one- and two-token blocks.
        check_gemv(random, f, out_rows, cols, {0, 1, 0, 1}, gated, 1);
        check_gemv(random, f, out_rows, cols, {2, 1, 0, 2}, gated, 2);
      }
}

TEST_F(CudaQuantizedExpertsTest, GemvOfOneAndSixtyFourTokens) {
  for (const FormatCase& f : kFormats)
    for (const bool gated : {false, true}) {
      SCOPED_TRACE(std::string(f.name) + (gated ? ", gated" : ""));
      // One token to two experts of 8 (top-2 decode).
      check_gemv(random, f, 96, 320, {0, 1, 0, 0, 0, 1, 0, 0}, gated, 1);
      // 64 tokens, top-2, over 8 experts: 128 rows, ragged.
      std::vector<std::int32_t> counts(8);
      for (int t = 0; t < 64; ++t) {
        const auto pick = random.integers(2, 0, 7);
        ++counts[pick[0]];
        ++counts[pick[1] == pick[0] ? (pick[0] + 1) % 8 : pick[1]];
      }
      check_gemv(random, f, 96, 320, counts, gated, 64);
    }
}

// The int8 grouped GEMM (weights converted in its main loop) over ragged groups (empty ones
// included, groups past a tile, groups of a few rows), against per-group products with the
// decoded weights; inputs that are not multiples of 32 (and of the K tile).
// The tests that run CUTLASS's grouped GEMMs have a suite of their own, left out of the
// compute-sanitizer run with CudaGroupedLinearTest (bench/device-check.sh).
using CudaQuantizedGemmTest = CudaQuantizedExpertsTest;

TEST_F(CudaQuantizedGemmTest, Int8GroupedLinearMatchesCpu) {
  const cuda::LaunchLimits limits = cuda::query_launch_limits();
  const FormatCase& f = kFormats[0];
  ASSERT_EQ(f.dtype, ExpertDType::Int8);
  for (const auto& [in, out] : {std::pair<std::int64_t, std::int64_t>{200, 264}, {384, 136}})
    for (const std::vector<std::int32_t>& sizes : {std::vector<std::int32_t>{0, 1, 300, 0, 129, 7, 256, 0},
                                                   std::vector<std::int32_t>{0, 3, 70, 1, 0, 9, 2, 0}}) {
      const int groups = static_cast<int>(sizes.size());
      std::vector<std::int32_t> first(sizes.size() + 1, 0);
      std::partial_sum(sizes.begin(), sizes.end(), first.begin() + 1);
      const std::int64_t rows = first.back();
      SCOPED_TRACE(std::string(f.name) + ", " + std::to_string(in) + " -> " + std::to_string(out) + ", " +
                   std::to_string(rows) + " rows");
      const QuantizedMatrix q = quantize(test_weights(random, groups * out, in), groups * out, in, f.dtype, f.variant);
      const DeviceQuantized device_q(q, groups);
      DeviceArray<cuda::bf16> x(rows * in), y(rows * out);
      DeviceArray<std::int32_t> first_row(first.size());
      const std::vector<float> xs = x.set(random.uniform(x.size(), -1.0f, 1.0f));
      cuda::check(cudaMemcpy(first_row.get(), first.data(), first.size() * sizeof(std::int32_t),
                             cudaMemcpyHostToDevice),
                  "upload");
      DeviceBuffer workspace(cuda::int8_grouped_linear_workspace_bytes(device_q.view(), groups, limits),
                             "int8 grouped GEMM workspace");
      y.poison();
      cuda::int8_grouped_linear(x.get(), first_row.get(), groups, device_q.view(), y.get(), limits,
                                workspace.as<void>(), workspace.bytes(), nullptr);
      const std::vector<float> w = dequantize(q.view());
      std::vector<float> ref(y.size());
      ThreadPool pool(2);
      for (int g = 0; g < groups; ++g)
        cpu::linear(xs.data() + first[g] * in, sizes[g], in, w.data() + g * out * in, out,
                    ref.data() + first[g] * out, pool);
      EXPECT_LT(relative_error(y.get_values(), ref), tolerance<cuda::bf16>()) << "seed " << random.seed();
    }
}

// The MoE layer with quantized experts against cpu::moe_experts on the decoded weights, on each
// of its paths: bf16 with few rows (the quantized GEMV) and more (int8: the grouped GEMM that
// converts in its main loop; int4: the dequantized scratch and the bf16 grouped GEMM); widths
// that are not multiples of 8 and float32 activations (the dequantized scratch, a GEMM per
// expert). Widths that are not multiples of 32 and partial int4 groups throughout.
template <typename T>
void check_moe_layer(Random& random, const FormatCase& f, const MoeShape& shape,
                     const std::vector<std::int64_t>& row_counts) {
  const std::int64_t H = shape.hidden, I = shape.width;
  const int E = shape.experts;
  DeviceContext device(0);
  ThreadPool pool(2);
  const QuantizedMatrix gate_up = quantize(test_weights(random, E * 2 * I, H), E * 2 * I, H, f.dtype, f.variant);
  const QuantizedMatrix down = quantize(test_weights(random, E * H, I), E * H, I, f.dtype, f.variant);
  const DeviceQuantized device_gate_up(gate_up, E), device_down(down, E);
  DeviceArray<float> router(E * H);
  const std::vector<float> router_values = router.set(random.uniform(router.size(), -0.5f, 0.5f));
  MoeWeights<T> weights;
  weights.router = router.get();
  weights.quantized_gate_up = device_gate_up.view();
  weights.quantized_down = device_down.view();
  const std::vector<float> w13 = dequantize(gate_up.view()), w2 = dequantize(down.view());
  std::vector<cpu::ExpertMatrices> experts;
  for (int e = 0; e < E; ++e)
    experts.push_back({w13.data() + e * 2 * I * H, w13.data() + (e * 2 + 1) * I * H, w2.data() + e * H * I});
  MoeRunner<T> runner(device, shape);
  for (const std::int64_t rows : row_counts) {
    SCOPED_TRACE(std::to_string(rows) + " rows");
    DeviceArray<T> x(rows * H), out(rows * H);
    const std::vector<float> xs = x.set(random.uniform(x.size(), -1.0f, 1.0f));
    out.poison();
    runner.run(weights, x.get(), rows, out.get());
    std::vector<float> logits(static_cast<std::size_t>(rows * E)), route_weights(rows * shape.top_k);
    std::vector<int> ids(rows * shape.top_k);
    cpu::linear(xs.data(), rows, H, router_values.data(), E, logits.data(), pool);
    cpu::route_top_k(logits.data(), rows, E, shape.top_k, ids.data(), route_weights.data());
    std::vector<float> ref(out.size());
    cpu::moe_experts(xs.data(), rows, H, I, experts, shape.top_k, ids.data(), route_weights.data(), ref.data(), pool);
    EXPECT_LT(relative_error(out.get_values(), ref), tolerance<T>()) << "seed " << random.seed();
  }
}

TEST_F(CudaQuantizedGemmTest, MoeLayerMatchesCpu) {
  for (const FormatCase& f : kFormats) {
    SCOPED_TRACE(f.name);
    check_moe_layer<cuda::bf16>(random, f, {264, 200, 6, 2}, {1, 3, 17, 64, 150});
    check_moe_layer<cuda::bf16>(random, f, {100, 60, 5, 2}, {2, 90});
    check_moe_layer<float>(random, f, {264, 200, 6, 2}, {1, 90});
  }
}

// The demo model loaded with int8 and int4 experts on the CUDA backend, which quantizes them on
// the GPU: the quantized cache it writes (downloaded from the experts the GPU computes with)
// equals, byte for byte, the one the CPU backend's quantizer writes; a second load reads the
// cache and computes the same logits.
TEST(CudaQuantizedLoadTest, DemoExpertsEqualTheCpuQuantizers) {
  LIGHTDESK_SKIP_WITHOUT_GPU();
  const std::filesystem::path demo = std::filesystem::path(LIGHTDESK_SOURCE_DIR) / "resources/models/lightdesk-demo";
  const ModelConfig config = load_model_config(demo, false);
  const std::vector<TokenId> prompt = test::random_ids(24, config.vocab_size, 7);
  for (const ExpertFormat format : {ExpertFormat::Int8, ExpertFormat::Int4}) {
    SCOPED_TRACE(expert_format_name(format));
    const test::ScratchDir cpu_cache, gpu_cache;
    ModelOptions options;
    options.expert_dtype = format;
    options.backend = BackendKind::Cpu;
    options.expert_cache = cpu_cache.path();
    const auto cpu = Model::open(demo, options);
    options.backend = BackendKind::Cuda;
    options.expert_cache = gpu_cache.path();
    auto logits = [&](const Model& model) {
      auto session = model.create_session();
      session->feed(prompt);
      return std::vector<float>(session->logits().begin(), session->logits().end());
    };
    std::vector<float> first_logits;
    {
      const auto gpu = Model::open(demo, options);
      EXPECT_EQ(gpu->info().expert_cache_bytes_read, 0u);
      ASSERT_FALSE(gpu->info().expert_cache_file.empty());
      first_logits = logits(*gpu);
      const ExpertCacheKey key =
          expert_cache_key(config, ExpertLoad{expert_dtype(format), {}, cpu->info().fingerprint});
      const ExpertCacheReader from_cpu(cpu->info().expert_cache_file, key), from_gpu(gpu->info().expert_cache_file, key);
      for (int l = 0; l < config.num_layers; ++l) {
        const QuantizedLayerExperts want = from_cpu.layer(l), got = from_gpu.layer(l);
        for (const auto member : {&QuantizedLayerExperts::gate_up, &QuantizedLayerExperts::down}) {
          const QuantizedMatrix &w = want.*member, &g = got.*member;
          EXPECT_EQ(g.packed(), w.packed()) << "layer " << l;
          EXPECT_EQ(g.row_scales(), w.row_scales()) << "layer " << l;
          EXPECT_EQ(g.group_scales(), w.group_scales()) << "layer " << l;
          EXPECT_EQ(g.group_offsets(), w.group_offsets()) << "layer " << l;
        }
      }
    }
    const auto again = Model::open(demo, options);
    EXPECT_GT(again->info().expert_cache_bytes_read, 0u);
    EXPECT_EQ(logits(*again), first_logits);
  }
}

}  // namespace
}  // namespace lightdesk
