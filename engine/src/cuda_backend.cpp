// The CUDA backend: the model on one GPU, or split over tensor-parallel ranks (a backend per
// rank, each on its GPU with its slices, the ranks talking through NCCL or, for N simulated
// ranks on one GPU, the device loopback), through the CUDA ops and the model's graph
// (models/minimax01.cpp). Weights and activations are T (bf16 by default, float32 in the
// checking mode); GEMMs go through cuBLAS with float32 accumulation; the lightning states, the
// router and the logits are float32 whatever T is. The backend owns the memory (weights, K/V
// pages, scratch), the stream and the decode graph capture.
#include "cuda_backend.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "communicator.h"
#include "lightdesk/cuda_device.h"
#include "cuda_kv_cache.h"
#include "cuda_model_ops.h"
#include "models/graph.h"
#include "sampler.h"

namespace lightdesk {
namespace {

using cuda::bf16;

// The WeightPrecision::Float32 tensors are float, the others T.
// A quantized matrix on the device in core's layout: its arrays, and a view of them.
struct DeviceQuantizedMatrix {
  DeviceBuffer packed, scales, offsets;
  QuantizedView view;  // device pointers
};

struct CudaLayer : LayerTensors<DeviceBuffer> {
  DeviceBuffer slopes;   // lightning layers: float [heads]
  DeviceBuffer gate_up;  // per expert [2 * width, hidden]: w1 rows, then w3 rows
  DeviceBuffer down;     // per expert [hidden, width]
  // Quantized experts instead (ModelOptions::expert_dtype int8 or int4): all the experts' rows.
  DeviceQuantizedMatrix quantized_gate_up, quantized_down;
  // Pruned experts: float [experts], 0 kept, -inf not (never loaded); int32 [experts], a kept
  // expert's slot in gate_up and down, which hold only the kept ones.
  DeviceBuffer expert_mask, expert_slots;
};

// A decode step captured as a CUDA graph, with what the capture baked in: it replays while
// those stay where they were. Each of them moves O(log n) times over a generation of n tokens
// (buffers and the planned position bound grow by doubling), so is captured as often.
class DecodeGraph {
 public:
  struct Inputs {
    std::uint64_t scratch_generation;
    // The others are only replaced by larger buffers with the same layout: one at a captured
    // address is the current one.
    const void* attention_workspace;
    const void* kv_memory;
    const void* page_table;
    std::int64_t position_bound;  // what the launches were planned for (graph_position_bound)
    bool operator==(const Inputs&) const = default;
  };

  DecodeGraph() = default;
  ~DecodeGraph() { reset(); }
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  bool captured_with(const Inputs& inputs) const { return exec_ && inputs_ == inputs; }
  std::uint64_t captures() const { return captures_; }
  // Takes `graph` (destroyed here): updates the executable graph in place when the topology
  // allows, else instantiates it anew.
  void instantiate(cudaGraph_t graph, const Inputs& inputs) {
    cudaGraphExecUpdateResultInfo info{};
    if (exec_ && cudaGraphExecUpdate(exec_, graph, &info) != cudaSuccess) {
      (void)cudaGetLastError();  // a failed update is not sticky: instantiate below
      reset();
    }
    if (!exec_) {
      const cudaError_t status = cudaGraphInstantiate(&exec_, graph, 0);
      cudaGraphDestroy(graph);
      check(status, "decode graph instantiation");
    } else {
      cudaGraphDestroy(graph);
    }
    inputs_ = inputs;
    ++captures_;
  }
  void launch(cudaStream_t stream) const { check(cudaGraphLaunch(exec_, stream), "decode graph launch"); }

 private:
  void reset() {
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
  }

  cudaGraphExec_t exec_ = nullptr;
  Inputs inputs_{};
  std::uint64_t captures_ = 0;
};

struct CudaSequence final : SequenceState {
  explicit CudaSequence(std::shared_ptr<KvPagePool> pool) : kv_pages(std::move(pool)) {}
  ~CudaSequence() override {
    if (kv_pages) kv_pages->give_back(pages);
  }
  CudaSequence(const CudaSequence&) = delete;
  CudaSequence& operator=(const CudaSequence&) = delete;

  std::int64_t capacity() const { return static_cast<std::int64_t>(pages.size()) * KvPagePool::kPagePositions; }

  std::vector<DeviceBuffer> lightning;  // per layer float [heads, d, d]; empty for softmax layers
  // The softmax layers' keys (after RoPE) and values: the pages of kv_pages this sequence holds.
  std::shared_ptr<KvPagePool> kv_pages;
  std::vector<std::int32_t> pages;
  DeviceBuffer page_table;  // int32, pages in order (room for more)
  // float [vocab]: the last fed token's logits, kept here rather than in the shared scratch so
  // that sampling finds them after other sessions' passes.
  DeviceBuffer logits;
  DecodeGraph decode_graph;
};

// Page-locked host memory: the GPU copies from it while the CPU goes on.
struct PinnedFree {
  void operator()(void* memory) const { cudaFreeHost(memory); }
};
using PinnedMemory = std::unique_ptr<void, PinnedFree>;

// The uploads of a state import, double-buffered: a part is staged in one pinned buffer and
// its copy (and scatter into the cache) queued on the stream without waiting, while the caller
// reads the next part from the disk into the other buffer. A buffer is reused once the event
// recorded after its copy has passed, so at most two parts are in flight.
class ImportStaging {
 public:
  static constexpr int kSlots = 2;
  ImportStaging() = default;
  ~ImportStaging() {
    for (Slot& slot : slots_)
      if (slot.copied) {
        cudaEventSynchronize(slot.copied);
        cudaEventDestroy(slot.copied);
      }
  }
  ImportStaging(const ImportStaging&) = delete;
  ImportStaging& operator=(const ImportStaging&) = delete;

  // The next pinned buffer, with room for `bytes` and no copy from it in flight.
  void* next(std::size_t bytes) {
    current_ = (current_ + 1) % kSlots;
    Slot& slot = slots_[current_];
    if (slot.copied) check(cudaEventSynchronize(slot.copied), "state import staging");
    else check(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming), "cudaEventCreate");
    if (slot.host_bytes < bytes) {
      slot.host.reset();
      void* memory = nullptr;
      check(cudaMallocHost(&memory, bytes), "a pinned staging buffer");
      slot.host.reset(memory);
      slot.host_bytes = bytes;
    }
    return slot.host.get();
  }
  // Marks the buffer last returned by next() busy until the work queued on `stream` so far.
  void queued(cudaStream_t stream) { check(cudaEventRecord(slots_[current_].copied, stream), "cudaEventRecord"); }
  // Device rows for a part of `bytes` (one buffer: the stream orders its users).
  void* device_rows(std::size_t bytes) {
    if (rows_.bytes() < bytes) rows_ = DeviceBuffer(bytes, "K/V import staging");
    return rows_.as<void>();
  }

 private:
  struct Slot {
    PinnedMemory host;
    std::size_t host_bytes = 0;
    cudaEvent_t copied = nullptr;
  };
  Slot slots_[kSlots];
  int current_ = 0;
  DeviceBuffer rows_;
};

// Buffers of one forward pass, sized for `rows` tokens; kept between calls and grown as needed.
struct Scratch {
  std::int64_t rows = -1;
  // Counts reallocations: a new set of buffers may reuse some old addresses, so graphs that
  // baked them in compare this instead.
  std::uint64_t generation = 0;
  DeviceBuffer tokens, x, a, att, b, moe, qkv, o, gate;
  DeviceBuffer router_logits;  // float [rows, experts]
  // Every row's logits, only for ForwardRequest::all_logits (a chunk of 8192 rows at a 200K
  // vocabulary would need 6.5 GB): grown on its own by reserve_all_logits, never read by graphs.
  DeviceBuffer all_logits;
  DeviceBuffer lightning_workspace;  // the lightning prefill's segment states
  // Tensor parallel: the lightning output norm's sums of squares [rows]; the rank's logits
  // [logits_rows, widest rank's vocabulary rows] and every rank's, gathered, sized by
  // reserve_rank_logits for logits_rows (1 unless every row's logits are asked for).
  DeviceBuffer norm_sums, logits_part, logits_gather;
  std::int64_t logits_rows = 0;
};

template <typename T>
class CudaBackend final : public ComputeBackend {
 public:
  // The whole model (one rank of the layout `plans`), or rank `rank`'s parts of it (experts in
  // bf16 or float32 then), read from `map` (options.experts: the kept ones; options.purpose: all
  // or the first layer's router alone), the bytes read added to `tally`; a rank runs its part of
  // the graph once connect() has given it its communicator.
  CudaBackend(const ModelConfig& c, int device, const WeightMap& map, const ModelOptions& options, bool graphs,
              const ExpertLoad& experts, LoadTally& tally, ExpertLoadResult* expert_result,
              std::vector<RankLayout> plans = {}, int rank = 0)
      : CudaBackend(c, device, graphs, plans.empty() ? tensor_parallel_layout(c, 1, MoeParallel::Expert) : std::move(plans),
                    rank) {
    sessions_ = options.purpose == ModelPurpose::Sessions;
    quantized_experts_ = sessions_ && experts.dtype != ExpertDType::BF16;
    experts_ = options.experts;
    load_weights(map, experts, tally, expert_result);
    make_model_tensors();
  }
  BackendKind kind() const override { return BackendKind::Cuda; }
  // A pass of 512 tokens keeps the attention kernels on a fraction of the multiprocessors.
  std::int64_t default_chunk_tokens() const override { return 8192; }
  std::uint64_t weight_bytes() const override { return weight_bytes_; }

  std::unique_ptr<SequenceState> new_sequence() const override {
    device_.make_current();
    auto s = std::make_unique<CudaSequence>(kv_pages_);
    s->logits = device_array<float>(config_.vocab_size, "a session's logits");
    s->lightning.resize(config_.num_layers);
    for (int l = 0; l < config_.num_layers; ++l)
      if (config_.layer_kinds[l] == LayerKind::Lightning) {
        s->lightning[l] = device_array<float>(lightning_size(), "the lightning state of layer " + std::to_string(l));
        check(cudaMemsetAsync(s->lightning[l].as<float>(), 0, s->lightning[l].bytes(), device_.stream()),
              "cudaMemset");
      }
    device_.synchronize();
    return s;
  }

  void forward(SequenceState& state, const ForwardRequest& req) override { forward_rank(state, req, true); }

  // A tensor-parallel rank: its collectives go through `comm` (its rank's of a group whose
  // streams are each rank's stream()).
  void connect(Communicator& comm) {
    comm_.emplace(comm);
    device_.make_current();
    argmax_scratch_ = device_array<std::int32_t>(2 * (comm.size() + 1), "the distributed argmax");
  }
  // The collectives of a decode step once, at their sizes, outside any capture: NCCL connects
  // its peers at their first collective (vLLM warms up before capturing for this too). Called
  // on every rank together; not counted.
  void warm_up_collectives() {
    device_.make_current();
    const std::int64_t widest = plans_.front().vocab_rows;
    const DeviceBuffer hidden = device_array<T>(config_.hidden_size, "the collectives' warm-up");
    const DeviceBuffer floats = device_array<float>(1 + (1 + comm_->size()) * widest, "the collectives' warm-up");
    check(cudaMemsetAsync(hidden.as<void>(), 0, hidden.bytes(), device_.stream()), "cudaMemset");
    check(cudaMemsetAsync(floats.as<void>(), 0, floats.bytes(), device_.stream()), "cudaMemset");
    const Tensor x{hidden.as<void>(), ops_.activation_type()}, sums{floats.as<void>(), ElementType::F32};
    comm_->all_reduce_sum(x, config_.hidden_size);
    comm_->all_reduce_sum(sums, 1);
    comm_->all_gather(sums.at(1), widest, sums.at(1 + widest));
    device_.synchronize();  // before the buffers go
    comm_->reset_counts();
  }
  void* stream() const { return device_.stream(); }
  const CollectiveCounts* collective_counts() const { return comm_ ? &comm_->counts() : nullptr; }
  // forward(), where only a rank that reports (one of a tensor-parallel group) downloads the
  // logits of every row and calls the hidden-state callback.
  void forward_rank(SequenceState& state, const ForwardRequest& req, bool reports);
  // Tensor parallel, greedy: the best of this rank's vocabulary rows of the last logits, then
  // the best of every rank's (called on every rank together).
  TokenId greedy_over_ranks(const SequenceState& state);

  void read_logits(const SequenceState& state, float* out) const override {
    const DeviceBuffer& logits = static_cast<const CudaSequence&>(state).logits;
    const std::lock_guard lock(forward_mutex_);  // the download waits for the shared stream
    device_.make_current();
    device_.download(out, logits.as<float>(), logits.bytes());
  }
  TokenId sample(const SequenceState& state, const SamplingParams& params, std::mt19937_64& rng) override;

  void read_lightning_state(const SequenceState& state, int layer, float* out) const override {
    const auto& buffer = static_cast<const CudaSequence&>(state).lightning.at(layer);
    device_.make_current();
    device_.download(out, buffer.as<float>(), buffer.bytes());
  }
  // Imports return without waiting for the device (see ImportStaging); whatever uses the
  // sequence next runs on the same stream, after them.
  void write_lightning_state(SequenceState& state, int layer, const float* in) const override {
    auto& buffer = static_cast<CudaSequence&>(state).lightning.at(layer);
    const std::lock_guard lock(forward_mutex_);
    device_.make_current();
    auto* staged = static_cast<float*>(import_staging_.next(buffer.bytes()));
    std::copy_n(in, buffer.bytes() / sizeof(float), staged);
    device_.upload(buffer.as<float>(), staged, buffer.bytes());
    import_staging_.queued(device_.stream());
  }
  StateDType kv_dtype() const override { return std::is_same_v<T, float> ? StateDType::F32 : StateDType::BF16; }
  void read_kv(const SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
               void* out) const override;
  void resize_kv(SequenceState& state, std::int64_t positions) const override {
    const std::lock_guard lock(forward_mutex_);
    device_.make_current();
    reserve_kv(static_cast<CudaSequence&>(state), positions);
  }
  void write_kv(SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
                const void* in) const override;

 private:
  // The rank's heads and K/V heads (all of them on one rank).
  std::int64_t lightning_size() const { return std::int64_t{plan_.heads} * config_.head_dim * config_.head_dim; }
  std::int64_t attention_width() const { return std::int64_t{plan_.heads} * config_.head_dim; }
  std::int64_t kv_width() const { return std::int64_t{plan_.kv_heads} * config_.head_dim; }

  // Everything but the weights.
  CudaBackend(const ModelConfig& c, int device, bool graphs, std::vector<RankLayout> plans, int rank)
      : config_(c), plans_(std::move(plans)), plan_(plans_.at(static_cast<std::size_t>(rank))), device_(device),
        use_graphs_(graphs) {
    for (int l = 0; l < c.num_layers; ++l)
      if (c.layer_kinds[l] == LayerKind::Softmax) softmax_index_[l] = softmax_layers_++;
    if (softmax_layers_ > 0) kv_pages_ = std::make_shared<KvPagePool>(device_, softmax_layers_, kv_width(), sizeof(T));
  }
  // Writes the rank's part of the weight `name` (a WeightMap name) to `device`: float32 where
  // as_float, else T.
  using WeightFill = std::function<void(const std::string& name, const WeightPart& part, void* device, bool as_float)>;
  // Allocates the rank's part of every weight and has `fill` write it.
  void allocate_weights(const WeightFill& fill);
  void load_weights(const WeightMap& map, const ExpertLoad& experts, LoadTally& tally, ExpertLoadResult* expert_result);
  // A quantized matrix on the device: its arrays for `layout` (contents unset), one uploaded from
  // the host, and one's contents downloaded.
  DeviceQuantizedMatrix allocate_quantized(const QuantLayout& layout, const std::string& what) const;
  DeviceQuantizedMatrix upload_quantized(const QuantizedMatrix& m, const std::string& what);
  QuantizedMatrix download_quantized(const DeviceQuantizedMatrix& d) const;
  // Layer l's quantized experts become these (a layer may come twice: see load_quantized_experts).
  void place_quantized(int l, DeviceQuantizedMatrix gate_up, DeviceQuantizedMatrix down);
  // Layer l's experts quantized on the GPU (PlacedExpertQuantizer): each expert's matrices
  // uploaded as the checkpoint stores them (bf16 as is; F32, F16 or synthetic values as float32),
  // then cuda::quantize_experts, bit for bit core's quantizer, writes them where they stay.
  std::optional<QuantizedLayerExperts> quantize_experts_here(const WeightMap& map, int l, ExpertDType dtype,
                                                             LoadTally& tally, bool for_cache);
  cuda::KvCacheView<T> kv_view(const CudaSequence& s, int layer) const {
    return kv_pages_->view<T>(softmax_index_.at(layer), s.page_table.as<std::int32_t>());
  }
  void reserve_kv(CudaSequence& s, std::int64_t positions) const;
  void reserve_scratch(std::int64_t rows);
  void reserve_all_logits(std::int64_t rows);
  // Tensor parallel: the rank's logits buffers for `rows` rows of logits.
  void reserve_rank_logits(std::int64_t rows);
  // The rank's part of the weight of this WeightMap name (weight_shape's shape).
  WeightPart rank_part(const std::string& name) const { return rank_weight_part(config_, plans_, plan_.rank, name); }
  // The graph's views of the weights (after they are allocated).
  void make_model_tensors();
  // Enqueues the model over the `rows` tokens in scratch_.tokens, up to the logits of the last
  // token in s.logits (and, with all_logits, every token's in scratch_.all_logits). Without hidden states or embedding overrides it neither waits for the
  // device nor allocates (beyond stream-ordered workspaces), so a decode step can be captured
  // as a graph.
  void enqueue_forward(CudaSequence& s, std::int64_t rows, StepPosition first_position, bool all_logits,
                       const ForwardRequest* request, bool reports);
  // One token through the sequence's decode graph, captured again (after sizing the attention
  // workspace for it) when what it was captured with has moved.
  void decode_step(CudaSequence& s, std::int64_t position);
  DecodeGraph::Inputs decode_graph_inputs(const CudaSequence& s) const {
    return {scratch_.generation, attention_workspace_.as<void>(), kv_pages_ ? kv_pages_->memory() : nullptr,
            s.page_table.as<void>(), graph_position_bound(s)};
  }
  // The position a decode graph is planned for: at least the last one the sequence's cache
  // holds, rounded up so that it changes only when the cache doubles (the cache grows a page
  // at a time; the attention kernels stay balanced below the bound).
  static std::int64_t graph_position_bound(const CudaSequence& s) {
    return static_cast<std::int64_t>(std::bit_ceil(static_cast<std::uint64_t>(std::max<std::int64_t>(s.capacity(), 1)))) - 1;
  }
  // Sizes the softmax layers' split workspace for `rows` tokens at positions up to position_bound + rows.
  void reserve_attention_workspace(std::int64_t rows, std::int64_t position_bound);

  const ModelConfig config_;
  const std::vector<RankLayout> plans_;  // every rank's part; one covering the model without tensor parallel
  const RankLayout plan_;                // this rank's
  DeviceContext device_;
  DeviceBuffer embed_, lm_head_, final_norm_;
  std::vector<CudaLayer> layers_;
  ModelTensors tensors_;
  const ModelForward forward_ = model_forward(config_);
  std::uint64_t weight_bytes_ = 0;
  // Pruned experts are neither allocated nor loaded; the router's mask keeps tokens from them.
  ExpertSelection experts_;
  // The experts each layer's block holds (the rank's, or the kept ones; quantized blocks hold them
  // all), and each expert's slot there (-1: another rank's, or pruned).
  int held_experts() const {
    return experts_.pruned() && !quantized_experts_ ? experts_.experts_kept() : plan_.experts;
  }
  std::vector<std::int32_t> expert_slots(int layer) const;
  bool quantized_experts_ = false;  // the layers' quantized_gate_up and quantized_down, not gate_up and down
  bool sessions_ = true;  // false: the first layer's router alone (ModelPurpose::FirstLayerRouter), no experts or LM head
  std::map<int, int> softmax_index_;  // layer -> its index among the softmax layers
  int softmax_layers_ = 0;
  std::shared_ptr<KvPagePool> kv_pages_;
  const bool use_graphs_;
  DeviceBuffer step_position_ = device_array<std::int64_t>(1, "the decode position");
  DeviceBuffer sampling_workspace_ =
      DeviceBuffer(cuda::sampling_workspace_bytes(config_.vocab_size), "the sampling workspace");
  DeviceBuffer sampled_token_ = device_array<std::int32_t>(1, "the sampled token");
  DeviceBuffer attention_workspace_;
  // Sessions of one model share the scratch buffers and the sampling workspace, and the K/V
  // pool moves when it grows.
  mutable std::mutex forward_mutex_;
  mutable ImportStaging import_staging_;  // under forward_mutex_
  Scratch scratch_;
  CudaOps<T> ops_{device_};
  // Tensor parallel: the rank's communicator (counting what goes through it) and the greedy
  // argmax's candidates.
  std::optional<CountingCommunicator> comm_;
  DeviceBuffer argmax_scratch_;
};

template <typename T>
std::vector<std::int32_t> CudaBackend<T>::expert_slots(int layer) const {
  std::vector<std::int32_t> slots(static_cast<std::size_t>(config_.num_experts), -1);
  std::int32_t next = 0;
  for (int e = plan_.first_expert; e < plan_.first_expert + plan_.experts; ++e)
    if (expert_kept(experts_, layer, e)) slots[static_cast<std::size_t>(e)] = next++;
  return slots;
}

template <typename T>
void CudaBackend<T>::allocate_weights(const WeightFill& fill) {
  const std::int64_t H = config_.hidden_size, I = plan_.expert_width, E = config_.num_experts;
  auto fill_part = [&](const std::string& name, void* device, bool as_float) {
    fill(name, rank_part(name), device, as_float);
  };
  auto get = [&](const std::string& name, WeightPrecision precision) {
    const std::int64_t numel = rank_part(name).numel();
    const bool as_float = precision == WeightPrecision::Float32;
    DeviceBuffer buffer = as_float ? device_array<float>(numel, name) : device_array<T>(numel, name);
    fill_part(name, buffer.as<void>(), as_float);
    weight_bytes_ += buffer.bytes();
    return buffer;
  };

  embed_ = get("embed", WeightPrecision::Backend);
  if (sessions_) {  // a router-only model stops before the LM head
    lm_head_ = get("lm_head", WeightPrecision::Backend);
    final_norm_ = get("final_norm", WeightPrecision::Float32);
  }
  for (int l = 0; l < config_.num_layers; ++l) {
    const std::string k = layer_weight_prefix(l);
    CudaLayer layer;
    load_layer_tensors(config_, l, layer, get);
    if (layer.kind == LayerKind::Lightning) {
      const std::vector<float> slopes = lightning_slopes(config_, l);
      layer.slopes = device_array<float>(plan_.heads, k + "slopes");
      device_.upload(layer.slopes.as<float>(), slopes.data() + plan_.first_head, layer.slopes.bytes());
    }
    if (experts_.pruned()) {
      const std::vector<float> mask = expert_mask(config_, experts_, l);
      layer.expert_mask = device_array<float>(E, k + "expert mask");
      device_.upload(layer.expert_mask.as<float>(), mask.data(), layer.expert_mask.bytes());
    }
    if (quantized_experts_ || !sessions_) {  // quantized: load_weights puts them in afterwards, every expert
      layers_.push_back(std::move(layer));
      continue;
    }
    // The rank's experts (all but under expert parallel; pruned: the kept ones), each its slice
    // of the width.
    const std::int64_t R = held_experts();
    layer.gate_up = device_array<T>(R * 2 * I * H, k + "experts (w1, w3)");
    layer.down = device_array<T>(R * H * I, k + "experts (w2)");
    weight_bytes_ += layer.gate_up.bytes() + layer.down.bytes();
    const std::vector<std::int32_t> slots = expert_slots(l);
    if (experts_.pruned()) {
      layer.expert_slots = device_array<std::int32_t>(E, k + "expert slots");
      device_.upload(layer.expert_slots.as<std::int32_t>(), slots.data(), layer.expert_slots.bytes());
    }
    for (int e = 0; e < config_.num_experts; ++e) {
      const std::int64_t slot = slots[static_cast<std::size_t>(e)];
      if (slot < 0) continue;
      const ExpertWeightNames names = expert_weight_names(l, e);
      T* gate_up = layer.gate_up.as<T>() + slot * 2 * I * H;
      fill_part(names.w1, gate_up, false);
      fill_part(names.w3, gate_up + I * H, false);
      fill_part(names.w2, layer.down.as<T>() + slot * H * I, false);
    }
    layers_.push_back(std::move(layer));
  }
  device_.synchronize();
}

template <typename T>
DeviceQuantizedMatrix CudaBackend<T>::allocate_quantized(const QuantLayout& layout, const std::string& what) const {
  DeviceQuantizedMatrix d;
  d.view.layout = layout;
  d.packed = DeviceBuffer(static_cast<std::size_t>(layout.packed_bytes()), what);
  d.view.packed = d.packed.as<std::uint8_t>();
  d.scales = DeviceBuffer(static_cast<std::size_t>(layout.scale_bytes()), what + " scales");
  if (layout.dtype == ExpertDType::Int8) {
    d.view.row_scales = d.scales.as<float>();
  } else {
    d.view.group_scales = d.scales.as<std::uint16_t>();
    d.offsets = DeviceBuffer(static_cast<std::size_t>(layout.offset_bytes()), what + " offsets");
    d.view.group_offsets = d.offsets.as<std::uint16_t>();
  }
  return d;
}

template <typename T>
DeviceQuantizedMatrix CudaBackend<T>::upload_quantized(const QuantizedMatrix& m, const std::string& what) {
  const QuantizedView host = m.view();
  DeviceQuantizedMatrix d = allocate_quantized(host.layout, what);
  device_.upload(d.packed.as<void>(), host.packed, d.packed.bytes());
  device_.upload(d.scales.as<void>(), host.layout.dtype == ExpertDType::Int8 ? static_cast<const void*>(host.row_scales)
                                                                            : host.group_scales,
                 d.scales.bytes());
  if (d.offsets.bytes()) device_.upload(d.offsets.as<void>(), host.group_offsets, d.offsets.bytes());
  device_.synchronize();  // the host matrix goes when the caller's layer does
  return d;
}

template <typename T>
QuantizedMatrix CudaBackend<T>::download_quantized(const DeviceQuantizedMatrix& d) const {
  QuantizedMatrix m(d.view.layout);
  device_.download(m.packed().data(), d.packed.as<void>(), d.packed.bytes());
  if (d.view.layout.dtype == ExpertDType::Int8) {
    device_.download(m.row_scales().data(), d.scales.as<void>(), d.scales.bytes());
  } else {
    device_.download(m.group_scales().data(), d.scales.as<void>(), d.scales.bytes());
    device_.download(m.group_offsets().data(), d.offsets.as<void>(), d.offsets.bytes());
  }
  return m;
}

template <typename T>
void CudaBackend<T>::place_quantized(int l, DeviceQuantizedMatrix gate_up, DeviceQuantizedMatrix down) {
  CudaLayer& layer = layers_[static_cast<std::size_t>(l)];
  for (const DeviceQuantizedMatrix* old : {&layer.quantized_gate_up, &layer.quantized_down})
    weight_bytes_ -= old->packed.bytes() + old->scales.bytes() + old->offsets.bytes();
  layer.quantized_gate_up = std::move(gate_up);
  layer.quantized_down = std::move(down);
  for (const DeviceQuantizedMatrix* now : {&layer.quantized_gate_up, &layer.quantized_down})
    weight_bytes_ += now->packed.bytes() + now->scales.bytes() + now->offsets.bytes();
}

// Rows first.. first + count - 1 of a quantized matrix on the device, as the kernels take them.
cuda::QuantizedExperts kernel_matrix(const QuantizedView& matrix, std::int64_t first, std::int64_t count) {
  const QuantizedView v = matrix.rows(first, count);
  cuda::QuantizedExperts q;
  q.format = v.layout.dtype == ExpertDType::Int8 ? cuda::QuantFormat::Int8 : cuda::QuantFormat::Int4;
  q.rows = count;
  q.cols = v.layout.cols;
  q.packed = v.packed;
  q.row_scales = v.row_scales;
  q.group_scales = reinterpret_cast<const __half*>(v.group_scales);
  q.group_offsets = reinterpret_cast<const __half*>(v.group_offsets);
  return q;
}

template <typename T>
std::optional<QuantizedLayerExperts> CudaBackend<T>::quantize_experts_here(const WeightMap& map, int l,
                                                                           ExpertDType dtype, LoadTally& tally,
                                                                           bool for_cache) {
  const std::int64_t H = config_.hidden_size, I = config_.expert_width, E = config_.num_experts;
  const std::string k = layer_weight_prefix(l);
  DeviceQuantizedMatrix gate_up = allocate_quantized({dtype, E * 2 * I, H}, k + "experts (w1, w3), quantized");
  DeviceQuantizedMatrix down = allocate_quantized({dtype, E * H, I}, k + "experts (w2), quantized");
  // bf16 goes up as stored when every matrix of the layer is bf16; anything else as float32.
  bool bf16_values = true;
  for (int e = 0; e < E && bf16_values; ++e) {
    const ExpertWeightNames names = expert_weight_names(l, e);
    for (const std::string* name : {&names.w1, &names.w3, &names.w2}) {
      const TensorSlice& s = map.at(*name);
      bf16_values = bf16_values && s.view && s.view->dtype == DType::BF16;
    }
  }
  const std::size_t value_bytes = bf16_values ? sizeof(bf16) : sizeof(float);
  // One expert's w1, w3 and w2, one after another.
  const DeviceBuffer values(static_cast<std::size_t>(3 * I * H) * value_bytes, k + "an expert's values to quantize");
  auto stage = [&](const std::string& name, std::int64_t at) {
    const TensorSlice& s = map.at(name);
    char* to = values.as<char>() + static_cast<std::size_t>(at) * value_bytes;
    if (bf16_values) {
      check_stored_values(map, name);  // the quantizer would make a damaged value a finite one
      device_.upload(to, s.view->data + s.offset * 2, static_cast<std::size_t>(s.numel) * 2);
    } else {
      const WeightTensor host = s.view ? WeightTensor(*s.view, s.offset, s.numel) : WeightTensor(s.synthetic, s.numel);
      device_.upload(to, host.data(), static_cast<std::size_t>(s.numel) * sizeof(float));
      device_.synchronize();  // before `host` goes
    }
    tally.add(s.source_bytes());
  };
  const bool symmetric = kInt4Variant == Int4Variant::Symmetric;
  auto quantize = [&](std::int64_t at, const cuda::QuantizedExperts& to) {
    if (bf16_values)
      cuda::quantize_experts(values.as<bf16>() + at, 1, to, symmetric, device_.stream());
    else
      cuda::quantize_experts(values.as<float>() + at, 1, to, symmetric, device_.stream());
  };
  for (int e = 0; e < E; ++e) {
    const ExpertWeightNames names = expert_weight_names(l, e);
    stage(names.w1, 0);
    stage(names.w3, I * H);
    stage(names.w2, 2 * I * H);
    quantize(0, kernel_matrix(gate_up.view, e * 2 * I, 2 * I));
    quantize(2 * I * H, kernel_matrix(down.view, e * H, H));
    device_.synchronize();  // the next expert's values replace these
  }
  std::optional<QuantizedLayerExperts> host;
  if (for_cache) host = QuantizedLayerExperts{download_quantized(gate_up), download_quantized(down)};
  place_quantized(l, std::move(gate_up), std::move(down));
  return host;
}

template <typename T>
void CudaBackend<T>::load_weights(const WeightMap& map, const ExpertLoad& experts, LoadTally& tally,
                                  ExpertLoadResult* expert_result) {
  // Conversion to T goes through a float32 staging buffer on the device, in pieces. Sized for
  // the embedding's part, usually the largest; larger ones go through in pieces.
  constexpr std::int64_t kStagingFloats = std::int64_t{16} << 20;
  const DeviceBuffer staging = device_array<float>(
      std::is_same_v<T, float> || !map.at("embed").view ? 0 : std::min(kStagingFloats, rank_part("embed").numel()),
      "weight conversion");
  std::vector<float> host;  // the part read, as float32
  allocate_weights([&](const std::string& name, const WeightPart& part, void* device, bool as_float) {
    const TensorSlice& slice = map.at(name);
    if (!slice.view) {  // synthetic: made here, by the generator fill_synthetic matches
      const SyntheticFill& f = slice.synthetic;
      const std::int64_t numel = part.rows * part.width;
      auto make = [&](void* into) {
        if (as_float)
          cuda::fill_uniform(static_cast<float*>(into), numel, f.seed, f.low, f.high, device_.stream());
        else
          cuda::fill_uniform(static_cast<T*>(into), numel, f.seed, f.low, f.high, device_.stream());
      };
      tally.add(static_cast<std::uint64_t>(part.numel()) * sizeof(float));
      if (part.whole()) return make(device);
      // A rank's part: the whole weight made, then its block copied.
      const std::size_t size = as_float ? sizeof(float) : sizeof(T), pitch = static_cast<std::size_t>(part.width) * size;
      const DeviceBuffer whole(static_cast<std::size_t>(numel) * size, name);
      make(whole.as<void>());
      if (part.by_columns)
        check(cudaMemcpy2DAsync(device, static_cast<std::size_t>(part.count) * size,
                                whole.as<char>() + static_cast<std::size_t>(part.first) * size, pitch,
                                static_cast<std::size_t>(part.count) * size, static_cast<std::size_t>(part.rows),
                                cudaMemcpyDeviceToDevice, device_.stream()),
              "a rank's weight columns");
      else
        check(cudaMemcpyAsync(device, whole.as<char>() + static_cast<std::size_t>(part.first) * pitch,
                              static_cast<std::size_t>(part.count) * pitch, cudaMemcpyDeviceToDevice, device_.stream()),
              "a rank's weight rows");
      device_.synchronize();  // before `whole` goes
      return;
    }
    // Only the part's bytes are read from the checkpoint.
    const std::int64_t numel = part.numel();
    host.resize(static_cast<std::size_t>(numel));
    const std::uint64_t read = read_weight_part(map, name, part, host.data());
    if (as_float || std::is_same_v<T, float>) {
      device_.upload(device, host.data(), static_cast<std::size_t>(numel) * sizeof(float));
    } else {
      const std::int64_t piece = static_cast<std::int64_t>(staging.bytes() / sizeof(float));
      for (std::int64_t done = 0; done < numel; done += piece) {
        const std::int64_t n = std::min(piece, numel - done);
        device_.upload(staging.as<float>(), host.data() + done, static_cast<std::size_t>(n) * sizeof(float));
        cuda::from_float(staging.as<float>(), n, static_cast<T*>(device) + done, device_.stream());
        device_.synchronize();  // the staging buffer is reused by the next piece
      }
    }
    device_.synchronize();  // `host` is reused by the next weight
    tally.add(read);
  });
  if (!quantized_experts_) return;
  // Read from the quantized cache and uploaded a layer at a time, or quantized here on the GPU
  // from the checkpoint's values (the cache file then written from the GPU's result).
  const ExpertLoadResult result = load_quantized_experts(
      config_, map, experts,
      [&](int l, QuantizedLayerExperts&& q) {
        const std::string k = layer_weight_prefix(l);
        place_quantized(l, upload_quantized(q.gate_up, k + "experts (w1, w3), quantized"),
                        upload_quantized(q.down, k + "experts (w2), quantized"));
      },
      [&](std::uint64_t bytes) { tally.add(bytes); },
      [&](int l, bool for_cache) { return quantize_experts_here(map, l, experts.dtype, tally, for_cache); });
  if (expert_result) *expert_result = result;
}

template <typename T>
void CudaBackend<T>::reserve_kv(CudaSequence& s, std::int64_t positions) const {
  if (positions <= s.capacity() || !kv_pages_) return;
  const auto needed = static_cast<std::size_t>((positions + KvPagePool::kPagePositions - 1) >> KvPagePool::kPageShift);
  // The page table grows geometrically; everything is allocated before the state changes, so
  // running out of memory leaves it as it was.
  DeviceBuffer table;
  if (needed * sizeof(std::int32_t) > s.page_table.bytes())
    table = device_array<std::int32_t>(static_cast<std::int64_t>(std::max(needed, 2 * s.pages.size())),
                                       "the K/V page table");
  const std::vector<std::int32_t> taken = kv_pages_->take(needed - s.pages.size());
  s.pages.insert(s.pages.end(), taken.begin(), taken.end());
  if (table.bytes()) s.page_table = std::move(table);
  device_.upload(s.page_table.as<std::int32_t>(), s.pages.data(), s.pages.size() * sizeof(std::int32_t));
  device_.synchronize();
}

template <typename T>
void CudaBackend<T>::reserve_attention_workspace(std::int64_t rows, std::int64_t position_bound) {
  if (softmax_layers_ == 0) return;
  const std::size_t bytes = cuda::softmax_attention_workspace_bytes<T>(
      rows, position_bound, plan_.heads, plan_.kv_heads, config_.head_dim, device_.launch_limits());
  if (bytes > attention_workspace_.bytes())
    attention_workspace_ = DeviceBuffer(bytes, "the attention split workspace");
}

template <typename T>
void CudaBackend<T>::reserve_scratch(std::int64_t rows) {
  if (rows <= scratch_.rows) return;
  const std::int64_t H = config_.hidden_size, A = attention_width();
  const std::string what = "activations of " + std::to_string(rows) + " tokens";
  Scratch s;
  s.rows = rows;
  s.generation = scratch_.generation + 1;
  s.tokens = device_array<std::int32_t>(rows, what);
  for (DeviceBuffer* b : {&s.x, &s.a, &s.att, &s.b, &s.moe}) *b = device_array<T>(rows * H, what);
  s.qkv = device_array<T>(rows * 3 * A, what);
  s.o = device_array<T>(rows * A, what);
  s.gate = device_array<T>(rows * A, what);
  s.router_logits = device_array<float>(rows * config_.num_experts, what);
  s.lightning_workspace = DeviceBuffer(
      cuda::lightning_prefill_workspace_bytes<T>(rows, plan_.heads, config_.head_dim, device_.launch_limits()),
      what);
  if (comm_) s.norm_sums = device_array<float>(rows, what);
  ops_.reserve_moe({config_.hidden_size, plan_.expert_width, config_.num_experts, config_.experts_per_token,
                    experts_.pruned() && held_experts() < config_.num_experts ? held_experts() : 0},
                   rows);
  // Last, so that running out of memory above leaves scratch_ whole.
  s.all_logits = std::move(scratch_.all_logits);
  s.logits_part = std::move(scratch_.logits_part);
  s.logits_gather = std::move(scratch_.logits_gather);
  s.logits_rows = scratch_.logits_rows;
  scratch_ = std::move(s);
}

template <typename T>
void CudaBackend<T>::reserve_all_logits(std::int64_t rows) {
  const auto bytes = static_cast<std::size_t>(rows * config_.vocab_size) * sizeof(float);
  if (bytes > scratch_.all_logits.bytes())
    scratch_.all_logits = device_array<float>(rows * config_.vocab_size, "logits of " + std::to_string(rows) + " tokens");
}

template <typename T>
void CudaBackend<T>::reserve_rank_logits(std::int64_t rows) {
  if (rows <= scratch_.logits_rows) return;
  const std::int64_t widest = plans_.front().vocab_rows, ranks = static_cast<std::int64_t>(plans_.size());
  const std::string what = "a rank's logits of " + std::to_string(rows) + " tokens";
  DeviceBuffer part = device_array<float>(rows * widest, what);
  DeviceBuffer gather = device_array<float>(ranks * rows * widest, what);
  scratch_.logits_part = std::move(part);
  scratch_.logits_gather = std::move(gather);
  scratch_.logits_rows = rows;
  ++scratch_.generation;  // decode graphs baked in the old buffers
}

template <typename T>
void CudaBackend<T>::forward_rank(SequenceState& state, const ForwardRequest& req, bool reports_to_host) {
  auto& s = static_cast<CudaSequence&>(state);
  const auto rows = static_cast<std::int64_t>(req.tokens.size());
  const std::int64_t V = config_.vocab_size;
  if (rows == 0) return;
  const std::lock_guard lock(forward_mutex_);
  device_.make_current();
  // Reserve everything first: past this point nothing allocates but a decode step that captures
  // its graph, whose attention workspace is reserved there, before the capture changes anything
  // (a replay skips planning it).
  reserve_scratch(rows);
  if (req.all_logits) reserve_all_logits(rows);
  if (comm_) reserve_rank_logits(req.all_logits ? rows : 1);
  reserve_kv(s, req.first_position + rows);
  const bool reports = (req.hidden_states && *req.hidden_states) || (req.router_logits && *req.router_logits) ||
                       req.last_router_layer >= 0;
  // A captured step writes the last token's logits only.
  const bool graph = rows == 1 && use_graphs_ && !reports && req.embedding_overrides.empty() && !req.all_logits;
  if (!graph) reserve_attention_workspace(rows, req.first_position);  // decode_step's own when it captures
  Scratch& w = scratch_;
  device_.upload(w.tokens.as<std::int32_t>(), req.tokens.data(), static_cast<std::size_t>(rows) * sizeof(TokenId));
  if (graph)
    decode_step(s, req.first_position);
  else
    enqueue_forward(s, rows, {req.first_position, nullptr}, req.all_logits != nullptr, &req, reports_to_host);
  if (req.all_logits && reports_to_host)
    device_.download(req.all_logits, w.all_logits.as<float>(), static_cast<std::size_t>(rows * V) * sizeof(float));
  // A one-token step does not wait, so that sampling queues right behind it; a longer pass
  // does, so that feed's progress reports its time and a device error surfaces in its feed.
  else if (rows > 1)
    device_.synchronize();
}

template <typename T>
TokenId CudaBackend<T>::sample(const SequenceState& state, const SamplingParams& params, std::mt19937_64& rng) {
  const auto& s = static_cast<const CudaSequence&>(state);
  check_sampling_params(params);
  // The draw's random number is hashed on the device from a seed: one fresh seed from the
  // session's generator per draw, so set_seed repeats the draws as it does on the CPU.
  const cuda::TokenSampling sampling{params.temperature, params.top_k, params.top_p, is_greedy(params) ? 0 : rng(),
                                     0};
  const std::lock_guard lock(forward_mutex_);
  device_.make_current();
  cuda::sample_token(s.logits.as<float>(), config_.vocab_size, sampling, sampling_workspace_.as<void>(),
                     sampled_token_.as<std::int32_t>(), device_.stream());
  std::int32_t token = 0;
  device_.download(&token, sampled_token_.as<std::int32_t>(), sizeof token);
  return token;
}

template <typename T>
TokenId CudaBackend<T>::greedy_over_ranks(const SequenceState& state) {
  const auto& s = static_cast<const CudaSequence&>(state);
  const std::lock_guard lock(forward_mutex_);
  device_.make_current();
  // Every rank holds the gathered logits; each takes the best of its own rows, on its device
  // (a rank of a vocabulary smaller than the ranks may have none).
  const float* rows = s.logits.as<float>() + plan_.first_vocab_row;
  if (plan_.vocab_rows == 0)
    return distributed_argmax(*comm_, ops_, {argmax_scratch_.as<void>(), ElementType::I32},
                              -std::numeric_limits<float>::infinity(), static_cast<TokenId>(plan_.first_vocab_row));
  cuda::sample_token(rows, plan_.vocab_rows, cuda::TokenSampling{}, sampling_workspace_.as<void>(),
                     sampled_token_.as<std::int32_t>(), device_.stream());
  std::int32_t best = 0;
  device_.download(&best, sampled_token_.as<std::int32_t>(), sizeof best);
  float value = 0.0f;
  device_.download(&value, rows + best, sizeof value);
  return distributed_argmax(*comm_, ops_, {argmax_scratch_.as<void>(), ElementType::I32}, value,
                            static_cast<TokenId>(plan_.first_vocab_row + best));
}

template <typename T>
void CudaBackend<T>::make_model_tensors() {
  const ElementType weight_type = ops_.activation_type();
  auto view = [](const DeviceBuffer& buffer, ElementType type) { return Tensor{buffer.as<void>(), type}; };
  const std::int64_t H = config_.hidden_size, I = plan_.expert_width;
  tensors_.embed = view(embed_, weight_type);
  tensors_.lm_head = view(lm_head_, weight_type);
  tensors_.final_norm = view(final_norm_, ElementType::F32);
  tensors_.layers.clear();
  for (const CudaLayer& w : layers_) {
    LayerGraphTensors layer;
    layer.kind = w.kind;
    for (auto [to, from] : {std::pair{&layer.input_norm, &w.input_norm}, {&layer.post_attn_norm, &w.post_attn_norm},
                            {&layer.output_norm, &w.output_norm}, {&layer.router, &w.router}})
      *to = view(*from, ElementType::F32);
    for (auto [to, from] : {std::pair{&layer.qkv, &w.qkv}, {&layer.output_gate, &w.output_gate},
                            {&layer.out_proj, &w.out_proj}, {&layer.q_proj, &w.q_proj}, {&layer.k_proj, &w.k_proj},
                            {&layer.v_proj, &w.v_proj}, {&layer.o_proj, &w.o_proj}})
      *to = view(*from, weight_type);
    layer.slopes = view(w.slopes, ElementType::F32);
    layer.moe = {layer.router, {}, {}, H, I, config_.experts_per_token};
    layer.moe.expert_mask = view(w.expert_mask, ElementType::F32);
    if (!sessions_) {
      layer.moe.experts.assign(static_cast<std::size_t>(config_.num_experts), ExpertTensors{});  // router only
    } else if (quantized_experts_) {
      for (int e = 0; e < config_.num_experts; ++e)
        layer.moe.quantized.push_back(
            {w.quantized_gate_up.view.rows(e * 2 * I, 2 * I), w.quantized_down.view.rows(e * H, H)});
    } else {
      layer.moe.expert_slots = view(w.expert_slots, ElementType::I32);
      const Tensor gate_up = view(w.gate_up, weight_type), down = view(w.down, weight_type);
      // Another rank's experts and pruned ones are null.
      const std::vector<std::int32_t> slots = expert_slots(static_cast<int>(tensors_.layers.size()));
      for (std::int32_t slot : slots)
        layer.moe.experts.push_back(slot < 0 ? ExpertTensors{}
                                             : ExpertTensors{gate_up.at(slot * 2 * I * H),
                                                             gate_up.at(slot * 2 * I * H + I * H),
                                                             down.at(slot * H * I)});
    }
    tensors_.layers.push_back(std::move(layer));
  }
}

template <typename T>
void CudaBackend<T>::enqueue_forward(CudaSequence& s, std::int64_t rows, StepPosition first_position,
                                     bool all_logits, const ForwardRequest* request, bool reports) {
  const ElementType type = ops_.activation_type();
  Scratch& w = scratch_;
  auto view = [type](const DeviceBuffer& buffer) { return Tensor{buffer.as<void>(), type}; };
  SequenceTensors sequence;
  sequence.lightning.resize(config_.num_layers);
  sequence.kv.resize(config_.num_layers);
  for (int l = 0; l < config_.num_layers; ++l) {
    if (config_.layer_kinds[l] == LayerKind::Lightning) {
      sequence.lightning[l] = {s.lightning[l].as<void>(), ElementType::F32};
    } else {
      const cuda::KvCacheView<T> kv = kv_view(s, l);
      sequence.kv[l] = {{kv.keys, type}, {kv.values, type}, kv.page_table, kv.page_stride, kv.page_shift};
    }
  }
  const ActivationTensors act{{w.tokens.as<void>(), ElementType::I32}, view(w.x), view(w.a), view(w.att), view(w.b),
                              view(w.moe), view(w.qkv), view(w.o), view(w.gate),
                              {w.router_logits.as<void>(), ElementType::F32}};
  GraphPass pass;
  pass.rows = rows;
  pass.first_position = first_position;
  pass.logits = {s.logits.as<void>(), ElementType::F32};
  if (all_logits) pass.all_logits = {w.all_logits.as<void>(), ElementType::F32};
  if (request) {
    pass.embedding_overrides = request->embedding_overrides;
    // Every rank stops after the same layer (their collectives pair up); one reports.
    pass.last_router_layer = request->last_router_layer;
    if (reports) {
      pass.hidden_states = request->hidden_states;
      pass.router_logits = request->router_logits;
    }
  }
  // Every rank writes the gathered logits to its own sequence's (its device's).
  RankPass rank_pass{comm_ ? &*comm_ : nullptr, plans_, {w.norm_sums.as<void>(), ElementType::F32},
                     {w.logits_part.as<void>(), ElementType::F32}, {w.logits_gather.as<void>(), ElementType::F32}};
  if (comm_) pass.rank = &rank_pass;
  ops_.use_workspaces(w.lightning_workspace.as<void>(), w.lightning_workspace.bytes(), attention_workspace_.as<void>(),
                      attention_workspace_.bytes());
  forward_(ops_, config_, tensors_, sequence, act, pass);
}

template <typename T>
void CudaBackend<T>::decode_step(CudaSequence& s, std::int64_t position) {
  const cudaStream_t stream = device_.stream();
  if (!s.decode_graph.captured_with(decode_graph_inputs(s))) {
    reserve_attention_workspace(1, graph_position_bound(s));
    // Replays read the position from step_position_; the launches are planned for the
    // largest position the cache holds.
    cudaGraph_t graph = nullptr;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), "decode graph capture");
    try {
      enqueue_forward(s, 1, {graph_position_bound(s), step_position_.as<std::int64_t>()}, false, nullptr, false);
    } catch (...) {
      (void)cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    check(cudaStreamEndCapture(stream, &graph), "decode graph capture");
    s.decode_graph.instantiate(graph, decode_graph_inputs(s));
  }
  device_.upload(step_position_.as<std::int64_t>(), &position, sizeof position);
  s.decode_graph.launch(stream);
}

template <typename T>
void CudaBackend<T>::read_kv(const SequenceState& state, int layer, KvSide side, std::int64_t first,
                             std::int64_t count, void* out) const {
  const auto& s = static_cast<const CudaSequence&>(state);
  const std::int64_t KV = kv_width(), d = config_.head_dim;
  if (first + count > s.capacity())
    throw Error("internal: K/V rows " + std::to_string(first) + "+" + std::to_string(count) +
                " read past the cache's " + std::to_string(s.capacity()) + " positions");
  const std::lock_guard lock(forward_mutex_);
  device_.make_current();
  // In the cache's own type: no conversion, half the bytes of float32 for bf16.
  DeviceBuffer device_rows = device_array<T>(count * KV, "K/V export");
  const bool keys = side == KvSide::Keys;
  cuda::read_kv_rows<T, T>(kv_view(s, layer).as_const(), first, count, KV, keys ? device_rows.as<T>() : nullptr,
                           keys ? nullptr : device_rows.as<T>(), device_.stream());
  std::vector<T> rows(static_cast<std::size_t>(count * KV));
  device_.download(rows.data(), device_rows.as<T>(), rows.size() * sizeof(T));
  // Cache layout [position, kv_head, d] to export layout [kv_head, position, d].
  T* exported = static_cast<T*>(out);
  for (int g = 0; g < plan_.kv_heads; ++g)
    for (std::int64_t t = 0; t < count; ++t)
      std::copy_n(rows.data() + (t * plan_.kv_heads + g) * d, d, exported + (std::int64_t{g} * count + t) * d);
}

template <typename T>
void CudaBackend<T>::write_kv(SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
                              const void* in) const {
  auto& s = static_cast<CudaSequence&>(state);
  const std::int64_t KV = kv_width(), d = config_.head_dim;
  if (first + count > s.capacity())
    throw Error("internal: K/V rows " + std::to_string(first) + "+" + std::to_string(count) +
                " written past the cache's " + std::to_string(s.capacity()) + " positions");
  const std::lock_guard lock(forward_mutex_);
  device_.make_current();
  const T* imported = static_cast<const T*>(in);
  const std::size_t bytes = static_cast<std::size_t>(count * KV) * sizeof(T);
  // Export layout [kv_head, position, d] to cache layout [position, kv_head, d], straight into
  // the pinned buffer (the one copy the host makes).
  T* rows = static_cast<T*>(import_staging_.next(bytes));
  for (int g = 0; g < plan_.kv_heads; ++g)
    for (std::int64_t t = 0; t < count; ++t)
      std::copy_n(imported + (std::int64_t{g} * count + t) * d, d, rows + (t * plan_.kv_heads + g) * d);
  T* device_rows = static_cast<T*>(import_staging_.device_rows(bytes));
  device_.upload(device_rows, rows, bytes);
  const bool keys = side == KvSide::Keys;
  cuda::write_kv_rows<T, T>(keys ? device_rows : nullptr, keys ? nullptr : device_rows, count, first, KV,
                            kv_view(s, layer), device_.stream());
  import_staging_.queued(device_.stream());
}

// A sequence of a tensor-parallel backend: each rank's, holding its heads' state.
struct CudaParallelSequence final : SequenceState {
  std::vector<std::unique_ptr<SequenceState>> ranks;
};

// The model split over tensor-parallel ranks, one CudaBackend per rank on its GPU and a thread
// per rank for each pass (NCCL and the loopback both need every rank inside a collective at
// once). A session's state is exported in the single-rank layout: each rank's heads at their
// place, a replicated K/V head from the first rank holding it, and imported the same way.
template <typename T>
class CudaParallelBackend final : public ComputeBackend {
 public:
  CudaParallelBackend(const ModelConfig& c, const WeightMap& map, const ModelOptions& options, CudaRankLink link,
                      const std::vector<int>& devices, const std::function<void(std::uint64_t)>& bytes_loaded)
      : config_(c), plans_(tensor_parallel_layout(c, options.tensor_parallel, options.moe_parallel)) {
    if (devices.size() != plans_.size())
      throw Error("internal: " + std::to_string(plans_.size()) + " ranks on " + std::to_string(devices.size()) +
                  " devices");
    // The loopback's collectives wait on the host: they cannot be captured in a decode graph.
    const bool graphs = options.cuda_graphs && link == CudaRankLink::Nccl;
    // The ranks load at once, each reading only its parts of the weights.
    ranks_.resize(plans_.size());
    LoadTally tally(bytes_loaded);
    tally.on_every_rank(plans_.size(), [&](std::size_t r) {
      ranks_[r] = std::make_unique<CudaBackend<T>>(c, devices[r], map, options, graphs, ExpertLoad{}, tally, nullptr,
                                                   plans_, static_cast<int>(r));
    });
    std::vector<void*> streams;
    for (const auto& rank : ranks_) streams.push_back(rank->stream());
    if (link == CudaRankLink::Nccl) {
      nccl_ = make_nccl_communicators(devices, streams);
      for (std::size_t r = 0; r < ranks_.size(); ++r) ranks_[r]->connect(*nccl_[r]);
      on_ranks([&](std::size_t r) { ranks_[r]->warm_up_collectives(); });
    } else {
      loopback_ = make_device_loopback_communicators(devices.front(), streams);
      for (std::size_t r = 0; r < ranks_.size(); ++r) ranks_[r]->connect(*loopback_[r]);
    }
  }

  BackendKind kind() const override { return BackendKind::Cuda; }
  std::int64_t default_chunk_tokens() const override { return ranks_.front()->default_chunk_tokens(); }
  std::uint64_t weight_bytes() const override {
    std::uint64_t bytes = 0;
    for (const auto& rank : ranks_) bytes += rank->weight_bytes();
    return bytes;
  }
  const CollectiveCounts& collective_counts() const { return *ranks_.front()->collective_counts(); }

  std::unique_ptr<SequenceState> new_sequence() const override {
    auto s = std::make_unique<CudaParallelSequence>();
    for (const auto& rank : ranks_) s->ranks.push_back(rank->new_sequence());
    return s;
  }

  void forward(SequenceState& state, const ForwardRequest& req) override {
    auto& s = static_cast<CudaParallelSequence&>(state);
    const std::lock_guard lock(mutex_);  // every rank runs the passes in the same order
    on_ranks([&](std::size_t r) { ranks_[r]->forward_rank(*s.ranks[r], req, r == 0); });
  }

  // Every rank holds the gathered logits: rank 0's are read, and drawn from unless greedy.
  void read_logits(const SequenceState& state, float* out) const override {
    ranks_.front()->read_logits(*part(state, 0), out);
  }
  TokenId sample(const SequenceState& state, const SamplingParams& params, std::mt19937_64& rng) override {
    if (!is_greedy(params)) return ranks_.front()->sample(*part(state, 0), params, rng);
    const std::lock_guard lock(mutex_);
    std::vector<TokenId> chosen(ranks_.size());
    on_ranks([&](std::size_t r) { chosen[r] = ranks_[r]->greedy_over_ranks(*part(state, r)); });
    return chosen.front();
  }

  void read_lightning_state(const SequenceState& state, int layer, float* out) const override {
    for (std::size_t r = 0; r < ranks_.size(); ++r)
      ranks_[r]->read_lightning_state(*part(state, r), layer, out + head_offset(plans_[r].first_head));
  }
  void write_lightning_state(SequenceState& state, int layer, const float* in) const override {
    for (std::size_t r = 0; r < ranks_.size(); ++r)
      ranks_[r]->write_lightning_state(*part(state, r), layer, in + head_offset(plans_[r].first_head));
  }
  StateDType kv_dtype() const override { return ranks_.front()->kv_dtype(); }
  // The export layout [kv_head, count, d] holds a rank's K/V heads as one block.
  void read_kv(const SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
               void* out) const override {
    for (std::size_t r = 0; r < ranks_.size(); ++r)
      if (r == 0 || plans_[r].first_kv_head != plans_[r - 1].first_kv_head)
        ranks_[r]->read_kv(*part(state, r), layer, side, first, count,
                           static_cast<T*>(out) + kv_offset(plans_[r].first_kv_head, count));
  }
  void resize_kv(SequenceState& state, std::int64_t positions) const override {
    for (std::size_t r = 0; r < ranks_.size(); ++r) ranks_[r]->resize_kv(*part(state, r), positions);
  }
  void write_kv(SequenceState& state, int layer, KvSide side, std::int64_t first, std::int64_t count,
                const void* in) const override {
    for (std::size_t r = 0; r < ranks_.size(); ++r)
      ranks_[r]->write_kv(*part(state, r), layer, side, first, count,
                          static_cast<const T*>(in) + kv_offset(plans_[r].first_kv_head, count));
  }

 private:
  static SequenceState* part(const SequenceState& state, std::size_t r) {
    return static_cast<const CudaParallelSequence&>(state).ranks[r].get();
  }
  std::int64_t head_offset(int head) const { return std::int64_t{head} * config_.head_dim * config_.head_dim; }
  std::int64_t kv_offset(int kv_head, std::int64_t count) const {
    return std::int64_t{kv_head} * count * config_.head_dim;
  }
  // A rank that fails releases the loopback's others; NCCL has no such release (see
  // docs/tensor-parallel.md).
  void on_ranks(const std::function<void(std::size_t)>& fn) const {
    on_every_rank(
        ranks_.size(), fn, [&](std::size_t r) { if (!loopback_.empty()) loopback_[r]->abort(); },
        [&] { if (!loopback_.empty()) loopback_.front()->recover(); });
  }

  const ModelConfig config_;
  const std::vector<RankLayout> plans_;
  // The ranks go first, before the communicators they use.
  std::vector<std::unique_ptr<Communicator>> nccl_;
  std::vector<std::unique_ptr<LoopbackCommunicator>> loopback_;
  std::vector<std::unique_ptr<CudaBackend<T>>> ranks_;
  std::mutex mutex_;
};

}  // namespace

std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorString(status) + ")";
  }
  if (count == 0) return "no CUDA device found";
  return {};
}

std::vector<GpuDevice> cuda_devices() {
  std::vector<GpuDevice> devices;
  int count = 0;
  int current = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || cudaGetDevice(&current) != cudaSuccess) {
    (void)cudaGetLastError();
    return devices;
  }
  for (int index = 0; index < count; ++index) {
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, index) != cudaSuccess) {
      (void)cudaGetLastError();
      continue;
    }
    GpuDevice device{index, properties.name, properties.totalGlobalMem, std::nullopt};
    std::size_t free_bytes = 0, total_bytes = 0;
    if (index == current) {
      if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
        device.free_bytes = free_bytes;
      else
        (void)cudaGetLastError();
    }
    devices.push_back(std::move(device));
  }
  return devices;
}

// The GPUs of a tensor-parallel run over NCCL: --devices (each GPU once), else the first N.
static std::vector<int> rank_devices(const ModelOptions& options) {
  const int ranks = options.tensor_parallel;
  const auto gpus = static_cast<int>(cuda_devices().size());
  std::vector<int> devices = options.devices;
  if (devices.empty()) {
    if (ranks > gpus)
      throw Error("tensor parallel " + std::to_string(ranks) + " needs " + std::to_string(ranks) +
                  " GPUs, and this machine has " + std::to_string(gpus));
    for (int r = 0; r < ranks; ++r) devices.push_back(r);
  }
  if (static_cast<int>(devices.size()) != ranks)
    throw Error("tensor parallel " + std::to_string(ranks) + " runs one rank per GPU, but --devices names " +
                std::to_string(devices.size()));
  for (int d : devices)
    if (d < 0 || d >= gpus)
      throw Error("there is no GPU " + std::to_string(d) + " (this machine has " + std::to_string(gpus) + ")");
  return devices;
}

std::unique_ptr<ComputeBackend> make_cuda_parallel_backend(const ModelConfig& config, const WeightMap& weights,
                                                           const ModelOptions& options, CudaRankLink link,
                                                           const std::function<void(std::uint64_t)>& bytes_loaded) {
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) throw Error("the cuda backend is not available: " + reason);
  tensor_parallel_layout(config, options.tensor_parallel, options.moe_parallel);  // a clear error first
  if (options.experts.pruned())
    throw Error("pruned experts run on one GPU for now (tensor_parallel " + std::to_string(options.tensor_parallel) +
                ")");
  const std::vector<int> devices =
      link == CudaRankLink::Nccl ? rank_devices(options)
                                 : std::vector<int>(static_cast<std::size_t>(options.tensor_parallel),
                                                    single_gpu_device(options));
  if (options.cuda_float32)
    return std::make_unique<CudaParallelBackend<float>>(config, weights, options, link, devices, bytes_loaded);
  return std::make_unique<CudaParallelBackend<bf16>>(config, weights, options, link, devices, bytes_loaded);
}

std::unique_ptr<ComputeBackend> make_cuda_backend(const ModelConfig& config, const WeightMap& weights,
                                                  const ModelOptions& options, const ExpertLoad& experts,
                                                  const std::function<void(std::uint64_t)>& bytes_loaded,
                                                  ExpertLoadResult* expert_result) {
  if (options.tensor_parallel != 1) {
    if (experts.dtype != ExpertDType::BF16)
      throw Error(std::string("tensor parallel on the cuda backend takes the experts as they are in this version, not ") +
                  expert_dtype_name(experts.dtype) + " (the cpu backend runs both)");
    return make_cuda_parallel_backend(config, weights, options, CudaRankLink::Nccl, bytes_loaded);
  }
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) throw Error("the cuda backend is not available: " + reason);
  const int device = single_gpu_device(options);
  LoadTally tally(bytes_loaded);
  if (options.cuda_float32) {
    // float32 activations over quantized experts run a GEMM per expert sized on the host: a
    // decode step waits for the device and is not captured.
    const bool graphs = options.cuda_graphs && experts.dtype == ExpertDType::BF16;
    return std::make_unique<CudaBackend<float>>(config, device, weights, options, graphs, experts, tally, expert_result);
  }
  return std::make_unique<CudaBackend<bf16>>(config, device, weights, options, options.cuda_graphs, experts, tally,
                                             expert_result);
}

std::optional<CollectiveCounts> cuda_collective_counts(const ComputeBackend& backend) {
  if (const auto* parallel = dynamic_cast<const CudaParallelBackend<bf16>*>(&backend))
    return parallel->collective_counts();
  if (const auto* parallel = dynamic_cast<const CudaParallelBackend<float>*>(&backend))
    return parallel->collective_counts();
  return std::nullopt;
}

std::uint64_t cuda_decode_graph_captures(const SequenceState& sequence) {
  // A tensor-parallel sequence's: rank 0's (every rank captures at the same steps).
  if (const auto* parallel = dynamic_cast<const CudaParallelSequence*>(&sequence))
    return cuda_decode_graph_captures(*parallel->ranks.front());
  return static_cast<const CudaSequence&>(sequence).decode_graph.captures();
}

}  // namespace lightdesk
