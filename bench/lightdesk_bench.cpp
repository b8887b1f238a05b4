// lightdesk-bench: times the CUDA backend's kernels on MiniMax-Text-01 shapes, and whole decode
// steps of a random-weight model of its widths with fewer layers. Each figure is set against the
// ceilings measured in the same run (a large device-to-device copy; a large cuBLAS bf16 GEMM) and
// against an anchor: the one bench/anchors.py measured through PyTorch on the same GPU just before
// (--anchors FILE, its --json output), else the H200 figure quoted from
// ../shared/docs/performance-anchors.md §0, marked "quoted" (on another GPU compare the ceiling
// fractions instead). Timing: CUDA events on the backend's stream (whole decode steps: the host's
// clock around each), after warm-up, median of several runs, random data.
// Usage: lightdesk-bench [--quick] [--vision] [--only TEXT] [--anchors FILE]
//        lightdesk-bench --model-config CONFIG.json [--layers N] [--anchors FILE]
//   --quick: the smaller shapes only; --vision: the ceilings and the vision tower alone;
//   --only TEXT: the ceilings and the kernels whose name contains TEXT (e.g. "softmax prefill");
//   --model-config: an N-layer slice (default 4) of a real config with synthetic weights (model_slice)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_tower.h"
#include "lightdesk/cuda_vision_ops.h"
#include "lightdesk/vision.h"
#include "src/cuda_backend.h"
#include "lightdesk/cuda_device.h"
#include "src/cuda_moe.h"
#include "src/model_config.h"

namespace lightdesk {
namespace {

using cuda::bf16;

class EventTimer {
 public:
  explicit EventTimer(const DeviceContext& device) : device_(device) {
    check(cudaEventCreate(&start_), "cudaEventCreate");
    check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  // Median milliseconds of `reps` timed calls of `fn` (each `inner` times), after `warmup` calls.
  double median_ms(const std::function<void()>& fn, int reps, int warmup = 2, int inner = 1) {
    for (int i = 0; i < warmup; ++i) fn();
    std::vector<double> times;
    for (int r = 0; r < reps; ++r) {
      check(cudaEventRecord(start_, device_.stream()), "cudaEventRecord");
      for (int i = 0; i < inner; ++i) fn();
      check(cudaEventRecord(stop_, device_.stream()), "cudaEventRecord");
      check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
      float ms = 0.0f;
      check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
      times.push_back(static_cast<double>(ms) / inner);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

 private:
  const DeviceContext& device_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

struct Row {
  std::string what, shape;
  double ms;
  std::string achieved;   // e.g. "2.1 TB/s"
  double ceiling_fraction;  // of the copy bandwidth or the GEMM rate measured here
  std::string ceiling;      // which ceiling
  double anchor_ms;         // 0: none
  std::string anchor;
};

void add(const Row& row) {
  // Four decimals: the decode kernels take a few microseconds.
  std::printf("  %-22s %-26s %10.4f ms  %-14s %5.1f%% of %-5s", row.what.c_str(), row.shape.c_str(), row.ms,
              row.achieved.c_str(), 100.0 * row.ceiling_fraction, row.ceiling.c_str());
  if (row.anchor_ms > 0) std::printf("  x%.2f vs %s", row.anchor_ms / row.ms, row.anchor.c_str());
  std::printf("\n");
  std::fflush(stdout);
}

// Figures bench/anchors.py measured in this run, by key ("softmax_prefill/4096": milliseconds,
// "grouped_mm_w13_tflops/4096": TFLOP/s, ...).
class MeasuredAnchors {
 public:
  MeasuredAnchors() = default;
  explicit MeasuredAnchors(const std::string& path) {
    std::ifstream file(path);
    if (!file) throw std::runtime_error("cannot read the anchors file " + path);
    const nlohmann::json figures = nlohmann::json::parse(file, nullptr, false);
    if (!figures.is_object()) throw std::runtime_error(path + " is not a JSON object of anchor figures");
    for (const auto& [key, value] : figures.items())
      if (value.is_number()) figures_[key] = value.get<double>();
  }
  std::optional<double> find(const std::string& key) const {
    const auto it = figures_.find(key);
    return it == figures_.end() ? std::nullopt : std::optional<double>(it->second);
  }

 private:
  std::map<std::string, double> figures_;
};

struct Anchor {
  double ms = 0;  // the anchor's time for the same work
  std::string name;
};

// The anchor's time for `key`: measured in this run if anchors.py gave it, else quoted.
Anchor time_anchor(const MeasuredAnchors& measured, const std::string& key, double quoted_ms, const std::string& name) {
  if (const auto ms = measured.find(key)) return {*ms, name};
  return {quoted_ms, name + " (quoted)"};
}

std::string rate(double value, const char* unit) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g %s", value, unit);
  return text;
}

constexpr int kHeadDim = 128;

// Slopes of MiniMax-Text-01's first lightning layer: 2^(-8 (h+1) / heads).
std::vector<float> slopes(int heads) {
  std::vector<float> s(static_cast<std::size_t>(heads));
  for (int h = 0; h < heads; ++h) s[h] = static_cast<float>(std::pow(2.0, -8.0 * (h + 1) / heads));
  return s;
}

struct Ceilings {
  double copy_tb_s = 0;
  double gemm_tflop_s = 0;
};

Ceilings measure_ceilings(const DeviceContext& device, EventTimer& timer) {
  Ceilings c;
  const std::int64_t bytes = std::int64_t{4} << 30;
  DeviceBuffer a(static_cast<std::size_t>(bytes), "copy source"), b(static_cast<std::size_t>(bytes), "copy target");
  cuda::fill_uniform(a.as<bf16>(), bytes / 2, 1, -1.0f, 1.0f, device.stream());
  const double copy_ms = timer.median_ms(
      [&] { check(cudaMemcpyAsync(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice, device.stream()), "copy"); },
      10);
  c.copy_tb_s = 2.0 * static_cast<double>(bytes) / (copy_ms * 1e-3) / 1e12;
  add({"copy (ceiling)", "4 GiB d2d, read+write", copy_ms, rate(c.copy_tb_s, "TB/s"), 1.0, "copy", 0, ""});

  const std::int64_t n = 8192;
  DeviceBuffer x = device_array<bf16>(n * n, "gemm"), w = device_array<bf16>(n * n, "gemm"),
               y = device_array<bf16>(n * n, "gemm");
  cuda::fill_uniform(x.as<bf16>(), n * n, 2, -1.0f, 1.0f, device.stream());
  cuda::fill_uniform(w.as<bf16>(), n * n, 3, -1.0f, 1.0f, device.stream());
  const double gemm_ms = timer.median_ms([&] { device.linear(x.as<bf16>(), n, n, w.as<bf16>(), n, y.as<bf16>()); }, 10);
  c.gemm_tflop_s = 2.0 * std::pow(static_cast<double>(n), 3) / (gemm_ms * 1e-3) / 1e12;
  add({"cuBLAS bf16 (ceiling)", "8192^3", gemm_ms, rate(c.gemm_tflop_s, "TFLOP/s"), 1.0, "gemm", 0, ""});
  return c;
}

void lightning_prefill(const DeviceContext& device, EventTimer& timer, const Ceilings& c, int heads,
                       std::int64_t tokens, const Anchor& anchor) {
  const std::int64_t d = kHeadDim;
  DeviceBuffer qkv = device_array<bf16>(tokens * heads * 3 * d, "qkv"), out = device_array<bf16>(tokens * heads * d, "out");
  DeviceBuffer state = device_array<float>(heads * d * d, "state"), slope = device_array<float>(heads, "slopes");
  cuda::fill_uniform(qkv.as<bf16>(), tokens * heads * 3 * d, 4, -0.3f, 1.0f, device.stream());
  cuda::fill_uniform(state.as<float>(), heads * d * d, 5, -1.0f, 1.0f, device.stream());
  const auto s = slopes(heads);
  device.upload(slope.as<float>(), s.data(), s.size() * sizeof(float));
  const std::size_t workspace_bytes =
      cuda::lightning_prefill_workspace_bytes<bf16>(tokens, heads, kHeadDim, device.launch_limits());
  DeviceBuffer workspace(workspace_bytes, "lightning workspace");
  const int reps = tokens >= (std::int64_t{1} << 18) ? 3 : 7;
  const double ms = timer.median_ms(
      [&] {
        cuda::lightning_prefill(qkv.as<bf16>(), tokens, heads, kHeadDim, slope.as<float>(), state.as<float>(),
                                out.as<bf16>(), device.launch_limits(), device.stream(), workspace.as<void>(),
                                workspace_bytes);
      },
      reps, 1);
  // I/O floor: read qkv, write out, read and write the state once.
  const double bytes = static_cast<double>(qkv.bytes() + out.bytes() + 2 * state.bytes());
  const double tb_s = bytes / (ms * 1e-3) / 1e12;
  add({"lightning prefill", std::to_string(heads) + "h x " + std::to_string(tokens / 1024) + "K tokens", ms,
       rate(tb_s, "TB/s"), tb_s / c.copy_tb_s, "copy", anchor.ms, anchor.name});
}

// One decode step of `batch` sequences in one launch, their states one after the other.
void lightning_decode(const DeviceContext& device, EventTimer& timer, const Ceilings& c, int heads, int batch,
                      const Anchor& anchor) {
  const std::int64_t d = kHeadDim, B = batch, state_size = heads * d * d;
  DeviceBuffer qkv = device_array<bf16>(B * heads * 3 * d, "qkv"), out = device_array<bf16>(B * heads * d, "out");
  DeviceBuffer state = device_array<float>(B * state_size, "state"), slope = device_array<float>(heads, "slopes");
  cuda::fill_uniform(qkv.as<bf16>(), B * heads * 3 * d, 6, -0.3f, 1.0f, device.stream());
  cuda::fill_uniform(state.as<float>(), B * state_size, 7, -1.0f, 1.0f, device.stream());
  const auto s = slopes(heads);
  device.upload(slope.as<float>(), s.data(), s.size() * sizeof(float));
  const cuda::LightningStates states{state.as<float>(), state_size, nullptr};
  // Back-to-back launches: each step's time including its launch, as a decode step sees it.
  const double ms = timer.median_ms(
      [&] {
        cuda::lightning_decode(qkv.as<bf16>(), batch, heads, kHeadDim, slope.as<float>(), states, out.as<bf16>(),
                               device.stream());
      },
      9, 10, batch == 1 ? 200 : 20);
  const double tb_s = static_cast<double>(2 * state.bytes()) / (ms * 1e-3) / 1e12;
  add({"lightning decode", std::to_string(heads) + "h, batch " + std::to_string(batch), ms, rate(tb_s, "TB/s"),
       tb_s / c.copy_tb_s, "copy", anchor.ms, anchor.name});
}

void softmax_prefill(const DeviceContext& device, EventTimer& timer, const Ceilings& c, std::int64_t tokens,
                     const Anchor& anchor) {
  const int heads = 64, kv_heads = 8;
  const std::int64_t d = kHeadDim;
  DeviceBuffer q = device_array<bf16>(tokens * heads * d, "q"), out = device_array<bf16>(tokens * heads * d, "out");
  DeviceBuffer k = device_array<bf16>(tokens * kv_heads * d, "k"), v = device_array<bf16>(tokens * kv_heads * d, "v");
  for (auto [buffer, seed] : {std::pair{&q, 8}, std::pair{&k, 9}, std::pair{&v, 10}})
    cuda::fill_uniform(buffer->as<bf16>(), static_cast<std::int64_t>(buffer->bytes() / 2), static_cast<unsigned>(seed),
                       -1.0f, 1.0f, device.stream());
  const double ms = timer.median_ms(
      [&] {
        cuda::softmax_attention(q.as<bf16>(), tokens, 0, k.as<bf16>(), v.as<bf16>(), heads, kv_heads, kHeadDim,
                                out.as<bf16>(), device.launch_limits(), device.stream());
      },
      5, 1);
  // Causal: half of the 4 T^2 H d FLOPs of full attention.
  const double flops = 2.0 * static_cast<double>(tokens) * static_cast<double>(tokens) * heads * d;
  const double tflop_s = flops / (ms * 1e-3) / 1e12;
  add({"softmax prefill", "64/8h x " + std::to_string(tokens / 1024) + "K", ms, rate(tflop_s, "TFLOP/s"),
       tflop_s / c.gemm_tflop_s, "gemm", anchor.ms, anchor.name});
}

void softmax_decode(const DeviceContext& device, EventTimer& timer, const Ceilings& c, std::int64_t context,
                    bool paged, const Anchor& anchor) {
  const int heads = 64, kv_heads = 8;
  const std::int64_t d = kHeadDim, kv_width = kv_heads * d;
  DeviceBuffer q = device_array<bf16>(heads * d, "q"), out = device_array<bf16>(heads * d, "out");
  // Keys and values: one run each, or pages of the backend's size ([keys, values] of 128
  // positions, as KvPagePool lays out one layer) in shuffled order, as a pool hands them out.
  DeviceBuffer kv_memory = device_array<bf16>(2 * context * kv_width, "k, v");
  cuda::fill_uniform(kv_memory.as<bf16>(), 2 * context * kv_width, 12, -1.0f, 1.0f, device.stream());
  cuda::fill_uniform(q.as<bf16>(), heads * d, 11, -1.0f, 1.0f, device.stream());
  constexpr int kPageShift = 7;
  constexpr std::int64_t kPage = std::int64_t{1} << kPageShift;
  std::vector<std::int32_t> pages(static_cast<std::size_t>((context + kPage - 1) / kPage));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(13));
  DeviceBuffer page_table = device_array<std::int32_t>(static_cast<std::int64_t>(pages.size()), "page table");
  device.upload(page_table.as<void>(), pages.data(), pages.size() * sizeof(std::int32_t));
  bf16* keys = kv_memory.as<bf16>();
  const cuda::KvCacheView<const bf16> kv =
      paged ? cuda::KvCacheView<const bf16>{keys, keys + kPage * kv_width, page_table.as<std::int32_t>(),
                                            2 * kPage * kv_width, kPageShift}
            : cuda::contiguous_kv<const bf16>(keys, keys + context * kv_width, kv_width);
  // The split workspace planned ahead, as the backend does.
  DeviceBuffer workspace(cuda::softmax_attention_workspace_bytes<bf16>(1, context - 1, heads, kv_heads, kHeadDim,
                                                                       device.launch_limits()),
                         "split workspace");
  // Back-to-back calls, as a decode graph runs them: the host's launch latency stays out.
  const double ms = timer.median_ms(
      [&] {
        cuda::softmax_attention(q.as<bf16>(), 1, context - 1, kv, heads, kv_heads, kHeadDim, out.as<bf16>(),
                                device.launch_limits(), device.stream(), workspace.as<void>(), workspace.bytes());
      },
      9, 2, 4);
  const double tb_s = static_cast<double>(kv_memory.bytes()) / (ms * 1e-3) / 1e12;
  add({"softmax decode",
       "64/8h, batch 1, " + std::to_string(context / 1024) + "K ctx, " + (paged ? "paged" : "one run"), ms,
       rate(tb_s, "TB/s"), tb_s / c.copy_tb_s, "copy", anchor.ms, anchor.name});
}

// Sampling on the device over MiniMax-Text-01's vocabulary: greedy, and top-k/top-p with a temperature.
void sampling(const DeviceContext& device, EventTimer& timer) {
  const std::int64_t vocab = 200064;
  DeviceBuffer logits = device_array<float>(vocab, "logits"), token = device_array<std::int32_t>(1, "token");
  DeviceBuffer workspace(cuda::sampling_workspace_bytes(vocab), "sampling workspace");
  cuda::fill_uniform(logits.as<float>(), vocab, 18, -10.0f, 10.0f, device.stream());
  for (const cuda::TokenSampling& params : {cuda::TokenSampling{}, cuda::TokenSampling{0.8f, 40, 0.95f, 1, 0},
                                            cuda::TokenSampling{1.0f, 0, 0.9f, 1, 0}}) {
    const double ms = timer.median_ms(
        [&] {
          cuda::sample_token(logits.as<float>(), vocab, params, workspace.as<void>(), token.as<std::int32_t>(),
                             device.stream());
        },
        9, 3, 20);
    char shape[64];
    std::snprintf(shape, sizeof shape, "200K vocab, T %.1f k %d p %.2f", static_cast<double>(params.temperature),
                  params.top_k, static_cast<double>(params.top_p));
    add({"sampling", shape, ms, "", 0.0, "-", 0, ""});
  }
}

// The experts' matrices of MiniMax-Text-01's MoE layer quantized on the device from bf16 ones.
struct QuantizedLayer {
  QuantizedLayer(const DeviceContext& device, cuda::QuantFormat format, const MoeShape& shape, const bf16* gate_up,
                 const bf16* down) {
    const std::int64_t H = shape.hidden, I = shape.width, E = shape.experts;
    gate_up_view = allocate(format, 2 * I, H, E, gate_up_memory);
    down_view = allocate(format, H, I, E, down_memory);
    // Symmetric int4: the variant does not change what the kernels read.
    cuda::quantize_experts(gate_up, static_cast<int>(E), gate_up_view, true, device.stream());
    cuda::quantize_experts(down, static_cast<int>(E), down_view, true, device.stream());
  }
  static cuda::QuantizedExperts allocate(cuda::QuantFormat format, std::int64_t rows, std::int64_t cols,
                                         std::int64_t experts, std::vector<DeviceBuffer>& memory) {
    cuda::QuantizedExperts view{format, rows, cols};
    const std::int64_t scales = experts * rows * view.groups();
    memory.emplace_back(static_cast<std::size_t>(experts * rows * view.row_bytes()), "quantized experts");
    view.packed = memory.back().as<std::uint8_t>();
    if (format == cuda::QuantFormat::Int8) {
      memory.push_back(device_array<float>(scales, "quantized experts' scales"));
      view.row_scales = memory.back().as<float>();
    } else {
      memory.push_back(device_array<__half>(scales, "quantized experts' scales"));
      view.group_scales = memory.back().as<__half>();
      memory.push_back(device_array<__half>(scales, "quantized experts' offsets"));
      view.group_offsets = memory.back().as<__half>();
    }
    return view;
  }
  std::vector<DeviceBuffer> gate_up_memory, down_memory;
  cuda::QuantizedExperts gate_up_view, down_view;
};

// Rows of a random top-k router's tokens grouped by expert: each expert's first row.
std::vector<std::int32_t> routed_first_rows(std::int64_t tokens, int experts, int k, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::vector<std::int32_t> counts(static_cast<std::size_t>(experts), 0), order(counts.size());
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), random);
    for (int i = 0; i < k; ++i) ++counts[order[i]];
  }
  std::vector<std::int32_t> first(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), first.begin() + 1);
  return first;
}

// Quantized experts (int8, int4) of the MoE layer: the decode GEMV alone over a random router's
// rows against the copy bandwidth in the bytes it reads (each touched expert's packed rows and
// scales once); the int8 w13 grouped GEMM (weights converted in its main loop) against the bf16
// one's time in this run (bf16_w13_gemm_ms); the whole layer at each of `sizes` tokens
// against the bf16 layer's time in this run (bf16_ms): decode sizes as TB/s of the quantized
// bytes touched, prefill sizes as TFLOP/s.
void quantized_moe(const DeviceContext& device, EventTimer& timer, const Ceilings& c, const MoeShape& shape,
                   const float* router, const bf16* gate_up, const bf16* down, const std::vector<std::int64_t>& sizes,
                   const std::vector<double>& bf16_ms, double bf16_w13_gemm_ms) {
  const std::int64_t H = shape.hidden, I = shape.width;
  const int E = shape.experts;
  for (const cuda::QuantFormat format : {cuda::QuantFormat::Int8, cuda::QuantFormat::Int4}) {
    const std::string name = format == cuda::QuantFormat::Int8 ? "int8" : "int4";
    const QuantizedLayer layer(device, format, shape, gate_up, down);
    for (const std::int64_t tokens : {1, 4, 64}) {
      const std::vector<std::int32_t> first = routed_first_rows(tokens, E, shape.top_k, 19);
      const std::int64_t rows = first.back();
      DeviceBuffer first_row = device_array<std::int32_t>(E + 1, "first rows"), x = device_array<bf16>(rows * H, "x"),
                   y = device_array<bf16>(rows * 2 * I, "y");
      device.upload(first_row.as<std::int32_t>(), first.data(), first.size() * sizeof(std::int32_t));
      cuda::fill_uniform(x.as<bf16>(), rows * H, 20, -1.0f, 1.0f, device.stream());
      const double ms = timer.median_ms(
          [&] {
            cuda::quantized_expert_gemv(layer.gate_up_view, first_row.as<std::int32_t>(), E, x.as<bf16>(), false, rows,
                                        tokens, y.as<bf16>(), device.launch_limits(), device.stream());
          },
          9, 3, 10);
      int touched = 0;
      for (int e = 0; e < E; ++e) touched += first[e + 1] > first[e];
      const double bytes = static_cast<double>(touched) * static_cast<double>(layer.gate_up_view.expert_bytes());
      const double tb_s = bytes / (ms * 1e-3) / 1e12;
      add({"quantized GEMV " + name, "w13 " + std::to_string(touched) + " experts, " + std::to_string(tokens) + " tok",
           ms, rate(tb_s, "TB/s"), tb_s / c.copy_tb_s, "copy", 0, ""});
    }
    if (format == cuda::QuantFormat::Int8) {
      // The w13 grouped GEMM alone at 4096 tokens routed uniformly, as "experts w13 GEMM" in bf16.
      const std::int64_t rows = 4096 * shape.top_k;
      std::vector<std::int32_t> first(static_cast<std::size_t>(E) + 1);
      for (int e = 0; e <= E; ++e) first[e] = static_cast<std::int32_t>(e * rows / E);
      DeviceBuffer first_row = device_array<std::int32_t>(E + 1, "first rows"), x = device_array<bf16>(rows * H, "x"),
                   y = device_array<bf16>(rows * 2 * I, "y"),
                   workspace(cuda::int8_grouped_linear_workspace_bytes(layer.gate_up_view, E, device.launch_limits()),
                             "int8 grouped GEMM workspace");
      device.upload(first_row.as<std::int32_t>(), first.data(), first.size() * sizeof(std::int32_t));
      cuda::fill_uniform(x.as<bf16>(), rows * H, 18, -1.0f, 1.0f, device.stream());
      const double ms = timer.median_ms(
          [&] {
            cuda::int8_grouped_linear(x.as<bf16>(), first_row.as<std::int32_t>(), E, layer.gate_up_view, y.as<bf16>(),
                                      device.launch_limits(), workspace.as<void>(), workspace.bytes(),
                                      device.stream());
          },
          7);
      const double tflop_s = 2.0 * static_cast<double>(rows * H * 2 * I) / (ms * 1e-3) / 1e12;
      add({"experts w13 GEMM int8", "32e grouped, 4096 tok", ms, rate(tflop_s, "TFLOP/s"), tflop_s / c.gemm_tflop_s,
           "gemm", bf16_w13_gemm_ms, "the bf16 grouped GEMM"});
    }
    MoeRunner<bf16> runner(device, shape);
    MoeWeights<bf16> weights;
    weights.router = router;
    weights.quantized_gate_up = layer.gate_up_view;
    weights.quantized_down = layer.down_view;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const std::int64_t tokens = sizes[i];
      DeviceBuffer x = device_array<bf16>(tokens * H, "x"), out = device_array<bf16>(tokens * H, "out");
      cuda::fill_uniform(x.as<bf16>(), tokens * H, 17, -1.0f, 1.0f, device.stream());
      const double ms = timer.median_ms([&] { runner.run(weights, x.as<bf16>(), tokens, out.as<bf16>()); },
                                        tokens >= 32768 ? 3 : 7);
      const double flops = 6.0 * static_cast<double>(tokens * shape.top_k) * static_cast<double>(H * I);
      const double touched = static_cast<double>(E) * (1.0 - std::pow(1.0 - 2.0 / static_cast<double>(E),
                                                                       static_cast<double>(tokens)));
      const double weight_bytes = touched * static_cast<double>(layer.gate_up_view.expert_bytes() +
                                                                layer.down_view.expert_bytes());
      const double tflop_s = flops / (ms * 1e-3) / 1e12, tb_s = weight_bytes / (ms * 1e-3) / 1e12;
      const bool weight_bound = tokens <= MoeRunner<bf16>::kQuantizedGemvRows;
      add({"MoE layer " + name, "32e top-2, " + std::to_string(tokens) + " tok", ms,
           weight_bound ? rate(tb_s, "TB/s") : rate(tflop_s, "TFLOP/s"),
           weight_bound ? tb_s / c.copy_tb_s : tflop_s / c.gemm_tflop_s, weight_bound ? "copy" : "gemm", bf16_ms[i],
           "the bf16 layer"});
    }
  }
}

void moe(const DeviceContext& device, EventTimer& timer, const Ceilings& c, const MeasuredAnchors& measured,
         const std::vector<std::int64_t>& sizes) {
  const MoeShape shape{6144, 9216, 32, 2};
  const std::int64_t H = shape.hidden, I = shape.width, E = shape.experts;
  DeviceBuffer router = device_array<float>(E * H, "router"), gate_up = device_array<bf16>(E * 2 * I * H, "w13"),
               down = device_array<bf16>(E * H * I, "w2");
  const float scale = 1.0f / std::sqrt(static_cast<float>(H));
  cuda::fill_uniform(router.as<float>(), E * H, 14, -scale, scale, device.stream());
  cuda::fill_uniform(gate_up.as<bf16>(), E * 2 * I * H, 15, -scale, scale, device.stream());
  cuda::fill_uniform(down.as<bf16>(), E * H * I, 16, -scale, scale, device.stream());
  MoeRunner<bf16> runner(device, shape);
  MoeWeights<bf16> weights;
  weights.router = router.as<float>();
  weights.gate_up = gate_up.as<bf16>();
  weights.down = down.as<bf16>();
  std::vector<double> layer_ms;
  for (std::int64_t tokens : sizes) {
    DeviceBuffer x = device_array<bf16>(tokens * H, "x"), out = device_array<bf16>(tokens * H, "out");
    cuda::fill_uniform(x.as<bf16>(), tokens * H, 17, -1.0f, 1.0f, device.stream());
    const double ms = timer.median_ms([&] { runner.run(weights, x.as<bf16>(), tokens, out.as<bf16>()); },
                                      tokens >= 32768 ? 3 : 7);
    layer_ms.push_back(ms);
    const double flops = 6.0 * static_cast<double>(tokens * shape.top_k) * static_cast<double>(H * I);
    // Experts a uniform router touches, on average: E (1 - (1 - k/E)^tokens).
    const double touched = static_cast<double>(E) * (1.0 - std::pow(1.0 - 2.0 / static_cast<double>(E),
                                                                     static_cast<double>(tokens)));
    const double weight_bytes = touched * 3.0 * static_cast<double>(H * I) * 2.0;
    const double tflop_s = flops / (ms * 1e-3) / 1e12, tb_s = weight_bytes / (ms * 1e-3) / 1e12;
    const bool weight_bound = tokens * shape.top_k < 256 * E;
    // Anchor: torch._grouped_mm's rate (w13 only) on the same token count, i.e. its time for our
    // FLOPs: measured by anchors.py on the ragged expert loads of a random router like this one's;
    // else §0's quoted figure for uniform loads (684 TFLOP/s at 4K tokens, 661 at 32K).
    const std::optional<double> measured_rate = measured.find("grouped_mm_w13_routed_tflops/" + std::to_string(tokens));
    const double anchor_rate = measured_rate ? *measured_rate : (tokens >= 32768 ? 661.0 : 684.0);
    add({"MoE layer", "32e top-2, " + std::to_string(tokens) + " tok", ms,
         weight_bound ? rate(tb_s, "TB/s") : rate(tflop_s, "TFLOP/s"),
         weight_bound ? tb_s / c.copy_tb_s : tflop_s / c.gemm_tflop_s, weight_bound ? "copy" : "gemm",
         weight_bound ? 0.0 : flops / (anchor_rate * 1e12) * 1e3,
         "grouped_mm " + rate(anchor_rate, "TFLOP/s") + (measured_rate ? " routed" : " (quoted, uniform)")});
  }
  // The anchor's own workload: the w13 grouped GEMM alone over 4096 tokens, routed uniformly, as
  // bench/anchors.py times torch._grouped_mm in the same run.
  const std::int64_t tokens = 4096, rows = tokens * shape.top_k;
  std::vector<std::int32_t> first(static_cast<std::size_t>(E) + 1);
  for (std::int64_t e = 0; e <= E; ++e) first[e] = static_cast<std::int32_t>(e * rows / E);
  DeviceBuffer first_row = device_array<std::int32_t>(E + 1, "first rows"), x = device_array<bf16>(rows * H, "x"),
               y = device_array<bf16>(rows * 2 * I, "y"),
               workspace(cuda::grouped_linear_workspace_bytes(static_cast<int>(E), device.launch_limits()),
                         "grouped GEMM workspace");
  device.upload(first_row.as<std::int32_t>(), first.data(), first.size() * sizeof(std::int32_t));
  cuda::fill_uniform(x.as<bf16>(), rows * H, 18, -1.0f, 1.0f, device.stream());
  const double ms = timer.median_ms(
      [&] {
        cuda::grouped_linear(x.as<bf16>(), first_row.as<std::int32_t>(), static_cast<int>(E), rows, H,
                             gate_up.as<bf16>(), 2 * I, y.as<bf16>(), device.launch_limits(), workspace.as<void>(),
                             workspace.bytes(), device.stream());
      },
      7);
  const double tflop_s = 2.0 * static_cast<double>(rows * H * 2 * I) / (ms * 1e-3) / 1e12;
  const std::optional<double> uniform_rate = measured.find("grouped_mm_w13_tflops/4096");
  const double anchor_rate = uniform_rate.value_or(684.0);
  add({"experts w13 GEMM", "32e grouped, 4096 tok", ms, rate(tflop_s, "TFLOP/s"), tflop_s / c.gemm_tflop_s, "gemm",
       2.0 * static_cast<double>(rows * H * 2 * I) / (anchor_rate * 1e12) * 1e3,
       "grouped_mm " + rate(anchor_rate, "TFLOP/s") + (uniform_rate ? "" : " (quoted)")});
  quantized_moe(device, timer, c, shape, router.as<float>(), gate_up.as<bf16>(), down.as<bf16>(), sizes, layer_ms,
                ms);
}

// MiniMax-Text-01's widths (hidden 6144, 64 heads x 128, softmax 64/8 heads, 32 experts of
// 9216, top-2, vocabulary 200064) with the layers `kinds` lists ('L' lightning, 'S' softmax).
ModelConfig text01_config(const std::string& kinds) {
  std::string types;
  for (char kind : kinds) types += std::string(types.empty() ? "" : ", ") + (kind == 'S' ? "1" : "0");
  const std::string json = R"({"architectures": ["MiniMaxText01ForCausalLM"], "model_type": "minimax_text_01",
    "vocab_size": 200064, "hidden_size": 6144, "intermediate_size": 9216, "num_attention_heads": 64,
    "num_key_value_heads": 8, "head_dim": 128, "num_local_experts": 32, "num_experts_per_tok": 2,
    "rotary_dim": 64, "rope_theta": 10000000, "max_position_embeddings": 10240000,
    "layernorm_full_attention_alpha": 3.5565588200778455, "layernorm_linear_attention_alpha": 3.5565588200778455,
    "layernorm_mlp_alpha": 3.5565588200778455, "postnorm": true, "num_hidden_layers": )" +
                           std::to_string(kinds.size()) + R"(, "attn_type_list": [)" + types + "]}";
  return parse_model_config(json, "lightdesk-bench's " + kinds + " model", false);
}

// Bytes one decoder layer of kind `kind` moves in a decode step of one sequence at `context`:
// the weights it reads (attention projections, norms, router, the two experts the token goes
// to), the softmax K/V of `context` positions plus the new one, the float32 lightning state
// read and written.
double layer_step_bytes(const ModelConfig& c, LayerKind kind, std::int64_t context,
                        ExpertDType experts = ExpertDType::BF16) {
  const double H = c.hidden_size, A = static_cast<double>(c.num_heads) * c.head_dim,
               KV = static_cast<double>(c.num_kv_heads) * c.head_dim;
  constexpr double kWeight = 2.0, kFloat = 4.0;  // bf16 weights and K/V; float32 norms, router, state
  const double expert_bytes = static_cast<double>(expert_matrix_bytes(experts, 2 * c.expert_width, c.hidden_size) +
                                                  expert_matrix_bytes(experts, c.hidden_size, c.expert_width));
  double bytes = 2 * H * kFloat + c.num_experts * H * kFloat + c.experts_per_token * expert_bytes;
  if (kind == LayerKind::Lightning)
    bytes += 5 * A * H * kWeight + A * kFloat + 2 * A * c.head_dim * kFloat;
  else
    bytes += (2 * A * H + 2 * KV * H) * kWeight + static_cast<double>(context + 1) * 2 * KV * kWeight;
  return bytes;
}

// The whole step: the layers, one embedding row, the final norm and the LM head.
double decode_step_bytes(const ModelConfig& c, std::int64_t context, ExpertDType experts) {
  const double H = c.hidden_size, V = c.vocab_size;
  double bytes = (V * H + H) * 2.0 + H * 4.0;
  for (LayerKind kind : c.layer_kinds) bytes += layer_step_bytes(c, kind, context, experts);
  return bytes;
}

std::string layer_kinds_text(const ModelConfig& config) {
  std::string kinds;
  for (LayerKind kind : config.layer_kinds) kinds += kind == LayerKind::Softmax ? 'S' : 'L';
  return kinds;
}

// Whole-model decode steps of a model with synthetic weights, through the engine's CUDA
// backend as a session runs them (graph decode: token up, one graph launch, greedy sampling on
// the device, the token id down), after a prefill to each of `contexts`, with the experts in
// `experts` (quantized on the host at load). Returns the median step time at each context.
std::vector<double> model_decode(const Ceilings& c, const ModelConfig& config, const std::vector<std::int64_t>& contexts,
                                 ExpertDType experts = ExpertDType::BF16) {
  const std::string kinds = layer_kinds_text(config);
  ExpertLoad load;
  load.dtype = experts;
  const auto backend = make_cuda_backend(config, WeightMap::synthetic(config, 60), ModelOptions{}, load, {});
  const auto sequence = backend->new_sequence();
  // The cache holds the longest context from the start, so the decode graph is captured once.
  backend->resize_kv(*sequence, contexts.back() + 1);
  std::mt19937 random(61);
  std::mt19937_64 sampling_rng(62);
  std::uniform_int_distribution<TokenId> token(0, config.vocab_size - 1);
  std::vector<TokenId> chunk;
  constexpr std::int64_t kPrefillChunk = 4096;
  ForwardRequest request;
  std::int64_t position = 0;
  std::vector<double> step_ms;
  for (std::int64_t context : contexts) {
    while (position < context) {
      chunk.resize(static_cast<std::size_t>(std::min(kPrefillChunk, context - position)));
      for (TokenId& t : chunk) t = token(random);
      request.tokens = chunk;
      request.first_position = position;
      backend->forward(*sequence, request);
      position += static_cast<std::int64_t>(chunk.size());
    }
    // Every step at the same position (its K/V row rewritten), so each reads the same bytes.
    std::vector<double> times;
    for (int step = 0; step < 23; ++step) {
      const TokenId next = token(random);
      request.tokens = std::span(&next, 1);
      request.first_position = context;
      const auto start = std::chrono::steady_clock::now();
      backend->forward(*sequence, request);
      backend->sample(*sequence, SamplingParams{}, sampling_rng);  // waits for the step
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (step >= 3) times.push_back(ms);  // the first steps capture the graph and warm up
    }
    std::sort(times.begin(), times.end());
    const double ms = times[times.size() / 2];
    step_ms.push_back(ms);
    const double bytes = decode_step_bytes(config, context, experts);
    const double bound_ms = bytes / (c.copy_tb_s * 1e12) * 1e3;
    const double tb_s = bytes / (ms * 1e-3) / 1e12;
    add({experts == ExpertDType::BF16 ? std::string("model decode step")
                                      : std::string("model decode step ") + expert_dtype_name(experts),
         std::to_string(kinds.size()) + (kinds.size() == 1 ? " layer " : " layers ") + kinds + ", " +
             std::to_string(context / 1024) + "K ctx",
         ms, rate(tb_s, "TB/s"), tb_s / c.copy_tb_s, "copy", 0, ""});
    std::printf("    %.2f GB per step, bound %.3f ms at the copy bandwidth (this step: %.2fx the bound)\n",
                bytes / 1e9, bound_ms, ms / bound_ms);
    std::fflush(stdout);
  }
  return step_ms;
}

std::vector<double> model_decode(const Ceilings& c, const std::string& kinds, const std::vector<std::int64_t>& contexts,
                                 ExpertDType experts = ExpertDType::BF16) {
  return model_decode(c, text01_config(kinds), contexts, experts);
}

// What one decoder layer adds to a decode step: the difference between models with and
// without it (medians of whole steps), against the bytes the layer moves.
void decoder_layer(const Ceilings& c, LayerKind kind, std::int64_t context, double with_ms, double without_ms,
                   int layers_added) {
  const double bytes = layer_step_bytes(text01_config("L"), kind, context);
  const double ms = (with_ms - without_ms) / layers_added;
  const double tb_s = bytes / (ms * 1e-3) / 1e12;
  add({"decoder layer",
       kind == LayerKind::Softmax ? "softmax, " + std::to_string(context / 1024) + "K ctx" : "lightning", ms,
       rate(tb_s, "TB/s"), tb_s / c.copy_tb_s, "copy", 0, ""});
  std::printf("    %.3f GB per step, bound %.3f ms (the difference of whole-step medians)\n", bytes / 1e9,
              bytes / (c.copy_tb_s * 1e12) * 1e3);
  std::fflush(stdout);
}

// Prefill of each of `contexts` tokens, in the backend's own chunks, by a model with synthetic
// weights, timed on the host clock to the last token's logits (after one warm-up chunk).
std::vector<double> model_prefill(const ModelConfig& config, const std::vector<std::int64_t>& contexts) {
  const auto backend = make_cuda_backend(config, WeightMap::synthetic(config, 60), ModelOptions{}, {}, {});
  std::mt19937 random(64);
  std::uniform_int_distribution<TokenId> token(0, config.vocab_size - 1);
  std::vector<float> logits(static_cast<std::size_t>(config.vocab_size));
  const std::int64_t chunk = backend->default_chunk_tokens();
  const auto prefill = [&](std::int64_t count) {
    std::vector<TokenId> ids(static_cast<std::size_t>(count));
    for (TokenId& t : ids) t = token(random);
    const auto sequence = backend->new_sequence();
    backend->resize_kv(*sequence, count);
    const auto start = std::chrono::steady_clock::now();
    ForwardRequest request;
    for (std::int64_t done = 0; done < count; done += chunk) {
      request.tokens = std::span(ids).subspan(static_cast<std::size_t>(done),
                                              static_cast<std::size_t>(std::min(chunk, count - done)));
      request.first_position = done;
      backend->forward(*sequence, request);
    }
    backend->read_logits(*sequence, logits.data());  // waits for the device
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  prefill(chunk);
  std::vector<double> ms;
  for (std::int64_t context : contexts) ms.push_back(prefill(context));
  return ms;
}

// --model-config FILE --layers N: the geometry of a real config.json with synthetic weights, N of
// its layers: those that end at its first softmax layer (3 lightning and 1 softmax for N = 4 of
// MiniMax-Text-01, about 50 GB in bf16). Prefill at 32K and 128K tokens, decode steps at 4K and
// 128K of context against the copy-bandwidth bound of the bytes a step reads. The same for N and
// N/2 lightning layers gives, by differences, one lightning layer, one softmax layer and the rest
// of the model (embedding, final norm, LM head, sampling), so the figures scale to the config's
// whole depth (rows marked "scaled"). transformers' own decoder layers at the same widths, timed
// in the same run by bench/transformers_layers.py (--anchors), give the ratio users would see.
void model_slice(const Ceilings& c, const std::string& path, int layers, const MeasuredAnchors& measured) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot read " + path);
  std::stringstream text;
  text << file.rdbuf();
  const ModelConfig full = parse_model_config(text.str(), path, false);
  if (layers < 2 || layers > full.num_layers)
    throw std::runtime_error("--layers must be 2 to " + std::to_string(full.num_layers));
  const auto first_softmax = std::find(full.layer_kinds.begin(), full.layer_kinds.end(), LayerKind::Softmax);
  if (first_softmax == full.layer_kinds.end()) throw std::runtime_error(path + " has no softmax layer");
  const auto end = std::max(first_softmax + 1, full.layer_kinds.begin() + layers);
  const auto sliced = [&](std::vector<LayerKind> kinds) {
    ModelConfig config = full;
    config.num_layers = static_cast<int>(kinds.size());
    config.layer_kinds = std::move(kinds);
    return config;
  };
  const ModelConfig slice = sliced(std::vector<LayerKind>(end - layers, end));
  const ModelConfig lightning = sliced(std::vector<LayerKind>(static_cast<std::size_t>(layers), LayerKind::Lightning));
  const ModelConfig half = sliced(std::vector<LayerKind>(static_cast<std::size_t>(layers / 2), LayerKind::Lightning));
  const std::vector<std::int64_t> prefill_contexts = {32768, 131072}, decode_contexts = {4096, 131072};

  struct Times {
    std::vector<double> prefill, decode;
  };
  const auto measure = [&](const ModelConfig& config) {
    std::printf("  %s (%d layers %s, synthetic weights):\n", path.c_str(), config.num_layers,
                layer_kinds_text(config).c_str());
    Times t{model_prefill(config, prefill_contexts), model_decode(c, config, decode_contexts)};
    for (std::size_t i = 0; i < prefill_contexts.size(); ++i)
      std::printf("    prefill %lldK: %.1f ms, %.0f tokens/s\n", static_cast<long long>(prefill_contexts[i] / 1024),
                  t.prefill[i], static_cast<double>(prefill_contexts[i]) / (t.prefill[i] * 1e-3));
    std::fflush(stdout);
    return t;
  };
  const Times s = measure(slice), l = measure(lightning), h = measure(half);

  // Per layer: lightning from the two all-lightning models, the rest from them, softmax from the slice.
  const double n_l = layers, n_h = layers / 2, slice_l = slice.num_lightning_layers(), slice_s = slice.num_softmax_layers();
  const auto scale = [&](double t_slice, double t_l, double t_h, const std::string& kind, std::int64_t context,
                         const char* step) {
    const double per_lightning = (t_l - t_h) / (n_l - n_h), rest = t_l - n_l * per_lightning;
    const double per_softmax = (t_slice - rest - slice_l * per_lightning) / slice_s;
    const double layers_ms = full.num_lightning_layers() * per_lightning + full.num_softmax_layers() * per_softmax;
    const std::string key = std::string("transformers_layer/") + step + "/" + std::to_string(context);
    const auto theirs_l = measured.find(key + "/lightning"), theirs_s = measured.find(key + "/softmax");
    std::printf("    %s %lldK: one lightning layer %.3f ms, one softmax layer %.3f ms, the rest %.3f ms; scaled to %d "
                "layers: %.1f ms (%s)",
                step, static_cast<long long>(context / 1024), per_lightning, per_softmax, rest, full.num_layers,
                rest + layers_ms, kind.c_str());
    if (theirs_l && theirs_s) {
      const double theirs = full.num_lightning_layers() * *theirs_l + full.num_softmax_layers() * *theirs_s;
      std::printf("; transformers' layers scaled the same: %.1f ms, x%.1f ours (layers only)", theirs,
                  theirs / layers_ms);
    }
    std::printf("\n");
    return rest + layers_ms;
  };
  for (std::size_t i = 0; i < prefill_contexts.size(); ++i) {
    const double ms = scale(s.prefill[i], l.prefill[i], h.prefill[i], "scaled", prefill_contexts[i], "prefill");
    add({"model prefill", std::to_string(full.num_layers) + " layers (scaled), " +
                              std::to_string(prefill_contexts[i] / 1024) + "K tok",
         ms, rate(static_cast<double>(prefill_contexts[i]) / (ms * 1e-3), "tok/s"), 0, "", 0, ""});
  }
  for (std::size_t i = 0; i < decode_contexts.size(); ++i) {
    const double ms = scale(s.decode[i], l.decode[i], h.decode[i], "scaled", decode_contexts[i], "decode");
    const double bytes = decode_step_bytes(full, decode_contexts[i], ExpertDType::BF16), tb_s = bytes / (ms * 1e-3) / 1e12;
    add({"model decode step", std::to_string(full.num_layers) + " layers (scaled), " +
                                  std::to_string(decode_contexts[i] / 1024) + "K ctx",
         ms, rate(tb_s, "TB/s"), tb_s / c.copy_tb_s, "copy", 0, ""});
  }
}

// Whole-model decode steps at real widths with 1, 2 and 4 layers (one of them softmax), and
// from their differences the time of one lightning and one softmax decoder layer.
void model_decode_rows(const Ceilings& c, bool quick) {
  if (quick) {
    model_decode(c, "LS", {4096});
    return;
  }
  // The same step with quantized experts: about 2x (int8) and 4x (int4) fewer expert bytes.
  for (const ExpertDType experts : {ExpertDType::Int8, ExpertDType::Int4}) model_decode(c, "LS", {4096}, experts);
  const std::vector<std::int64_t> contexts = {4096, 65536};
  const std::vector<double> one = model_decode(c, "L", {4096});
  const std::vector<double> two = model_decode(c, "LS", contexts);
  const std::vector<double> four = model_decode(c, "LLLS", contexts);
  decoder_layer(c, LayerKind::Lightning, 0, four[0], two[0], 2);
  for (std::size_t i = 0; i < contexts.size(); ++i)
    decoder_layer(c, LayerKind::Softmax, contexts[i], two[i], one[0], 1);
}

// The steps of one ViT-L encoder layer at the benchmark's shape (`tiles` tiles of 577 tokens),
// each timed alone on random data: where the tower's time goes.
void vision_layer_steps(const DeviceContext& device, EventTimer& timer, const Ceilings& c, std::int64_t tiles) {
  const std::int64_t D = 1024, I = 4096, heads = 16, d = 64, tokens = 577, score_stride = 584;
  const std::int64_t rows = tiles * tokens, batch = tiles * heads;
  std::uint64_t seed = 40;
  auto random = [&](std::int64_t count) {
    DeviceBuffer buffer = device_array<bf16>(count, "vision step");
    cuda::fill_uniform(buffer.as<bf16>(), count, seed++, -1.0f, 1.0f, device.stream());
    return buffer;
  };
  DeviceBuffer x = random(rows * D), y = random(rows * D), qkv = random(rows * 3 * D), q = random(rows * D),
               k = random(rows * D), v = random(rows * D), o = random(rows * D), wide = random(rows * I),
               scores = random(batch * tokens * score_stride), w_qkv = random(3 * D * D), w_fc1 = random(I * D),
               w_fc2 = random(D * I);
  DeviceBuffer vector = device_array<float>(3 * I, "vision step");
  cuda::fill_uniform(vector.as<float>(), 3 * I, seed++, 0.5f, 1.0f, device.stream());
  const cudaStream_t stream = device.stream();
  const float* weights = vector.as<float>();
  const MatrixBatch<const bf16> qs{q.as<bf16>(), d, tokens * d}, ks{k.as<bf16>(), d, tokens * d},
      vs{v.as<bf16>(), d, tokens * d}, probabilities{scores.as<bf16>(), score_stride, tokens * score_stride};
  const MatrixBatch<bf16> score_out{scores.as<bf16>(), score_stride, tokens * score_stride},
      os{o.as<bf16>(), d, tokens * d};
  const double R = static_cast<double>(rows), attention_flops = 2.0 * static_cast<double>(batch * tokens * tokens * d);
  struct Step {
    std::string what;
    int per_layer;
    double flops, bytes;  // one of the two: what the rate is counted in
    std::function<void()> run;
  };
  const std::vector<Step> steps = {
      {"LayerNorm", 2, 0, 4 * R * D,
       [&] { cuda::layer_norm(x.as<bf16>(), rows, D, weights, weights, 1e-5f, y.as<bf16>(), stream); }},
      {"QKV GEMM", 1, 2 * R * D * 3 * D, 0,
       [&] { device.linear(y.as<bf16>(), rows, D, w_qkv.as<bf16>(), 3 * D, qkv.as<bf16>()); }},
      {"split heads + bias", 1, 0, 4 * R * 3 * D,
       [&] {
         cuda::split_heads(qkv.as<bf16>(), weights, tiles, tokens, 16, 64, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(),
                           stream);
       }},
      {"scores GEMM", 1, attention_flops, 0,
       [&] { device.batched_linear(qs, tokens, d, ks, false, tokens, score_out, batch, 0.125f); }},
      {"softmax", 1, 0, 4.0 * static_cast<double>(batch * tokens * tokens),
       [&] { cuda::softmax_rows(scores.as<bf16>(), batch * tokens, tokens, score_stride, stream); }},
      {"PV GEMM", 1, attention_flops, 0,
       [&] { device.batched_linear(probabilities, tokens, tokens, vs, true, d, os, batch, 1.0f); }},
      {"merge heads", 1, 0, 4 * R * D,
       [&] { cuda::merge_heads(o.as<bf16>(), tiles, tokens, 16, 64, x.as<bf16>(), stream); }},
      {"out GEMM", 1, 2 * R * D * D, 0,
       [&] { device.linear(x.as<bf16>(), rows, D, w_qkv.as<bf16>(), D, y.as<bf16>()); }},
      {"bias + residual", 2, 0, 6 * R * D,
       [&] { cuda::add_bias_residual(y.as<bf16>(), rows, D, weights, x.as<bf16>(), stream); }},
      {"fc1 GEMM", 1, 2 * R * D * I, 0,
       [&] { device.linear(y.as<bf16>(), rows, D, w_fc1.as<bf16>(), I, wide.as<bf16>()); }},
      {"bias + GELU", 1, 0, 4 * R * I,
       [&] { cuda::add_bias(wide.as<bf16>(), rows, I, weights, cuda::Activation::Gelu, stream); }},
      {"fc2 GEMM", 1, 2 * R * I * D, 0,
       [&] { device.linear(wide.as<bf16>(), rows, I, w_fc2.as<bf16>(), D, y.as<bf16>()); }},
  };
  double layer_ms = 0.0;
  for (const Step& step : steps) {
    const double ms = timer.median_ms(step.run, 5);
    layer_ms += step.per_layer * ms;
    const double tflop_s = step.flops / (ms * 1e-3) / 1e12, tb_s = step.bytes / (ms * 1e-3) / 1e12;
    add({"  " + step.what, step.per_layer == 1 ? "per layer" : "per layer, twice", ms,
         step.flops > 0 ? rate(tflop_s, "TFLOP/s") : rate(tb_s, "TB/s"),
         step.flops > 0 ? tflop_s / c.gemm_tflop_s : tb_s / c.copy_tb_s, step.flops > 0 ? "gemm" : "copy", 0, ""});
  }
  std::printf("  vision: one layer's steps sum to %.3f ms, x24 = %.2f ms\n", layer_ms, 24 * layer_ms);
  std::fflush(stdout);
}

// MiniMax-VL-01's image side for a 2016x2016 image: its tiles at the VL-01 grid choice plus the
// thumbnail through the full-size CLIP ViT-L/14-336 (24 layers, hidden 1024, 16 heads, MLP
// 4096) and the projector to 6144, random bf16 weights. Timed on the device (pixels in, features
// out in device memory), then once more with the host transfers VisionModel makes.
void vision_tower(const Ceilings& c) {
  vision::VisionConfig config = vision::load_vision_config(LIGHTDESK_TINY_VL_DIR);  // the released grid pinpoints
  config.hidden_size = 1024;
  config.intermediate_size = 4096;
  config.num_layers = 24;
  config.num_heads = 16;
  config.feature_layer = -1;
  config.text_hidden_size = 6144;
  vision::Image image{2016, 2016, 3, std::vector<std::uint8_t>(std::size_t{2016} * 2016 * 3)};
  for (std::size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<std::uint8_t>(i * 7 % 251);
  const auto prepare_start = std::chrono::steady_clock::now();
  const vision::PreparedImage prepared = vision::prepare_image(image, config.anyres);
  const double prepare_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - prepare_start).count();
  const auto tiles = static_cast<std::int64_t>(prepared.tiles.size());

  const auto tower = vision::make_random_cuda_vision_tower(config, 21);
  const DeviceContext& device = tower->device();
  const std::int64_t patches = 576, tokens = patches + 1, D = config.hidden_size, C = config.text_hidden_size;
  DeviceBuffer pixels = device_array<float>(static_cast<std::int64_t>(prepared.pixel_values.size()), "pixels");
  DeviceBuffer features = device_array<float>(tiles * patches * C, "features");
  device.upload(pixels.as<float>(), prepared.pixel_values.data(), pixels.bytes());
  EventTimer timer(device);
  const double ms =
      timer.median_ms([&] { tower->forward_on_device(pixels.as<float>(), tiles, features.as<float>()); }, 5);

  // Matrix-product FLOPs (2 m n k each): patch embedding, per layer QKV, attention (scores and
  // values), output and MLP projections, then the projector.
  const double T = static_cast<double>(tokens), P = static_cast<double>(patches), d = static_cast<double>(D);
  const double I = config.intermediate_size, out = static_cast<double>(C), patch_width = 3.0 * 14 * 14;
  const double per_layer = 2.0 * T * d * d * 4 + 2.0 * T * d * I * 2 + 4.0 * T * T * d;
  const double per_tile =
      2.0 * P * patch_width * d + config.num_layers * per_layer + 2.0 * P * d * out + 2.0 * P * out * out;
  const double tflop_s = per_tile * static_cast<double>(tiles) / (ms * 1e-3) / 1e12;
  add({"vision tower+projector", "2016^2: " + std::to_string(tiles) + " tiles ViT-L", ms, rate(tflop_s, "TFLOP/s"),
       tflop_s / c.gemm_tflop_s, "gemm", 0, ""});

  std::vector<float> host_features(static_cast<std::size_t>(tiles * patches * C));
  std::vector<double> host_ms;
  for (int r = 0; r < 3; ++r) {
    const auto start = std::chrono::steady_clock::now();
    tower->forward(prepared.pixel_values.data(), tiles, host_features.data());
    host_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(host_ms.begin(), host_ms.end());
  std::printf(
      "  vision: %.1f images/s on the device (%.2f ms); %.1f images/s with the host transfers (%.2f ms); "
      "preprocessing on one CPU thread %.1f ms (%lldx%lld grid)\n",
      1e3 / ms, ms, 1e3 / host_ms[1], host_ms[1], prepare_ms, static_cast<long long>(prepared.grid_rows),
      static_cast<long long>(prepared.grid_columns));
  std::fflush(stdout);
  vision_layer_steps(device, timer, c, tiles);
}

struct BenchOptions {
  bool quick = false;
  bool vision_only = false;
  std::string only;  // run the kernels whose name contains this (all if empty)
  MeasuredAnchors anchors;
  std::string model_config;  // --model-config: the slice of this config alone
  int layers = 4;
};

int run(const BenchOptions& options) {
  cudaDeviceProp props{};
  check(cudaGetDeviceProperties(&props, 0), "cudaGetDeviceProperties");
  std::printf("lightdesk-bench on %s (%d SMs, %.0f GiB)\n", props.name, props.multiProcessorCount,
              static_cast<double>(props.totalGlobalMem) / (1 << 30));
  std::printf("  %-22s %-26s %13s  %-14s %s\n", "kernel", "shape", "median", "achieved", "of ceiling / vs anchor");
  DeviceContext device(0);
  EventTimer timer(device);
  const Ceilings c = measure_ceilings(device, timer);
  if (!options.model_config.empty()) {
    model_slice(c, options.model_config, options.layers, options.anchors);
    return 0;
  }
  const bool quick = options.quick;
  const auto selected = [&](const char* kernel) {
    return options.vision_only ? std::strcmp(kernel, "vision tower") == 0
                               : std::string(kernel).find(options.only) != std::string::npos;
  };
  const MeasuredAnchors& measured = options.anchors;
  // FLA's chunk_simple_gla and vLLM's Triton lightning decode are quoted from §0 unless measured.
  const auto fla = [&](int heads, std::int64_t tokens, double quoted_ms) {
    return time_anchor(measured, "fla_chunk_simple_gla/" + std::to_string(heads) + "x" + std::to_string(tokens),
                       quoted_ms, "FLA chunk_simple_gla");
  };
  if (selected("lightning prefill")) {
    lightning_prefill(device, timer, c, 64, 4096, fla(64, 4096, 0.49));
    lightning_prefill(device, timer, c, 64, 65536, fla(64, 65536, 3.38));
    if (!quick) {
      lightning_prefill(device, timer, c, 64, 262144, fla(64, 262144, 13.25));
      lightning_prefill(device, timer, c, 8, 1048576, fla(8, 1048576, 12.1));
    }
  }
  if (selected("lightning decode")) {
    // vLLM's Triton decode at batch 1, 16 and 256 (64 heads) and 1 (8 heads), §0.
    const auto vllm = [&](int heads, int batch, double quoted_ms) {
      return time_anchor(measured, "vllm_lightning_decode/" + std::to_string(heads) + "x" + std::to_string(batch),
                         quoted_ms, "vLLM Triton decode");
    };
    lightning_decode(device, timer, c, 64, 1, vllm(64, 1, 0.060));
    lightning_decode(device, timer, c, 64, 16, vllm(64, 16, 0.068));
    lightning_decode(device, timer, c, 64, 256, vllm(64, 256, 0.701));
    lightning_decode(device, timer, c, 8, 1, vllm(8, 1, 0.048));
  }
  if (selected("softmax prefill")) {
    const auto cudnn = [&](std::int64_t tokens, double quoted_ms) {
      return time_anchor(measured, "cudnn_sdpa/" + std::to_string(tokens), quoted_ms, "cuDNN SDPA");
    };
    softmax_prefill(device, timer, c, 4096, cudnn(4096, 0.51));
    if (!quick) {
      softmax_prefill(device, timer, c, 16384, cudnn(16384, 7.26));
      softmax_prefill(device, timer, c, 32768, cudnn(32768, 29.9));
    }
  }
  if (selected("softmax decode")) {
    const Anchor sdpa = time_anchor(measured, "torch_sdpa_decode/131072", 0.172, "torch SDPA");
    softmax_decode(device, timer, c, 131072, false, sdpa);
    softmax_decode(device, timer, c, 131072, true, sdpa);
  }
  if (selected("sampling")) sampling(device, timer);
  if (selected("MoE layer"))
    moe(device, timer, c, measured,
        quick ? std::vector<std::int64_t>{1, 64, 4096} : std::vector<std::int64_t>{1, 64, 4096, 32768});
  if (selected("model decode step")) model_decode_rows(c, quick);
  if (selected("vision tower")) vision_tower(c);
  return 0;
}

}  // namespace
}  // namespace lightdesk

int main(int argc, char** argv) {
  try {
    lightdesk::BenchOptions options;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--quick") {
        options.quick = true;
      } else if (arg == "--vision") {
        options.vision_only = true;
      } else if ((arg == "--only" || arg == "--anchors" || arg == "--model-config") && i + 1 < argc) {
        if (arg == "--only") options.only = argv[++i];
        else if (arg == "--model-config") options.model_config = argv[++i];
        else options.anchors = lightdesk::MeasuredAnchors(argv[++i]);
      } else if (arg == "--layers" && i + 1 < argc) {
        options.layers = std::stoi(argv[++i]);
      } else {
        std::fprintf(stderr,
                     "usage: lightdesk-bench [--quick] [--vision] [--only TEXT] [--anchors FILE]\n"
                     "       lightdesk-bench --model-config CONFIG.json [--layers N] [--anchors FILE]\n");
        return 2;
      }
    }
    return lightdesk::run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightdesk-bench: %s\n", e.what());
    return 1;
  }
}
