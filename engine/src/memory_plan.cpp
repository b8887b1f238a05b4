// The memory planner (lightdesk/engine.h): per-rank bytes of each candidate of the policy at each
// tensor-parallel degree the devices allow, the choice among them, and the advice when none fits.
#include <algorithm>
#include <cstdio>
#include <regex>

#include <unistd.h>

#include "lightdesk/engine.h"
#include "lightdesk/expert_patterns.h"
#include "model_weights.h"

namespace lightdesk {
namespace {

using u64 = std::uint64_t;
constexpr u64 kGiB = u64{1} << 30;
constexpr u64 kF32 = 4;
// The CUDA context, cuBLAS / CUTLASS / NCCL workspaces and allocator slack of one process on one
// GPU, which no tensor accounts for.
constexpr u64 kCudaRuntimeReserve = kGiB;
// Lightning prefill keeps at most one head state per this many rows of a chunk (its segments).
constexpr u64 kRowsPerLightningSegment = 256;
// The backends' own prefill chunks (FeedOptions::chunk_tokens 0).
constexpr std::int64_t kCudaChunkTokens = 8192, kCpuChunkTokens = 512;
// Largest degree the advice considers when it counts the GPUs a format needs.
constexpr int kMostGpusAdvised = 64;

u64 ceil_div(u64 a, u64 b) { return (a + b - 1) / b; }

std::string gib(u64 bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.0f GiB", static_cast<double>(bytes) / static_cast<double>(kGiB));
  return text;
}

// How the request's backend keeps values.
struct Precision {
  u64 value;    // bytes of a weight, K/V or activation value: 2 (bf16) or 4 (float32)
  u64 reserve;  // the runtime's own memory per device
  std::int64_t chunk;
};

Precision precision_of(const PlanRequest& r) {
  const bool cuda = r.backend != BackendKind::Cpu;
  const std::int64_t chunk = r.chunk_tokens > 0 ? r.chunk_tokens : cuda ? kCudaChunkTokens : kCpuChunkTokens;
  return {cuda && !r.cuda_float32 ? u64{2} : kF32, cuda ? kCudaRuntimeReserve : 0, chunk};
}

// Bytes of one expert matrix [rows, cols] (out, in): the backend's values ("bf16"), or core's
// quantized layout (int8 with a float32 scale per row; int4 two to a byte with an fp16 scale and
// offset per group of 128 inputs; rows padded to 16 bytes).
u64 expert_matrix_bytes(ExpertFormat format, u64 rows, u64 cols, const Precision& p) {
  if (format == ExpertFormat::Bf16) return rows * cols * p.value;
  return u64(QuantLayout{expert_dtype(format), std::int64_t(rows), std::int64_t(cols)}.total_bytes());
}

// One expert's w1, w3 [width, hidden] and w2 [hidden, width] at an intermediate width slice.
u64 expert_bytes(ExpertFormat format, u64 hidden, u64 width, const Precision& p) {
  return 2 * expert_matrix_bytes(format, width, hidden, p) + expert_matrix_bytes(format, hidden, width, p);
}

// Everything but the experts on one rank.
u64 rank_weight_bytes(const ModelInfo& m, const RankLayout& r, const Precision& p) {
  const u64 H = m.hidden_size, d = m.head_dim, A = u64(r.heads) * d, KV = u64(r.kv_heads) * d, v = p.value;
  // The embedding and LM-head rows (the backends keep the LM head apart even when tied), the
  // final norm.
  u64 bytes = 2 * u64(r.vocab_rows) * H * v + H * kF32;
  for (LayerKind kind : m.layer_kinds) {
    bytes += 2 * H * kF32 + u64(m.num_experts) * H * kF32;  // the two norms, the router
    if (kind == LayerKind::Lightning)
      bytes += (3 * A * H + A * H + H * A) * v + A * kF32;  // qkv, gate, out; the output norm
    else
      bytes += (A * H + 2 * KV * H + H * A) * v;
  }
  if (r.rank == 0) bytes += m.other_weight_bytes;
  return bytes;
}

u64 rank_workspace_bytes(const ModelInfo& m, const RankLayout& r, std::int64_t context, const Precision& p) {
  const u64 rows = static_cast<u64>(std::max<std::int64_t>(1, std::min(p.chunk, context)));
  const u64 H = m.hidden_size, d = m.head_dim, A = u64(r.heads) * d, k = m.experts_per_token, w = r.expert_width,
            v = p.value;
  // Token ids; x, a, att, b, moe; the float32 hidden state; this rank's qkv, o and gate.
  const u64 activations = rows * (4 + 5 * H * v + H * kF32 + 5 * A * v);
  // Router input and logits, routes; per routed row its input and output rows, gate/up pair and
  // activation (every row may route to this rank's experts).
  const u64 moe = rows * (H * kF32 + u64(m.num_experts) * kF32 + k * 8) + rows * k * (2 * H * v + 3 * w * v);
  const u64 lightning = u64(r.heads) * d * d * kF32 * ceil_div(rows, kRowsPerLightningSegment);
  // The last token's logits (this rank's rows) and the sampler's workspace over the vocabulary.
  const u64 logits = u64(r.vocab_rows) * kF32 + u64(m.vocab_size) * 8;
  return activations + moe + lightning + logits + p.reserve;
}

// The CPU backend runs any degree (simulated ranks on threads) and every expert format.
bool runnable(const PlanCandidate& c, int degree, BackendKind backend, const EngineCapabilities& can) {
  const bool format = c.experts == ExpertFormat::Bf16 || backend == BackendKind::Cpu ||
                      (c.experts == ExpertFormat::Int8 && can.int8_experts) ||
                      (c.experts == ExpertFormat::Int4 && can.int4_experts);
  return format && (degree == 1 || can.tensor_parallel || backend == BackendKind::Cpu) && (!c.host_expert_store || can.host_expert_store) &&
         (c.experts_kept == 0 || can.pruned_experts);
}

// The plan of `candidate` over the first `degree` of `devices` (largest first).
MemoryPlan evaluate(const ModelInfo& m, const PlanCandidate& candidate, const std::vector<PlanDevice>& devices,
                    int degree, const PlanRequest& request, std::int64_t context) {
  const Precision p = precision_of(request);
  MemoryPlan plan;
  plan.candidate = candidate;
  plan.tensor_parallel = degree;
  plan.moe = request.moe;
  plan.backend = request.backend == BackendKind::Cpu ? BackendKind::Cpu : BackendKind::Cuda;
  plan.float32_values = p.value == kF32;
  plan.runnable = runnable(candidate, degree, plan.backend, request.capabilities);
  const u64 H = m.hidden_size, d = m.head_dim, layers = m.num_layers;
  const u64 tokens = static_cast<u64>(std::max<std::int64_t>(context, 0));
  if (candidate.host_expert_store)
    plan.host_bytes = layers * u64(m.num_experts) * expert_bytes(candidate.experts, H, u64(m.expert_width), p);
  bool fits = !candidate.host_expert_store || plan.host_bytes <= request.host_memory_bytes;
  for (const RankLayout& r : tensor_parallel_layout(m, degree, request.moe)) {
    RankMemory rank;
    rank.layout = r;
    rank.device = devices[static_cast<std::size_t>(r.rank)];
    rank.weight_bytes = rank_weight_bytes(m, r, p);
    rank.lightning_state_bytes = u64(m.num_lightning_layers()) * u64(r.heads) * d * d * kF32;
    rank.kv_bytes_per_token = u64(m.num_softmax_layers()) * 2 * u64(r.kv_heads) * d * p.value;
    rank.kv_bytes = rank.kv_bytes_per_token * tokens;
    rank.workspace_bytes = rank_workspace_bytes(m, r, context, p);
    // Experts held: the layout's share, or of a pruned set its even share.
    u64 held = u64(r.experts);
    if (candidate.experts_kept > 0) {
      const u64 kept = u64(std::min(candidate.experts_kept, m.num_experts));
      held = request.moe == MoeParallel::Tensor ? kept
                                                : kept / u64(degree) + (u64(r.rank) < kept % u64(degree) ? 1 : 0);
    }
    const u64 per_layer_expert = expert_bytes(candidate.experts, H, u64(r.expert_width), p);
    if (candidate.host_expert_store) {
      // A cache of at least the experts one token needs, grown into what is left.
      const u64 least = std::min<u64>(held, u64(m.experts_per_token));
      const u64 others = rank.total_bytes();
      const u64 left = rank.device.memory_bytes > others ? rank.device.memory_bytes - others : 0;
      const u64 cached = std::clamp<u64>(per_layer_expert ? left / (layers * per_layer_expert) : held, least, held);
      rank.cached_experts_per_layer = static_cast<int>(cached);
      rank.expert_bytes = cached * layers * per_layer_expert;
    } else {
      rank.expert_bytes = held * layers * per_layer_expert;
    }
    fits = fits && rank.fits();
    plan.ranks.push_back(rank);
  }
  plan.fits = fits;
  return plan;
}

// The degrees up to `most` that `m` allows (each a layout tensor_parallel_layout accepts),
// largest first.
std::vector<int> degrees(const ModelInfo& m, int most, MoeParallel moe) {
  std::vector<int> result;
  for (int n = most; n >= 1; --n) {
    try {
      tensor_parallel_layout(m, n, moe);
      result.push_back(n);
    } catch (const Error&) {
    }
  }
  return result;
}

// The candidate's plan: the largest degree that fits and runs, else that fits, else the largest.
MemoryPlan plan_candidate(const ModelInfo& m, const PlanCandidate& candidate, const std::vector<PlanDevice>& devices,
                          const PlanRequest& request, std::int64_t context) {
  std::optional<MemoryPlan> fitting, largest;
  std::vector<int> allowed;
  if (request.tensor_parallel > 0) {
    tensor_parallel_layout(m, request.tensor_parallel, request.moe);  // a clear error if it does not divide
    if (request.tensor_parallel > static_cast<int>(devices.size()))
      throw Error("tensor parallel " + std::to_string(request.tensor_parallel) + ": the plan has only " +
                  std::to_string(devices.size()) + " GPUs");
    allowed = {request.tensor_parallel};
  } else {
    allowed = degrees(m, static_cast<int>(devices.size()), request.moe);
  }
  for (int n : allowed) {
    MemoryPlan plan = evaluate(m, candidate, devices, n, request, context);
    if (plan.fits && plan.runnable) return plan;
    if (plan.fits && !fitting) fitting = plan;
    if (!largest) largest = std::move(plan);
  }
  return fitting ? *fitting : *largest;
}

// The request's devices, largest first; the CPU backend plans for its one device.
std::vector<PlanDevice> devices_of(const PlanRequest& request) {
  std::vector<PlanDevice> devices = request.devices;
  if (request.backend == BackendKind::Cpu && devices.size() > 1) devices.resize(1);
  // Simulated ranks on the CPU share its memory.
  if (request.backend == BackendKind::Cpu && request.tensor_parallel > 1 && !devices.empty()) {
    const int n = request.tensor_parallel;
    PlanDevice share{devices.front().name + " (1/" + std::to_string(n) + ")", devices.front().memory_bytes / n};
    devices.assign(static_cast<std::size_t>(n), share);
  }
  std::stable_sort(devices.begin(), devices.end(),
                   [](const PlanDevice& a, const PlanDevice& b) { return a.memory_bytes > b.memory_bytes; });
  return devices;
}

std::optional<std::size_t> first_chosen(const std::vector<MemoryPlan>& plans) {
  for (std::size_t i = 0; i < plans.size(); ++i)
    if (plans[i].fits && plans[i].runnable) return i;
  return std::nullopt;
}

// The longest context in [0, most] at which `fits(context)` holds, or -1 when not even at 0.
template <typename Fits>
std::int64_t longest_context(std::int64_t most, Fits&& fits) {
  if (!fits(0)) return -1;
  if (fits(most)) return most;
  std::int64_t low = 0, high = most;  // fits at low, not at high
  while (high - low > 1) {
    const std::int64_t mid = low + (high - low) / 2;
    (fits(mid) ? low : high) = mid;
  }
  return low;
}

}  // namespace

std::vector<PlanDevice> parse_gpu_list(const std::string& text) {
  static const std::regex kEntry(R"(\s*(?:(\d+)\s*[xX]\s*)?(\d+(?:\.\d+)?)\s*(GB|GiB|gb|G)\s*)");
  std::vector<PlanDevice> gpus;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    const std::string entry = text.substr(start, end - start);
    std::smatch m;
    if (!std::regex_match(entry, m, kEntry))
      throw Error("GPU list \"" + text + "\": \"" + entry + "\" is not COUNTxSIZE like 4x80GB");
    const long count = m[1].matched ? std::stol(m[1].str()) : 1;
    const double size = std::stod(m[2].str());
    if (count < 1 || count > 1024 || !(size > 0.0) || size > 1e6)
      throw Error("GPU list \"" + text + "\": \"" + entry + "\" has no GPUs or no memory");
    const auto bytes = static_cast<u64>(size * static_cast<double>(kGiB));
    for (long i = 0; i < count; ++i) gpus.push_back({m[2].str() + " GiB", bytes});
    start = end + 1;
  }
  return gpus;
}

std::vector<PlanDevice> local_gpus() {
  std::vector<PlanDevice> gpus;
  for (const GpuDevice& device : gpu_devices())
    gpus.push_back({"GPU " + std::to_string(device.index) + " (" + device.name + ")", device.total_bytes, device.index});
  return gpus;
}

const char* expert_format_name(ExpertFormat format) { return expert_dtype_name(expert_dtype(format)); }

ExpertFormat parse_expert_format(const std::string& name) {
  for (ExpertFormat f : {ExpertFormat::Bf16, ExpertFormat::Int8, ExpertFormat::Int4})
    if (name == expert_format_name(f)) return f;
  throw Error("unknown expert format \"" + name + "\" (choose bf16, int8 or int4)");
}

MoeParallel parse_moe_parallel(const std::string& name) {
  if (name == "expert") return MoeParallel::Expert;
  if (name == "tensor") return MoeParallel::Tensor;
  throw Error("unknown MoE parallel mode \"" + name + "\" (choose expert or tensor)");
}

const char* moe_parallel_name(MoeParallel mode) { return mode == MoeParallel::Expert ? "expert" : "tensor"; }

std::vector<RankLayout> tensor_parallel_layout(const ModelShape& shape, int ranks, MoeParallel moe) {
  const std::string what = "tensor parallel " + std::to_string(ranks) + ": ";
  if (ranks < 1) throw Error(what + "needs at least one rank");
  if (shape.num_heads % ranks != 0)
    throw Error(what + "the " + std::to_string(shape.num_heads) + " query heads do not divide by " +
                std::to_string(ranks));
  const int kv = shape.num_kv_heads;
  if (kv % ranks != 0 && ranks % kv != 0)
    throw Error(what + "the " + std::to_string(kv) + " K/V heads neither divide by " + std::to_string(ranks) +
                " nor divide it");
  if (moe == MoeParallel::Tensor && shape.expert_width % ranks != 0)
    throw Error(what + "the expert width " + std::to_string(shape.expert_width) + " does not divide by " +
                std::to_string(ranks));
  if (ranks > shape.vocab_size)
    throw Error(what + "the " + std::to_string(shape.vocab_size) + " vocabulary rows are fewer than the ranks");
  const std::int64_t vocab_rows = (shape.vocab_size + ranks - 1) / ranks;
  std::vector<RankLayout> layout;
  int next_expert = 0;
  for (int r = 0; r < ranks; ++r) {
    RankLayout l;
    l.rank = r;
    l.heads = shape.num_heads / ranks;
    l.first_head = r * l.heads;
    // K/V heads split, or each replicated on ranks / kv consecutive ranks.
    l.kv_heads = kv >= ranks ? kv / ranks : 1;
    l.first_kv_head = kv >= ranks ? r * l.kv_heads : r / (ranks / kv);
    if (moe == MoeParallel::Expert) {
      l.experts = shape.num_experts / ranks + (r < shape.num_experts % ranks ? 1 : 0);
      l.first_expert = next_expert;
      next_expert += l.experts;
      l.expert_width = shape.expert_width;
    } else {
      l.experts = shape.num_experts;
      l.expert_width = shape.expert_width / ranks;
      l.first_expert_column = r * l.expert_width;
    }
    l.first_vocab_row = std::min<std::int64_t>(r * vocab_rows, shape.vocab_size);
    l.vocab_rows = std::min<std::int64_t>(vocab_rows, shape.vocab_size - l.first_vocab_row);
    layout.push_back(l);
  }
  return layout;
}

// Quantized and pruned experts run on both backends, the host expert store on the CPU's; one
// model over several GPUs is still to come.
EngineCapabilities engine_capabilities(BackendKind backend) {
  return {.int8_experts = true,
          .int4_experts = true,
          .host_expert_store = backend == BackendKind::Cpu,
          .pruned_experts = true};
}

std::vector<PlanCandidate> plan_candidates(int experts_kept) {
  std::vector<PlanCandidate> list;
  const ExpertFormat formats[] = {ExpertFormat::Bf16, ExpertFormat::Int8, ExpertFormat::Int4};
  for (bool host : {false, true})
    for (ExpertFormat f : formats) list.push_back({f, host, 0});
  if (experts_kept > 0)
    for (ExpertFormat f : formats) list.push_back({f, false, experts_kept});
  return list;
}

std::string describe_candidate(const PlanCandidate& c) {
  const std::string format = expert_format_name(c.experts);
  if (c.experts_kept > 0) return std::to_string(c.experts_kept) + " experts per layer (pruned) in " + format;
  if (c.host_expert_store) return format + " experts in host memory, cached on the GPUs";
  return c.experts == ExpertFormat::Bf16 ? "bf16 weights" : format + " experts";
}

u64 RankMemory::total_bytes() const {
  return weight_bytes + expert_bytes + lightning_state_bytes + kv_bytes + workspace_bytes;
}

std::string MemoryPlan::summary() const {
  std::string what = describe_candidate(candidate);
  if (float32_values && candidate.experts == ExpertFormat::Bf16)
    what.replace(what.find("bf16"), 4, "float32");  // the backend's own values, not bf16
  if (backend == BackendKind::Cpu)
    return what + " in host memory" +
           (tensor_parallel == 1 ? "" : ", tensor parallel over " + std::to_string(tensor_parallel) + " ranks");
  return what + (tensor_parallel == 1 ? " on 1 GPU"
                                      : ", tensor parallel over " + std::to_string(tensor_parallel) + " GPUs");
}

namespace {

// The plans of the request's candidates and the choice among them, without the advice.
PlanReport choose(const ModelInfo& info, const PlanRequest& request, const std::vector<PlanDevice>& devices,
                  const std::vector<PlanCandidate>& candidates) {
  PlanReport report;
  report.context_tokens = request.context_tokens;
  for (const PlanCandidate& c : candidates)
    report.plans.push_back(plan_candidate(info, c, devices, request, request.context_tokens));
  report.chosen = first_chosen(report.plans);
  return report;
}

// The policy's candidates for the request: the host-store ones only when it gives host memory.
std::vector<PlanCandidate> candidates_for(const PlanRequest& request) {
  std::vector<PlanCandidate> candidates;
  for (const PlanCandidate& c : plan_candidates(request.experts_kept))
    if (!c.host_expert_store || request.host_memory_bytes > 0) candidates.push_back(c);
  return candidates;
}

}  // namespace

PlanReport plan_memory(const ModelInfo& info, const PlanRequest& request) {
  if (request.context_tokens < 0) throw Error("memory plan: negative context");
  if (request.chunk_tokens < 0) throw Error("memory plan: negative chunk_tokens");
  const std::vector<PlanDevice> devices = devices_of(request);
  if (devices.empty()) {
    PlanReport report;
    report.context_tokens = request.context_tokens;
    report.advice.push_back("no GPU to plan for: name some (for example 4x80GB)");
    return report;
  }
  const std::vector<PlanCandidate> candidates = candidates_for(request);
  PlanReport report = choose(info, request, devices, candidates);
  if (report.chosen) return report;

  const auto not_yet = [](const MemoryPlan& p) { return p.runnable ? std::string() : " (not in this build yet)"; };
  // Formats first: the first candidate that fits these devices.
  for (const MemoryPlan& p : report.plans)
    if (p.fits) {
      report.advice.push_back(p.summary() + " would fit" + not_yet(p));
      break;
    }
  // For those that do not fit: more GPUs of the largest size (how many each format on the GPUs
  // needs), and a shorter context (the longest the first able to hold its weights fits).
  std::vector<PlanCandidate> not_fitting;
  for (std::size_t i = 0; i < candidates.size(); ++i)
    if (!report.plans[i].fits) not_fitting.push_back(candidates[i]);
  if (request.backend != BackendKind::Cpu) {
    std::vector<int> counts = degrees(info, kMostGpusAdvised, request.moe);
    std::reverse(counts.begin(), counts.end());
    for (const PlanCandidate& c : not_fitting) {
      if (c.host_expert_store || c.experts_kept > 0) continue;
      for (int n : counts) {
        if (n <= static_cast<int>(devices.size())) continue;
        const std::vector<PlanDevice> more(static_cast<std::size_t>(n), devices.front());
        const MemoryPlan p = evaluate(info, c, more, n, request, request.context_tokens);
        if (!p.fits) continue;
        report.advice.push_back(describe_candidate(c) + ": " + std::to_string(n) + " GPUs of " +
                                gib(devices.front().memory_bytes) + not_yet(p));
        break;
      }
    }
  }
  for (const PlanCandidate& c : not_fitting) {
    const std::int64_t context = longest_context(request.context_tokens, [&](std::int64_t tokens) {
      return plan_candidate(info, c, devices, request, tokens).fits;
    });
    if (context <= 0) continue;
    const MemoryPlan p = plan_candidate(info, c, devices, request, context);
    report.advice.push_back("a context of at most " + std::to_string(context) + " tokens: " + p.summary() +
                            not_yet(p));
    break;
  }
  return report;
}

std::int64_t longest_fitting_context(const ModelInfo& info, const PlanRequest& request) {
  const std::vector<PlanDevice> devices = devices_of(request);
  if (devices.empty()) return 0;
  const std::vector<PlanCandidate> candidates = candidates_for(request);
  const std::int64_t context = longest_context(request.context_tokens, [&](std::int64_t tokens) {
    PlanRequest shorter = request;
    shorter.context_tokens = tokens;
    return choose(info, shorter, devices, candidates).chosen.has_value();
  });
  return std::max<std::int64_t>(context, 0);
}

namespace {

std::uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<u64>(pages) * static_cast<u64>(page) : 0;
}

}  // namespace

PlanRequest local_plan_request(const ModelInfo& info, const ModelOptions& options, std::int64_t context_tokens) {
  PlanRequest request;
  request.backend = info.backend == BackendKind::Cpu ? BackendKind::Cpu : BackendKind::Cuda;
  request.cuda_float32 = options.cuda_float32;
  request.context_tokens = context_tokens;
  request.capabilities = engine_capabilities(request.backend);
  request.host_memory_bytes = physical_memory_bytes();
  request.experts_kept = options.experts.experts_kept();
  request.moe = options.moe_parallel;
  if (options.tensor_parallel > 1) request.tensor_parallel = options.tensor_parallel;
  if (request.backend == BackendKind::Cpu) {
    request.devices = {{"host memory", request.host_memory_bytes}};
  } else {
    for (PlanDevice& gpu : local_gpus())
      if (options.devices.empty() || std::find(options.devices.begin(), options.devices.end(), gpu.gpu) != options.devices.end())
        request.devices.push_back(std::move(gpu));
  }
  return request;
}

MemoryPlan choose_local_plan(const ModelInfo& info, const ModelOptions& options, std::int64_t context_tokens) {
  const PlanReport report = plan_memory(info, local_plan_request(info, options, context_tokens));
  // Pruned experts asked for: the first pruned plan that fits and runs, even where all experts fit.
  const int kept = options.experts.experts_kept();
  if (kept > 0) {
    for (const MemoryPlan& p : report.plans)
      if (p.candidate.experts_kept == kept && p.fits && p.runnable) return p;
    throw Error("no plan keeping " + std::to_string(kept) + " experts per layer fits " + info.directory.string() +
                " on this machine at " + std::to_string(context_tokens) + " tokens");
  }
  if (report.chosen) return report.plans[*report.chosen];
  std::string advice;
  for (const std::string& line : report.advice) advice += (advice.empty() ? "; would fit: " : "; ") + line;
  throw Error("nothing this build runs fits " + info.directory.string() + " on this machine at " +
              std::to_string(context_tokens) + " tokens" + advice);
}

ModelOptions apply_plan(const MemoryPlan& plan, ModelOptions base, const ExpertPattern* pattern) {
  if (!plan.runnable) throw Error(plan.summary() + ": not in this build yet");
  base.backend = plan.backend;
  base.expert_dtype = plan.candidate.experts;
  base.tensor_parallel = plan.tensor_parallel;
  base.moe_parallel = plan.moe;
  // The plan's GPUs when they are this machine's (a plan for hypothetical ones keeps base's).
  if (plan.backend == BackendKind::Cuda && !plan.ranks.empty() &&
      std::all_of(plan.ranks.begin(), plan.ranks.end(), [](const RankMemory& r) { return r.device.gpu >= 0; })) {
    base.devices.clear();
    for (const RankMemory& rank : plan.ranks) base.devices.push_back(rank.device.gpu);
  }
  const int kept = plan.candidate.experts_kept;
  if (kept == 0) {
    base.experts = {};
  } else if (base.experts.experts_kept() != kept) {
    if (!pattern)
      throw Error(plan.summary() + ": a pruned plan needs the task pattern whose experts it keeps");
    base.experts = pattern->keep(kept);
  }
  // Exact mode: every expert in host memory, each layer caching what the plan computed.
  base.host_expert_store = plan.candidate.host_expert_store;
  base.cached_experts_per_layer =
      plan.candidate.host_expert_store && !plan.ranks.empty() ? plan.ranks.front().cached_experts_per_layer : 0;
  return base;
}

LocalLoad plan_local_load(const std::filesystem::path& directory, const ModelOptions& options) {
  const ModelInfo info = Model::inspect(directory, options);
  MemoryPlan plan = choose_local_plan(info, options, info.max_context);
  ModelOptions planned = apply_plan(plan, options);
  return {std::move(planned), std::move(plan)};
}

}  // namespace lightdesk
