// The public API (lightdesk/engine.h) over the private config, checkpoint and backends.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <thread>

#include "backend.h"
#include "lightdesk/bf16.h"
#include "cuda_plugin.h"
#include "expert_offload.h"
#include "lightdesk/engine.h"
#include "lightdesk/input_files.h"
#include "model_config.h"
#include "model_weights.h"
#include "lightdesk/safetensors.h"

namespace lightdesk {

BackendKind parse_backend_kind(const std::string& name) {
  if (name == "auto") return BackendKind::Auto;
  if (name == "cpu") return BackendKind::Cpu;
  if (name == "cuda") return BackendKind::Cuda;
  throw Error("unknown backend \"" + name + "\" (choose cpu, cuda or auto)");
}

const char* backend_name(BackendKind kind) {
  switch (kind) {
    case BackendKind::Auto: return "auto";
    case BackendKind::Cpu: return "cpu";
    case BackendKind::Cuda: return "cuda";
  }
  return "?";
}

std::vector<BackendKind> available_backends() {
  if (cuda_plugin::unavailable_reason().empty()) return {BackendKind::Cpu, BackendKind::Cuda};
  return {BackendKind::Cpu};
}

std::vector<GpuDevice> gpu_devices() { return cuda_plugin::devices(); }

std::vector<int> parse_devices(const std::string& text) {
  std::vector<int> devices;
  if (text == "all") {
    for (const GpuDevice& device : gpu_devices()) devices.push_back(device.index);
    if (devices.empty()) throw Error("no GPU for devices \"all\": " + cuda_plugin::unavailable_reason());
    return devices;
  }
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    if (item.empty() || item.size() > 4 || item.find_first_not_of("0123456789") != std::string::npos)
      throw Error("bad device list \"" + text + "\": expected GPU indices such as 0,1 or \"all\"");
    const int index = std::stoi(item);
    if (std::find(devices.begin(), devices.end(), index) != devices.end())
      throw Error("bad device list \"" + text + "\": GPU " + item + " is named twice");
    devices.push_back(index);
    start = end + 1;
  }
  return devices;
}

int single_gpu_device(const ModelOptions& options) {
  // Several GPUs are the ranks of a tensor-parallel model: its single-device parts (the vision
  // tower) run on rank 0's.
  if (options.devices.size() > 1 && static_cast<int>(options.devices.size()) != options.tensor_parallel)
    throw Error(std::to_string(options.devices.size()) +
                " GPUs named for one rank: name one device, or as many as --tensor-parallel ranks");
  const int index = options.devices.empty() ? 0 : options.devices.front();
  const std::vector<GpuDevice> devices = gpu_devices();
  if (index < 0 || index >= static_cast<int>(devices.size()))
    throw Error("there is no GPU " + std::to_string(index) + " (" +
                (devices.empty() ? cuda_plugin::unavailable_reason()
                                 : "this machine has GPUs 0 to " + std::to_string(devices.size() - 1)) +
                ")");
  return index;
}

std::vector<OpsBackend> ops_backends() {
  std::vector<OpsBackend> backends{{"cpu", [] { return std::string(); }, [] { return make_cpu_ops(0); }}};
  for (OpsBackend& cuda : cuda_plugin::ops_backends()) backends.push_back(std::move(cuda));
  return backends;
}

int ModelShape::num_lightning_layers() const {
  return static_cast<int>(std::count(layer_kinds.begin(), layer_kinds.end(), LayerKind::Lightning));
}
int ModelShape::num_softmax_layers() const { return num_layers - num_lightning_layers(); }
std::string ModelInfo::state_identity() const {
  return expert_format == ExpertFormat::Bf16 ? fingerprint : fingerprint + "/" + expert_format_name(expert_format);
}

std::uint64_t ModelInfo::session_bytes(std::int64_t tokens) const {
  return lightning_state_bytes + static_cast<std::uint64_t>(std::max<std::int64_t>(tokens, 0)) * kv_bytes_per_token;
}

namespace {

template <typename T>
std::span<const T> as_elements(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const T*>(bytes.data()), bytes.size() / sizeof(T)};
}

// Non-finite values in a state mean damage: an all-ones exponent, in either type.
// An exponent of all ones is an infinity or a NaN. Checked on the bits, over the whole part
// without an early exit, so that the loop vectorizes: a restore checks every byte it reads.
bool all_finite(const StatePart& part) {
  unsigned non_finite = 0;
  if (part.dtype == StateDType::F32) {
    for (std::uint32_t bits : as_elements<std::uint32_t>(part.data)) non_finite |= (bits & 0x7F800000u) == 0x7F800000u;
  } else {
    for (std::uint16_t bits : as_elements<std::uint16_t>(part.data)) non_finite |= (bits & 0x7F80u) == 0x7F80u;
  }
  return non_finite == 0;
}

// FNV-1a, twice with different offsets for 128 bits: a fingerprint, not a security digest.
class Fingerprint {
 public:
  void add(std::string_view bytes) {
    for (unsigned char c : bytes) {
      a_ = (a_ ^ c) * 0x100000001b3ULL;
      b_ = (b_ ^ c) * 0x100000001b3ULL;
    }
  }
  std::string hex() const {
    char buf[33];
    std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(a_),
                  static_cast<unsigned long long>(b_));
    return buf;
  }

 private:
  std::uint64_t a_ = 0xcbf29ce484222325ULL;
  std::uint64_t b_ = 0x84222325cbf29ce4ULL;
};

// Bytes per weight and per cached K/V value: the CUDA backend keeps both in bf16 unless
// cuda_float32; the CPU backend in float32.
std::uint64_t backend_value_bytes(BackendKind backend, const ModelOptions& options) {
  return backend == BackendKind::Cuda && !options.cuda_float32 ? 2 : 4;
}

// What the config and the weights' count and dtypes say; the caller adds the fingerprint.
ModelInfo describe(const std::filesystem::path& directory, const ModelConfig& c, std::uint64_t parameter_count,
                   std::map<std::string, std::uint64_t> bytes_per_dtype, BackendKind backend,
                   const ModelOptions& options) {
  ModelInfo info;
  static_cast<ModelShape&>(info) = c;
  info.directory = directory;
  info.backend = backend;
  info.parameter_count = parameter_count;
  info.bytes_per_dtype = std::move(bytes_per_dtype);
  info.expert_format = options.expert_dtype;
  info.weight_bytes = parameter_count * backend_value_bytes(backend, options);
  if (options.expert_dtype != ExpertFormat::Bf16) {
    // The experts in their quantized layout instead of the backend's values.
    const auto H = std::int64_t{c.hidden_size}, I = std::int64_t{c.expert_width};
    const std::uint64_t matrices = std::uint64_t(c.num_layers) * std::uint64_t(c.num_experts);
    const ExpertDType dtype = expert_dtype(options.expert_dtype);
    info.weight_bytes -= matrices * 3 * std::uint64_t(H * I) * backend_value_bytes(backend, options);
    info.weight_bytes += matrices * std::uint64_t(2 * expert_matrix_bytes(dtype, I, H) + expert_matrix_bytes(dtype, H, I));
  }
  const std::uint64_t d = static_cast<std::uint64_t>(c.head_dim);
  info.lightning_state_bytes =
      static_cast<std::uint64_t>(info.num_lightning_layers()) * static_cast<std::uint64_t>(c.num_heads) * d * d * 4;
  info.kv_bytes_per_token =
      static_cast<std::uint64_t>(info.num_softmax_layers()) * 2 * static_cast<std::uint64_t>(c.num_kv_heads) * d *
      backend_value_bytes(backend, options);
  return info;
}

ModelInfo describe_checkpoint(const std::filesystem::path& directory, const ModelConfig& c,
                              const Checkpoint& checkpoint, const WeightMap& map, BackendKind backend,
                              const ModelOptions& options) {
  ModelInfo info = describe(directory, c, map.parameter_count(), map.bytes_per_dtype(), backend, options);
  for (const auto& [name, t] : checkpoint.tensors())
    if (name.compare(0, c.weight_prefix.size(), c.weight_prefix) != 0) info.other_weight_bytes += t->bytes;
  Fingerprint fp;
  fp.add(read_regular_file(directory / "config.json", kMaxConfigFileBytes));
  for (const auto& file : checkpoint.files()) {
    fp.add(file->header_text());
    fp.add(std::to_string(file->file_size()));
  }
  info.fingerprint = fp.hex();
  return info;
}

// A checkpoint known from its index alone (see Model::inspect).
ModelInfo describe_index(const std::filesystem::path& directory, const ModelConfig& c, const CheckpointIndex& index,
                         BackendKind backend, const ModelOptions& options) {
  const std::string where = (directory / "model.safetensors.index.json").string();
  const auto& names = index.weight_map;
  const std::string& prefix = c.weight_prefix;
  const bool fused = names.count(prefix + "model.layers.0.mlp.experts.gate_up_proj") > 0;
  const bool own_lm_head = names.count(prefix + "lm_head.weight") > 0 || !c.tie_word_embeddings;
  std::set<std::string> expected_names;
  std::uint64_t parameters = 0, router_parameters = 0;
  for (const ExpectedTensor& t : expected_tensors(c, fused, own_lm_head)) {
    if (!names.count(prefix + t.name)) throw Error(where + ": missing tensor \"" + prefix + t.name + "\"");
    expected_names.insert(prefix + t.name);
    std::uint64_t numel = 1;
    for (std::int64_t extent : t.shape) numel *= static_cast<std::uint64_t>(extent);
    parameters += numel;
    if (t.parts.size() == 1 && t.parts[0].key.ends_with(".router")) router_parameters += numel;
  }
  for (const auto& [name, file] : names)
    if (name.compare(0, prefix.size(), prefix) == 0 && !expected_names.count(name) && !is_model_buffer(name))
      throw Error(where + ": unexpected tensor \"" + name + "\" (does config.json match this checkpoint?)");

  static const std::map<std::string, std::pair<std::string, std::uint64_t>> kDtypes = {
      {"bfloat16", {"BF16", 2}}, {"float16", {"F16", 2}}, {"float32", {"F32", 4}}};
  const auto dtype = kDtypes.find(c.torch_dtype.empty() ? "bfloat16" : c.torch_dtype);
  if (dtype == kDtypes.end()) throw Error(where + ": cannot size tensors of torch_dtype \"" + c.torch_dtype + "\"");
  const auto& [dtype_name, size] = dtype->second;
  std::map<std::string, std::uint64_t> bytes;
  bytes[dtype_name] = parameters * size;
  const std::uint64_t total = index.total_size.value_or(parameters * size);
  // The released checkpoints keep the routers in F32 (their total size exceeds the bf16 sum by
  // exactly that): where the total leaves room for it, count them so.
  if (size < 4 && total >= parameters * size + router_parameters * (4 - size)) {
    bytes[dtype_name] -= router_parameters * size;
    bytes["F32"] += router_parameters * 4;
  }
  std::uint64_t language_model = 0;
  for (const auto& [name, b] : bytes) language_model += b;
  if (total < language_model)
    throw Error(where + ": total_size " + std::to_string(total) + " is less than the " +
                std::to_string(language_model) + " bytes the config's tensors need");
  ModelInfo info = describe(directory, c, parameters, std::move(bytes), backend, options);
  info.other_weight_bytes = total - language_model;
  info.weights_present = false;
  return info;
}

}  // namespace

BackendKind resolve_backend(BackendKind requested) {
  const auto available = available_backends();
  if (requested == BackendKind::Auto)
    return std::find(available.begin(), available.end(), BackendKind::Cuda) != available.end() ? BackendKind::Cuda
                                                                                              : BackendKind::Cpu;
  if (requested == BackendKind::Cuda) {
    const std::string reason = cuda_plugin::unavailable_reason();
    if (!reason.empty()) throw Error("the cuda backend is not available: " + reason);
  }
  if (std::find(available.begin(), available.end(), requested) == available.end())
    throw Error(std::string("the ") + backend_name(requested) +
                " backend is not available (not built into this program, or no device found)");
  return requested;
}

std::string cuda_backend_unavailable_reason() {
  try {
    resolve_backend(BackendKind::Cuda);
    return {};
  } catch (const Error& e) {
    return e.what();
  }
}

namespace {

// Bytes of the experts the checkpoint holds (synthetic: the float32 values made).
std::uint64_t expert_source_bytes(const ModelConfig& c, const WeightMap& map) {
  std::uint64_t bytes = 0;
  for (int l = 0; l < c.num_layers; ++l)
    for (int e = 0; e < c.num_experts; ++e) {
      const ExpertWeightNames names = expert_weight_names(l, e);
      for (const std::string* name : {&names.w1, &names.w3, &names.w2}) {
        const TensorSlice& s = map.at(*name);
        bytes += static_cast<std::uint64_t>(s.numel) * (s.view ? dtype_size(s.view->dtype) : sizeof(float));
      }
    }
  return bytes;
}

// The bytes the quantized cache will give this load, when its file looks whole and made for it.
std::optional<std::uint64_t> usable_expert_cache_bytes(const ModelConfig& c, const ExpertLoad& load) {
  if (load.dtype == ExpertDType::BF16 || load.cache_directory.empty() || load.fingerprint.empty()) return std::nullopt;
  const ExpertCacheKey key = expert_cache_key(c, load);
  const std::filesystem::path file = expert_cache_file(load.cache_directory, key);
  std::error_code error;
  if (!std::filesystem::exists(file, error)) return std::nullopt;
  try {
    return ExpertCacheReader(file, key).data_bytes();
  } catch (const ExpertCacheRefused&) {
    return std::nullopt;
  }
}

}  // namespace

struct Model::Impl {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;  // keeps mapped weights alive for the CPU backend
  std::unique_ptr<ComputeBackend> backend;
  ModelInfo info;
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;
const ModelInfo& Model::info() const { return impl_->info; }

// Synthetic weights: the config and the seed identify them.
ModelInfo describe_synthetic(const std::filesystem::path& directory, const ModelConfig& c, const WeightMap& map,
                             BackendKind backend, const ModelOptions& options) {
  ModelInfo info = describe(directory, c, map.parameter_count(), {}, backend, options);
  Fingerprint fp;
  fp.add(read_regular_file(directory / "config.json", kMaxConfigFileBytes));
  fp.add("synthetic weights, seed " + std::to_string(*options.synthetic_weights));
  info.fingerprint = fp.hex();
  return info;
}

ModelInfo Model::inspect(const std::filesystem::path& directory, const ModelOptions& options) {
  const ModelConfig config = load_model_config(directory, options.rope_full_head);
  const BackendKind backend = resolve_backend(options.backend);
  if (options.synthetic_weights)
    return describe_synthetic(directory, config, WeightMap::synthetic(config, *options.synthetic_weights), backend,
                              options);
  const auto index_path = directory / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    const CheckpointIndex index = read_checkpoint_index(index_path);
    if (!index.shards_present(directory)) return describe_index(directory, config, index, backend, options);
  }
  const Checkpoint checkpoint(directory);
  const WeightMap map(config, checkpoint);
  return describe_checkpoint(directory, config, checkpoint, map, backend, options);
}

std::string ExpertSelection::describe() const {
  if (!pruned()) return "all experts";
  return std::to_string(experts_kept()) + " experts per layer of pattern \"" + pattern + "\"";
}

namespace {

// What a load of `options` loads: for the first layer's router alone, no experts.
ModelOptions loaded_options(const ModelOptions& options) {
  ModelOptions load = options;
  if (options.purpose == ModelPurpose::FirstLayerRouter) {
    load.expert_dtype = ExpertFormat::Bf16;
    load.expert_cache.clear();
    load.experts = {};
    load.host_expert_store = false;
    load.cached_experts_per_layer = 0;
  }
  return load;
}

// The bytes a ModelPurpose::FirstLayerRouter load reads: the embedding and the first layer's
// tensors other than its experts, by the walk the backends load them with.
std::uint64_t first_layer_source_bytes(const ModelConfig& c, const WeightMap& map) {
  std::uint64_t bytes = map.at("embed").source_bytes();
  LayerTensors<int> layer;
  load_layer_tensors(c, 0, layer, [&](const std::string& name, WeightPrecision) {
    bytes += map.at(name).source_bytes();
    return 0;
  });
  return bytes;
}

}  // namespace

std::unique_ptr<Model> Model::open(const std::filesystem::path& directory, const ModelOptions& requested,
                                   const std::function<bool(std::uint64_t, std::uint64_t)>& progress) {
  const ModelOptions options = loaded_options(requested);
  const bool router_only = options.purpose == ModelPurpose::FirstLayerRouter;
  auto impl = std::make_unique<Impl>();
  impl->config = load_model_config(directory, options.rope_full_head);
  check_expert_selection(impl->config, options.experts);
  check_expert_offload(impl->config, options);
  const BackendKind kind = resolve_backend(options.backend);
  if (options.host_expert_store && !engine_capabilities(kind).host_expert_store)
    throw Error(std::string("the ") + backend_name(kind) +
                " backend has no host expert store yet (exact mode runs on the CPU backend)");
  std::optional<WeightMap> map;
  if (options.synthetic_weights) {
    map = WeightMap::synthetic(impl->config, *options.synthetic_weights);
    impl->info = describe_synthetic(directory, impl->config, *map, kind, options);
  } else {
    impl->checkpoint = std::make_unique<Checkpoint>(directory);
    map.emplace(impl->config, *impl->checkpoint);
    impl->info = describe_checkpoint(directory, impl->config, *impl->checkpoint, *map, kind, options);
  }
  const ExpertLoad experts{expert_dtype(options.expert_dtype), options.expert_cache, impl->info.fingerprint,
                           options.threads};
  // Progress in bytes read from the checkpoint (synthetic weights: float32 values made), the
  // experts' from the quantized cache where it will serve.
  std::uint64_t total = options.synthetic_weights ? map->parameter_count() * sizeof(float) : 0;
  for (const auto& [dtype, bytes] : impl->info.bytes_per_dtype) total += bytes;
  if (const std::optional<std::uint64_t> cached = usable_expert_cache_bytes(impl->config, experts))
    total = total - expert_source_bytes(impl->config, *map) + *cached;
  if (router_only) total = first_layer_source_bytes(impl->config, *map);
  auto on_bytes = [&](std::uint64_t loaded) {
    if (progress && !progress(loaded, std::max(loaded, total)))
      throw Cancelled("loading " + directory.string() + " was cancelled");
  };
  ExpertLoadResult expert_result;
  const ModelConfig& loaded = router_only ? first_layer_config(impl->config) : impl->config;
  impl->backend = kind == BackendKind::Cuda
                      ? cuda_plugin::make_backend(loaded, *map, options, experts, on_bytes, &expert_result)
                      : make_cpu_backend(loaded, *map, options, experts, on_bytes, &expert_result);
  impl->info.weight_bytes = impl->backend->weight_bytes();
  impl->info.expert_cache_bytes_read = expert_result.cache_bytes_read;
  impl->info.expert_cache_file = expert_result.cache_file;
  impl->info.experts = options.experts;
  impl->info.purpose = options.purpose;
  if (const ExpertOffload* offload = impl->backend->expert_offload()) {
    impl->info.cached_experts_per_layer = offload->cache().slots();
    impl->info.expert_store_bytes = offload->store().bytes();
  }
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

void Model::seed_expert_cache(const ExpertSelection& experts) {
  ExpertOffload* offload = impl_->backend->expert_offload();
  if (!offload) throw Error("the model has no host expert store to seed (ModelOptions::host_expert_store)");
  offload->seed(experts);
}

namespace {

// Adds to `tally` the router probability mass (softmax over every expert) of each row that falls
// on experts not resident(e).
template <typename Resident>
void tally_lost_mass(std::span<const float> logits, std::int64_t rows, Resident resident, RoutingTally& tally) {
  const std::int64_t E = static_cast<std::int64_t>(logits.size()) / std::max<std::int64_t>(rows, 1);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::span<const float> row = logits.subspan(static_cast<std::size_t>(r * E), static_cast<std::size_t>(E));
    const float max_logit = *std::max_element(row.begin(), row.end());
    double all = 0.0, lost = 0.0;
    for (std::int64_t e = 0; e < E; ++e) {
      const double p = std::exp(double{row[static_cast<std::size_t>(e)]} - max_logit);
      all += p;
      if (!resident(static_cast<int>(e))) lost += p;
    }
    tally.lost_mass += lost / all;
  }
  tally.token_layers += rows;
}

// Throws Error naming the first id outside the vocabulary.
void check_token_ids(std::span<const TokenId> ids, int vocab_size) {
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_size)
      throw Error("token id " + std::to_string(ids[i]) + " (at index " + std::to_string(i) +
                  ") is outside the vocabulary (0.." + std::to_string(vocab_size - 1) + ")");
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Session::Impl {
  const Model* model = nullptr;
  ComputeBackend* backend = nullptr;
  const ModelInfo* info = nullptr;
  std::unique_ptr<SequenceState> sequence;
  std::vector<TokenId> tokens;
  // Rows of logits the last feed produced: 0 before any, 1, or every token's (all_logits).
  std::int64_t logits_rows = 0;
  // Their host copy: an all_logits feed fills it; otherwise the one row stays on the backend
  // (sampling reads it there) and logits() copies it here when asked.
  mutable std::vector<float> logits;
  std::mt19937_64 rng{0};
  RoutingTally routing;

  void check_tokens(std::span<const TokenId> ids) const { check_token_ids(ids, info->vocab_size); }
};

std::unique_ptr<Session> Model::create_session() const {
  if (impl_->info.purpose == ModelPurpose::FirstLayerRouter)
    throw Error("this model was opened for its first layer's router logits only: it has no sessions");
  auto impl = std::make_unique<Session::Impl>();
  impl->model = this;
  impl->backend = impl_->backend.get();
  impl->info = &impl_->info;
  impl->sequence = impl_->backend->new_sequence();
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;
const Model& Session::model() const { return *impl_->model; }
std::int64_t Session::position() const { return static_cast<std::int64_t>(impl_->tokens.size()); }
const std::vector<TokenId>& Session::tokens() const { return impl_->tokens; }
std::span<const float> Session::logits() const {
  const Impl& s = *impl_;
  if (s.logits.empty() && s.logits_rows > 0) {
    s.logits.resize(static_cast<std::size_t>(s.info->vocab_size));
    s.backend->read_logits(*s.sequence, s.logits.data());
  }
  return s.logits;
}
std::int64_t Session::logits_rows() const { return impl_->logits_rows; }
void Session::set_seed(std::uint64_t seed) { impl_->rng.seed(seed); }
RoutingTally Session::routing_tally() const { return impl_->routing; }

std::vector<float> Model::first_layer_router_logits(std::span<const TokenId> tokens) const {
  check_token_ids(tokens, impl_->info.vocab_size);
  const auto total = static_cast<std::int64_t>(tokens.size());
  if (total > impl_->info.max_context)
    throw Error(std::to_string(total) + " tokens exceed the model's maximum context of " +
                std::to_string(impl_->info.max_context));
  std::vector<float> logits;
  logits.reserve(static_cast<std::size_t>(total * impl_->info.num_experts));
  const std::function<void(int, std::span<const float>, std::int64_t)> collect =
      [&logits](int layer, std::span<const float> rows, std::int64_t) {
        if (layer == 0) logits.insert(logits.end(), rows.begin(), rows.end());
      };
  ComputeBackend& backend = *impl_->backend;
  const std::unique_ptr<SequenceState> sequence = backend.new_sequence();  // left partial, then dropped
  const std::int64_t chunk = backend.default_chunk_tokens();
  for (std::int64_t done = 0; done < total; done += chunk) {
    ForwardRequest request;
    request.tokens = tokens.subspan(static_cast<std::size_t>(done),
                                    static_cast<std::size_t>(std::min(chunk, total - done)));
    request.first_position = done;
    request.router_logits = &collect;
    request.last_router_layer = 0;
    backend.forward(*sequence, request);
  }
  return logits;
}

void Session::reset() {
  impl_->sequence = impl_->backend->new_sequence();
  impl_->tokens.clear();
  impl_->logits.clear();
  impl_->logits_rows = 0;
}

void Session::feed(std::span<const TokenId> tokens, const FeedOptions& options) {
  Impl& s = *impl_;
  s.check_tokens(tokens);
  if (options.chunk_tokens < 0) throw Error("chunk_tokens must not be negative");
  // Every row's logits, when asked for, are rows × vocabulary floats on the backend per chunk
  // (512 rows of a 200K vocabulary: 0.4 GB): such feeds keep to small chunks unless told.
  constexpr std::int64_t kAllLogitsChunkTokens = 512;
  const std::int64_t chunk_tokens =
      options.chunk_tokens > 0 ? options.chunk_tokens
      : options.all_logits    ? std::min(kAllLogitsChunkTokens, s.backend->default_chunk_tokens())
                              : s.backend->default_chunk_tokens();
  const auto total = static_cast<std::int64_t>(tokens.size());
  if (total > s.info->max_context - position())
    throw Error("context full: " + std::to_string(position()) + " tokens and " + std::to_string(total) +
                " more exceed the model's maximum context of " + std::to_string(s.info->max_context) + " tokens");
  if (!options.embedding_overrides.empty() && options.embedding_overrides.size() != tokens.size())
    throw Error("embedding_overrides has " + std::to_string(options.embedding_overrides.size()) +
                " entries for " + std::to_string(total) + " tokens");
  if (total == 0) return;
  const std::int64_t V = s.info->vocab_size;
  const auto start = std::chrono::steady_clock::now();
  s.logits.clear();
  s.logits_rows = 0;
  // All rows go straight where logits() reads them; those a failed or cancelled feed did not
  // reach are dropped.
  if (options.all_logits) s.logits.resize(static_cast<std::size_t>(total * V));
  // A pruned model tallies the mass its routing lost, one in exact mode its misses (the cache
  // as the layer's step found it: the router's logits come right after the layer's experts);
  // the caller's statistics come too.
  const ExpertSelection& experts = s.info->experts;
  const ExpertOffload* offload = s.backend->expert_offload();
  std::function<void(int, std::span<const float>, std::int64_t)> router_logits;
  if (experts.pruned() || offload || options.router_logits)
    router_logits = [&](int layer, std::span<const float> logits, std::int64_t rows) {
      if (experts.pruned())
        tally_lost_mass(logits, rows, [&](int e) { return expert_kept(experts, layer, e); }, s.routing);
      if (offload)
        tally_lost_mass(logits, rows, [&](int e) { return offload->cache().resident_before_step(layer, e); },
                        s.routing);
      if (options.router_logits) options.router_logits(layer, logits, rows);
    };
  try {
    for (std::int64_t done = 0; done < total;) {
      const std::int64_t n = std::min(chunk_tokens, total - done);
      ForwardRequest request;
      request.tokens = tokens.subspan(static_cast<std::size_t>(done), static_cast<std::size_t>(n));
      request.first_position = position();
      request.all_logits = options.all_logits ? s.logits.data() + done * V : nullptr;
      request.hidden_states = &options.hidden_states;
      request.router_logits = &router_logits;
      if (!options.embedding_overrides.empty())
        request.embedding_overrides =
            options.embedding_overrides.subspan(static_cast<std::size_t>(done), static_cast<std::size_t>(n));
      s.backend->forward(*s.sequence, request);
      s.tokens.insert(s.tokens.end(), request.tokens.begin(), request.tokens.end());
      if (options.all_logits) {
        s.logits_rows += n;
      } else {
        s.logits_rows = 1;
      }
      done += n;
      if (options.progress) {
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (!options.progress(FeedProgress{done, total, seconds}) && done < total)
          throw Cancelled("cancelled after " + std::to_string(done) + " of " + std::to_string(total) + " tokens");
      }
    }
  } catch (...) {
    if (options.all_logits) s.logits.resize(static_cast<std::size_t>(s.logits_rows * V));
    throw;
  }
}

TokenId Session::sample(const SamplingParams& params) {
  Impl& s = *impl_;
  if (s.logits_rows == 0) throw Error("cannot sample: no logits (feed at least one token first)");
  return s.backend->sample(*s.sequence, params, s.rng);
}

const char* state_dtype_name(StateDType dtype) {
  switch (dtype) {
    case StateDType::F32: return "f32";
    case StateDType::BF16: return "bf16";
  }
  return "?";
}

std::optional<StateDType> parse_state_dtype(std::string_view name) {
  for (StateDType dtype : {StateDType::F32, StateDType::BF16})
    if (name == state_dtype_name(dtype)) return dtype;
  return std::nullopt;
}

std::int64_t state_dtype_bytes(StateDType dtype) { return dtype == StateDType::BF16 ? 2 : 4; }

std::int64_t StatePart::numel() const {
  std::int64_t n = 1;
  for (std::int64_t v : shape) n *= v;
  return n;
}

std::span<const float> StatePart::f32() const {
  if (dtype != StateDType::F32) throw Error(std::string("state part of dtype ") + state_dtype_name(dtype) + " read as f32");
  return as_elements<float>(data);
}

std::vector<StatePart> state_layout(const ModelShape& shape, std::int64_t position, std::int64_t kv_chunk_tokens,
                                    std::int64_t kv_first, StateDType kv_dtype) {
  if (kv_chunk_tokens <= 0) throw Error("kv_chunk_tokens must be positive");
  if (kv_first < 0 || kv_first > position)
    throw Error("state export from position " + std::to_string(kv_first) + " of a state of " +
                std::to_string(position) + " positions");
  const std::int64_t d = shape.head_dim;
  std::vector<StatePart> parts;
  for (int l = 0; l < shape.num_layers; ++l) {
    if (shape.layer_kinds[l] != LayerKind::Lightning) continue;
    StatePart part;
    part.kind = StatePartKind::LightningState;
    part.layer = l;
    part.position = position;
    part.shape = {shape.num_heads, d, d};
    parts.push_back(part);
  }
  for (int l = 0; l < shape.num_layers; ++l) {
    if (shape.layer_kinds[l] != LayerKind::Softmax) continue;
    for (std::int64_t first = kv_first; first < position; first += kv_chunk_tokens) {
      const std::int64_t count = std::min(kv_chunk_tokens, position - first);
      for (StatePartKind kind : {StatePartKind::SoftmaxKeys, StatePartKind::SoftmaxValues}) {
        StatePart part;
        part.kind = kind;
        part.layer = l;
        part.position = position;
        part.first_token = first;
        part.token_count = count;
        part.dtype = kv_dtype;
        part.shape = {shape.num_kv_heads, count, d};
        parts.push_back(part);
      }
    }
  }
  return parts;
}

StateDType Session::kv_dtype() const { return impl_->backend->kv_dtype(); }

void Session::export_state(const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens,
                           std::int64_t kv_first) const {
  std::vector<std::byte> buffer;
  for (StatePart part : state_layout(*impl_->info, position(), kv_chunk_tokens, kv_first, kv_dtype())) {
    buffer.resize(static_cast<std::size_t>(part.bytes()));
    if (part.kind == StatePartKind::LightningState)
      impl_->backend->read_lightning_state(*impl_->sequence, part.layer, reinterpret_cast<float*>(buffer.data()));
    else
      impl_->backend->read_kv(*impl_->sequence, part.layer,
                              part.kind == StatePartKind::SoftmaxKeys ? KvSide::Keys : KvSide::Values,
                              part.first_token, part.token_count, buffer.data());
    part.data = buffer;
    sink(part);
  }
}

// ---------------------------------------------------------------------------------------------

struct Session::Import::Impl {
  Session* session = nullptr;
  std::int64_t position = 0;
  std::unique_ptr<SequenceState> sequence;
  std::vector<bool> lightning_done;
  // Per layer and kind (0 keys, 1 values): covered position ranges.
  std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> covered[2];
};

Session::Import::Import(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::Import::Import(Import&&) noexcept = default;
Session::Import::~Import() = default;

Session::Import Session::begin_import(std::int64_t position) {
  if (position < 0) throw Error("state import: negative position");
  if (position > impl_->info->max_context)
    throw Error("state import: a state of " + std::to_string(position) + " tokens exceeds the model's maximum context of " +
                std::to_string(impl_->info->max_context) + " tokens");
  auto impl = std::make_unique<Import::Impl>();
  impl->session = this;
  impl->position = position;
  impl->sequence = impl_->backend->new_sequence();
  impl_->backend->resize_kv(*impl->sequence, position);
  const int layers = impl_->info->num_layers;
  impl->lightning_done.assign(static_cast<std::size_t>(layers), false);
  impl->covered[0].resize(static_cast<std::size_t>(layers));
  impl->covered[1].resize(static_cast<std::size_t>(layers));
  return Import(std::move(impl));
}

void Session::Import::add(const StatePart& part) {
  Impl& im = *impl_;
  const Session::Impl& s = *im.session->impl_;
  const ModelInfo& info = *s.info;
  const std::string where = "state import: part for layer " + std::to_string(part.layer) + ": ";
  // Version 1 parts are version 2 parts of dtype F32.
  if (part.layout_version != StatePart::kLayoutVersion && !(part.layout_version == 1 && part.dtype == StateDType::F32))
    throw Error(where + "layout version " + std::to_string(part.layout_version) + " is not supported (expected " +
                std::to_string(StatePart::kLayoutVersion) + ")");
  if (part.position != im.position)
    throw Error(where + "belongs to position " + std::to_string(part.position) + ", the import is for " +
                std::to_string(im.position));
  if (part.layer < 0 || part.layer >= info.num_layers) throw Error(where + "no such layer");
  const LayerKind kind = info.layer_kinds[part.layer];
  const std::int64_t d = info.head_dim;
  std::vector<std::int64_t> expected;
  if (part.kind == StatePartKind::LightningState) {
    if (kind != LayerKind::Lightning) throw Error(where + "a lightning state for a softmax layer");
    expected = {info.num_heads, d, d};
  } else if (part.kind == StatePartKind::SoftmaxKeys || part.kind == StatePartKind::SoftmaxValues) {
    if (kind != LayerKind::Softmax) throw Error(where + "softmax keys/values for a lightning layer");
    if (part.first_token < 0 || part.token_count <= 0 || part.first_token + part.token_count > im.position)
      throw Error(where + "positions " + std::to_string(part.first_token) + "+" + std::to_string(part.token_count) +
                  " fall outside 0.." + std::to_string(im.position));
    expected = {info.num_kv_heads, part.token_count, d};
  } else {
    throw Error(where + "unknown part kind " + std::to_string(static_cast<int>(part.kind)));
  }
  std::int64_t numel = 1;
  for (auto v : expected) numel *= v;
  if (part.kind == StatePartKind::LightningState && part.dtype != StateDType::F32)
    throw Error(where + "a lightning state must be f32, not " + state_dtype_name(part.dtype));
  if (part.dtype != StateDType::F32 && part.dtype != StateDType::BF16)
    throw Error(where + "unknown element type " + std::to_string(static_cast<int>(part.dtype)));
  if (part.shape != expected || static_cast<std::int64_t>(part.data.size()) != numel * state_dtype_bytes(part.dtype))
    throw Error(where + "shape or size does not match this model");
  if (!all_finite(part)) throw Error(where + "holds a non-finite value (damaged state)");
  if (part.kind == StatePartKind::LightningState) {
    s.backend->write_lightning_state(*im.sequence, part.layer, as_elements<float>(part.data).data());
    im.lightning_done[part.layer] = true;
    return;
  }
  const KvSide side = part.kind == StatePartKind::SoftmaxKeys ? KvSide::Keys : KvSide::Values;
  const StateDType cache_dtype = s.backend->kv_dtype();
  if (part.dtype == cache_dtype) {
    s.backend->write_kv(*im.sequence, part.layer, side, part.first_token, part.token_count, part.data.data());
  } else {
    // The other type, converted here: bf16 to f32 is exact; f32 to bf16 rounds as the GPU would.
    std::vector<std::byte> converted(static_cast<std::size_t>(numel * state_dtype_bytes(cache_dtype)));
    if (cache_dtype == StateDType::F32) {
      const auto in = as_elements<std::uint16_t>(part.data);
      std::transform(in.begin(), in.end(), reinterpret_cast<float*>(converted.data()), bf16_to_f32);
    } else {
      const auto in = as_elements<float>(part.data);
      std::transform(in.begin(), in.end(), reinterpret_cast<std::uint16_t*>(converted.data()), f32_to_bf16);
    }
    s.backend->write_kv(*im.sequence, part.layer, side, part.first_token, part.token_count, converted.data());
  }
  im.covered[part.kind == StatePartKind::SoftmaxKeys ? 0 : 1][part.layer].emplace_back(
      part.first_token, part.first_token + part.token_count);
}

void Session::Import::commit(std::span<const TokenId> tokens) {
  Impl& im = *impl_;
  Session::Impl& s = *im.session->impl_;
  const ModelInfo& info = *s.info;
  if (static_cast<std::int64_t>(tokens.size()) != im.position)
    throw Error("state import: " + std::to_string(tokens.size()) + " token ids for a state of " +
                std::to_string(im.position) + " positions");
  s.check_tokens(tokens);
  for (int l = 0; l < info.num_layers; ++l) {
    if (info.layer_kinds[l] == LayerKind::Lightning) {
      if (!im.lightning_done[l]) throw Error("state import: lightning state of layer " + std::to_string(l) + " missing");
      continue;
    }
    for (int side = 0; side < 2; ++side) {
      auto ranges = im.covered[side][l];
      std::sort(ranges.begin(), ranges.end());
      std::int64_t reached = 0;
      for (const auto& [begin, end] : ranges) {
        if (begin > reached) break;
        reached = std::max(reached, end);
      }
      if (reached < im.position)
        throw Error(std::string("state import: softmax ") + (side == 0 ? "keys" : "values") + " of layer " +
                    std::to_string(l) + " missing from position " + std::to_string(reached));
    }
  }
  s.sequence = std::move(im.sequence);
  s.tokens.assign(tokens.begin(), tokens.end());
  s.logits.clear();
  s.logits_rows = 0;
}

}  // namespace lightdesk
