// The quantized-expert kernels (int8, int4 in the canonical layouts) against a CPU reference of
// the same format written here from its definition, on fresh random inputs with the outputs
// poisoned first: the GPU quantizer (bytes, scales and offsets, padding included), the
// dequantization a prefill reads, the decode GEMV over ragged rows per expert (partial last
// groups, inputs not a multiple of 32, several groups, 1 to 64 tokens, gated and not), and the
// MoE layer with quantized experts on both of its paths against cpu::moe_experts on the
// dequantized weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <tuple>

#include "cuda_test_util.h"
#include "lightdesk/cpu_ops.h"
#include "lightdesk/thread_pool.h"
#include "src/cuda_moe.h"

namespace lightdesk {
namespace {

using namespace test;  // the shared helpers of the GPU tests (cuda_test_util.h)
using cuda::QuantFormat;

// A quantized [experts · rows, cols] stack in host memory, made by the format's definition.
struct HostQuantized {
  QuantFormat format = QuantFormat::Int8;
  std::int64_t rows = 0, cols = 0, row_bytes = 0, groups = 0;
  std::vector<std::uint8_t> packed;
  std::vector<float> row_scales;
  std::vector<__half> scales, offsets;

  // Element (row, c) as the format decodes it.
  float value(std::int64_t row, std::int64_t c) const {
    const std::uint8_t byte = packed[row * row_bytes + (format == QuantFormat::Int8 ? c : c / 2)];
    if (format == QuantFormat::Int8) return static_cast<float>(static_cast<std::int8_t>(byte)) * row_scales[row];
    const int q = c % 2 == 0 ? byte & 0xF : byte >> 4;
    const std::int64_t g = row * groups + c / cuda::kInt4Group;
    return static_cast<float>(q) * __half2float(scales[g]) + __half2float(offsets[g]);
  }
  std::vector<float> values() const {
    std::vector<float> out(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) out[r * cols + c] = value(r, c);
    return out;
  }
};

std::int64_t round16(std::int64_t bytes) { return (bytes + 15) / 16 * 16; }

HostQuantized quantize(const std::vector<float>& w, std::int64_t rows, std::int64_t cols, QuantFormat format,
                       bool symmetric) {
  HostQuantized q;
  q.format = format;
  q.rows = rows;
  q.cols = cols;
  q.row_bytes = round16(format == QuantFormat::Int8 ? cols : (cols + 1) / 2);
  q.groups = format == QuantFormat::Int8 ? 1 : (cols + cuda::kInt4Group - 1) / cuda::kInt4Group;
  q.packed.assign(static_cast<std::size_t>(rows * q.row_bytes), 0);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = w.data() + r * cols;
    if (format == QuantFormat::Int8) {
      float absmax = 0.0f;
      for (std::int64_t c = 0; c < cols; ++c) absmax = std::max(absmax, std::fabs(row[c]));
      const float scale = absmax / 127.0f;
      q.row_scales.push_back(scale);
      for (std::int64_t c = 0; c < cols; ++c) {
        const float v = scale > 0.0f ? std::clamp(std::round(row[c] / scale), -127.0f, 127.0f) : 0.0f;
        q.packed[r * q.row_bytes + c] = static_cast<std::uint8_t>(static_cast<std::int8_t>(v));
      }
      continue;
    }
    for (std::int64_t g = 0; g < q.groups; ++g) {
      const std::int64_t first = g * cuda::kInt4Group, last = std::min(cols, first + cuda::kInt4Group);
      const auto [low_at, high_at] = std::minmax_element(row + first, row + last);
      const float low = *low_at, high = *high_at, absmax = std::max(std::fabs(low), std::fabs(high));
      const __half scale_h = __float2half_rn(symmetric ? absmax / 7.0f : (high - low) / 15.0f);
      const float scale = __half2float(scale_h);
      const __half offset_h = __float2half_rn(symmetric ? -8.0f * scale : low);
      const float offset = __half2float(offset_h);
      q.scales.push_back(scale_h);
      q.offsets.push_back(offset_h);
      for (std::int64_t c = first; c < last; ++c) {
        float v;
        if (symmetric)
          v = scale > 0.0f ? std::clamp(std::round(row[c] / scale) + 8.0f, 1.0f, 15.0f) : 8.0f;
        else
          v = scale > 0.0f ? std::clamp(std::round((row[c] - offset) / scale), 0.0f, 15.0f) : 0.0f;
        q.packed[r * q.row_bytes + c / 2] |= static_cast<std::uint8_t>(static_cast<unsigned>(v) << (4 * (c % 2)));
      }
    }
  }
  return q;
}

// The same on the device (an upload), viewed as `experts` matrices of rows / experts rows.
class DeviceQuantized {
 public:
  DeviceQuantized(const HostQuantized& q, int experts)
      : packed_(q.packed.size()),
        row_scales_(std::max<std::size_t>(q.row_scales.size(), 1)),
        scales_(std::max<std::size_t>(q.scales.size(), 1)),
        offsets_(std::max<std::size_t>(q.offsets.size(), 1)) {
    upload(packed_, q.packed);
    if (q.format == QuantFormat::Int8) {
      upload(row_scales_, q.row_scales);
    } else {
      upload(scales_, q.scales);
      upload(offsets_, q.offsets);
    }
    view_.format = q.format;
    view_.rows = q.rows / experts;
    view_.cols = q.cols;
    view_.packed = packed_.get();
    view_.row_scales = row_scales_.get();
    view_.group_scales = scales_.get();
    view_.group_offsets = offsets_.get();
  }
  const cuda::QuantizedExperts& view() const { return view_; }

 private:
  template <typename U>
  static void upload(const DeviceArray<U>& to, const std::vector<U>& from) {
    cuda::check(cudaMemcpy(to.get(), from.data(), from.size() * sizeof(U), cudaMemcpyHostToDevice), "upload");
  }
  DeviceArray<std::uint8_t> packed_;
  DeviceArray<float> row_scales_;
  DeviceArray<__half> scales_, offsets_;
  cuda::QuantizedExperts view_;
};

// The cases' formats: int8, and int4 made by either variant (the kernels decode them alike).
struct FormatCase {
  QuantFormat format;
  bool symmetric;
  const char* name;
};
constexpr FormatCase kFormats[] = {
    {QuantFormat::Int8, true, "int8"}, {QuantFormat::Int4, true, "int4 sym"}, {QuantFormat::Int4, false, "int4 asym"}};

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

TEST_F(CudaQuantizedExpertsTest, QuantizeMatchesTheFormat) {
  const std::int64_t rows = 7;
  for (const FormatCase& f : kFormats)
    for (const std::int64_t cols : {48, 96, 200, 256, 300}) {
      SCOPED_TRACE(std::string(f.name) + ", cols " + std::to_string(cols));
      const std::vector<float> w = test_weights(random, rows, cols);
      DeviceArray<cuda::bf16> device_w(w.size());
      const std::vector<float> stored = device_w.set(w);  // the kernel's inputs, rounded to bf16
      const HostQuantized ref = quantize(stored, rows, cols, f.format, f.symmetric);
      // Poisoned, padding included: the quantizer writes every byte of a row.
      HostQuantized poisoned = ref;
      std::fill(poisoned.packed.begin(), poisoned.packed.end(), std::uint8_t{0xFF});
      std::fill(poisoned.row_scales.begin(), poisoned.row_scales.end(), NAN);
      std::fill(poisoned.scales.begin(), poisoned.scales.end(), __float2half(NAN));
      std::fill(poisoned.offsets.begin(), poisoned.offsets.end(), __float2half(NAN));
      const DeviceQuantized out(poisoned, 1);
      cuda::quantize_experts(device_w.get(), 1, out.view(), f.symmetric, nullptr);
      HostQuantized got = ref;
      cuda::check(cudaMemcpy(got.packed.data(), out.view().packed, got.packed.size(), cudaMemcpyDeviceToHost), "get");
      EXPECT_EQ(got.packed, ref.packed) << "seed " << random.seed();
      if (f.format == QuantFormat::Int8) {
        cuda::check(cudaMemcpy(got.row_scales.data(), out.view().row_scales, got.row_scales.size() * sizeof(float),
                               cudaMemcpyDeviceToHost),
                    "get");
        EXPECT_EQ(got.row_scales, ref.row_scales) << "seed " << random.seed();
      } else {
        std::vector<std::uint16_t> got_bits(ref.scales.size() * 2), ref_bits(ref.scales.size() * 2);
        cuda::check(cudaMemcpy(got_bits.data(), out.view().group_scales, ref.scales.size() * 2, cudaMemcpyDeviceToHost),
                    "get");
        cuda::check(cudaMemcpy(got_bits.data() + ref.scales.size(), out.view().group_offsets, ref.offsets.size() * 2,
                               cudaMemcpyDeviceToHost),
                    "get");
        std::memcpy(ref_bits.data(), ref.scales.data(), ref.scales.size() * 2);
        std::memcpy(ref_bits.data() + ref.scales.size(), ref.offsets.data(), ref.offsets.size() * 2);
        EXPECT_EQ(got_bits, ref_bits) << "scales, then offsets (fp16 bits); seed " << random.seed();
      }
    }
}

TEST_F(CudaQuantizedExpertsTest, DequantizeMatchesTheFormat) {
  const int experts = 3;
  const std::int64_t rows = 5;
  for (const FormatCase& f : kFormats)
    for (const std::int64_t cols : {48, 200, 384}) {
      SCOPED_TRACE(std::string(f.name) + ", cols " + std::to_string(cols));
      const HostQuantized q =
          quantize(test_weights(random, experts * rows, cols), experts * rows, cols, f.format, f.symmetric);
      const DeviceQuantized device_q(q, experts);
      const std::vector<float> all = q.values();
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
  const HostQuantized q =
      quantize(test_weights(random, experts * out_rows, cols), experts * out_rows, cols, f.format, f.symmetric);
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
  const std::vector<float> w = q.values();
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
      for (const auto [out_rows, cols] : {std::pair<std::int64_t, std::int64_t>{37, 48},
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

// The MoE layer with quantized experts against cpu::moe_experts on the decoded weights: few rows
// take the quantized GEMV, more the dequantized scratch and the grouped GEMM; widths that are not
// multiples of 32 and a partial int4 group.
TEST_F(CudaQuantizedExpertsTest, MoeLayerMatchesCpu) {
  const MoeShape shape{264, 200, 6, 2};
  const std::int64_t H = shape.hidden, I = shape.width;
  const int E = shape.experts;
  DeviceContext device(0);
  ThreadPool pool(2);
  for (const FormatCase& f : kFormats) {
    SCOPED_TRACE(f.name);
    const HostQuantized gate_up = quantize(test_weights(random, E * 2 * I, H), E * 2 * I, H, f.format, f.symmetric);
    const HostQuantized down = quantize(test_weights(random, E * H, I), E * H, I, f.format, f.symmetric);
    const DeviceQuantized device_gate_up(gate_up, E), device_down(down, E);
    DeviceArray<float> router(E * H);
    const std::vector<float> router_values = router.set(random.uniform(router.size(), -0.5f, 0.5f));
    MoeWeights<cuda::bf16> weights;
    weights.router = router.get();
    weights.quantized_gate_up = device_gate_up.view();
    weights.quantized_down = device_down.view();
    const std::vector<float> w13 = gate_up.values(), w2 = down.values();
    std::vector<cpu::ExpertMatrices> experts;
    for (int e = 0; e < E; ++e)
      experts.push_back({w13.data() + e * 2 * I * H, w13.data() + (e * 2 + 1) * I * H, w2.data() + e * H * I});
    MoeRunner<cuda::bf16> runner(device, shape);
    for (const std::int64_t rows : {1, 3, 17, 64, 150}) {
      SCOPED_TRACE(std::to_string(rows) + " rows");
      DeviceArray<cuda::bf16> x(rows * H), out(rows * H);
      const std::vector<float> xs = x.set(random.uniform(x.size(), -1.0f, 1.0f));
      out.poison();
      runner.run(weights, x.get(), rows, out.get());
      std::vector<float> logits(static_cast<std::size_t>(rows * E)), route_weights(rows * shape.top_k);
      std::vector<int> ids(rows * shape.top_k);
      cpu::linear(xs.data(), rows, H, router_values.data(), E, logits.data());
      cpu::route_top_k(logits.data(), rows, E, shape.top_k, ids.data(), route_weights.data());
      std::vector<float> ref(out.size());
      cpu::moe_experts(xs.data(), rows, H, I, experts, shape.top_k, ids.data(), route_weights.data(), ref.data(),
                       pool);
      EXPECT_LT(relative_error(out.get_values(), ref), tolerance<cuda::bf16>()) << "seed " << random.seed();
    }
  }
}

}  // namespace
}  // namespace lightdesk
