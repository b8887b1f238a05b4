// Lightdesk engine: the whole public API that the application, the command-line front ends and
// the tests use. Everything else under engine/ is private.
//
// A Model is a loaded checkpoint directory (config.json + safetensors) bound to one compute
// backend. A Session is one sequence being processed by that model: it owns the model state
// (per lightning layer a float32 [heads, head_dim, head_dim] state, per softmax layer the K and V
// of every position) and the logits of the last tokens fed. Sessions of one model are
// independent; a Session must not be used from two threads at once.
//
// Errors are reported by throwing lightdesk::Error (or its subclass Cancelled); the message
// names the cause (file, tensor, field). An operation that throws leaves a Session as it was
// before the call, except that a cancelled or failed feed keeps the tokens fully processed
// before the failure (position() says how many).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "lightdesk/error.h"
#include "lightdesk/safetensors_write.h"

namespace lightdesk {

using TokenId = std::int32_t;


enum class BackendKind { Auto, Cpu, Cuda };

// "cpu", "cuda" or "auto"; throws Error on anything else.
BackendKind parse_backend_kind(const std::string& name);
const char* backend_name(BackendKind kind);
// Backends compiled into this build and usable on this machine (Cpu always).
std::vector<BackendKind> available_backends();
// The backend `requested` stands for here: Auto is CUDA where a device is usable, else the CPU.
// Throws, naming the cause, when the requested one is not available.
BackendKind resolve_backend(BackendKind requested);
// Why the CUDA backend cannot run here (its plugin missing or unusable, no GPU); empty where it can.
std::string cuda_backend_unavailable_reason();

// A CUDA device and its memory, for showing what a model needs against what each GPU has.
struct GpuDevice {
  int index = 0;
  std::string name;
  std::uint64_t total_bytes = 0;
  // Free now; known only for the current device (the one the engine runs on): measuring another
  // would create a CUDA context there, which itself takes hundreds of MB of it.
  std::optional<std::uint64_t> free_bytes;
};
// The CUDA devices this process can use; empty without CUDA support or without a device.
std::vector<GpuDevice> gpu_devices();

// "0,1" (GPU indices, each once) or "all" (every device of gpu_devices()); throws Error naming
// the fault of anything else, or of "all" on a machine without a GPU.
std::vector<int> parse_devices(const std::string& text);

// How a tensor-parallel run splits each MoE layer: whole experts per rank (as even as possible:
// 8 experts on 3 ranks are 3/3/2), or every expert's intermediate width (N must divide it).
enum class MoeParallel { Expert, Tensor };
// "expert" or "tensor"; throws Error on anything else.
MoeParallel parse_moe_parallel(const std::string& name);
const char* moe_parallel_name(MoeParallel mode);

// How the experts' matrices are kept (ModelOptions::expert_dtype, the memory planner): as the
// checkpoint's values (bf16 on a GPU, float32 on the CPU backend), or quantized to int8 (a scale
// per row) or int4 (a scale and offset per 128 inputs); see core's expert_quant.h.
enum class ExpertFormat { Bf16, Int8, Int4 };
const char* expert_format_name(ExpertFormat format);  // "bf16", "int8", "int4"
// "bf16", "int8" or "int4"; throws Error on anything else.
ExpertFormat parse_expert_format(const std::string& name);
// Which experts a model holds: all of them, or per layer the ones a task pattern keeps (PreMoe's
// pruned mode; lightdesk/expert_patterns.h makes the sets). A pruned expert is not loaded, and
// the router masks it to -inf before its softmax, which is slicing the router's rows: the
// renormalised top-k weights are those of the kept experts alone.
struct ExpertSelection {
  // Per layer the kept expert ids (at least experts_per_token, each at most once); empty: all.
  std::vector<std::vector<int>> kept{};
  // The pattern the sets come from (its task name), recorded with saved states.
  std::string pattern{};

  bool pruned() const { return !kept.empty(); }
  // Experts kept per layer (0: all).
  int experts_kept() const { return kept.empty() ? 0 : static_cast<int>(kept.front().size()); }
  // "all experts", or "4 experts per layer of pattern \"record\"": what a refused state names.
  std::string describe() const;
  bool operator==(const ExpertSelection&) const = default;
};

// What a model is opened for.
enum class ModelPurpose {
  // Sessions: every weight the options ask for.
  Sessions,
  // Only Model::first_layer_router_logits, the statistic that matches a query to an expert
  // pattern before the experts to load are chosen (lightdesk/expert_patterns.h). The load reads
  // the embedding and the first layer without its experts, nothing else: no other layer, no LM
  // head, no expert whatever expert_dtype, expert_cache and experts say (they are ignored). It
  // runs at any tensor_parallel on either backend; create_session refuses such a model.
  FirstLayerRouter,
};

struct ModelOptions {
  BackendKind backend = BackendKind::Auto;
  // Worker threads for the CPU backend; 0 = all hardware threads.
  int threads = 0;
  // Rotate the whole head in softmax layers whatever rotary_dim says, as native transformers
  // <= 5.17 does (a bug there; the released models were trained with partial RoPE).
  bool rope_full_head = false;
  // CUDA backend: keep weights and activations in float32 instead of bf16 (twice the memory,
  // slower; for checking the GPU path against the CPU reference).
  bool cuda_float32 = false;
  // CUDA backend: run each one-token step (decode) as a CUDA graph, one launch on the GPU; off
  // to compare with plain launches.
  bool cuda_graphs = true;
  // Random weights from this seed instead of the checkpoint's: only config.json is read. They
  // are made where the backend keeps them (on the GPU by the device's generator), at the
  // config's real shapes, so real widths can be measured without the weights (see
  // synthetic_fill in engine/src/model_weights.h for the distributions). The same seed gives the
  // same weights on every backend.
  std::optional<std::uint64_t> synthetic_weights = std::nullopt;
  // The GPUs the model runs on, by their index in gpu_devices() (parse_devices reads "0,1" or
  // "all"); empty: GPU 0. Each gets a context of its own. The CUDA backend runs a model on one
  // of them, or with tensor_parallel N on N of them (one rank each; empty: GPUs 0.. N - 1). The
  // CPU backend ignores them.
  std::vector<int> devices{};
  // Ranks the model is split over (tensor parallel, one per device; on the CPU backend simulated
  // ranks on threads of their own): query heads, key/value heads (split, or replicated when the
  // ranks outnumber them), the experts as moe_parallel says, and the vocabulary rows of the
  // embedding and LM head. See tensor_parallel_layout.
  int tensor_parallel = 1;
  MoeParallel moe_parallel = MoeParallel::Expert;
  // The experts' format. int8 and int4 are quantized while the weights load, or read from
  // `expert_cache`.
  ExpertFormat expert_dtype = ExpertFormat::Bf16;
  // A folder to keep the quantized experts in (a front end gives the data directory's
  // cache/<fingerprint>): the first load writes them there, later loads read them instead of
  // quantizing (about a half or a quarter of the bytes). A file that is stale (another model
  // or format) or damaged is rebuilt, never used. Empty: quantize at every load.
  std::filesystem::path expert_cache{};
  // All experts, or a pruned set (see ExpertSelection). Not with tensor_parallel > 1 yet.
  ExpertSelection experts{};
  ModelPurpose purpose = ModelPurpose::Sessions;
  // Exact mode (docs/expert-offload.md): every expert in a host store in expert_dtype, and per
  // layer a cache of `cached_experts_per_layer` of them on the backend (at least the
  // experts_per_token a token routes to, at most every expert); a chosen expert that is not
  // cached is copied in before it computes, so the logits are those of every expert resident in
  // the same format. Model::seed_expert_cache fills the caches from a task pattern. With all
  // experts and one rank; only backends whose engine_capabilities say host_expert_store run it.
  bool host_expert_store = false;
  int cached_experts_per_layer = 0;
};

// The one GPU a single-device backend (the CUDA backend, the vision tower) runs on for these
// options: the one named (the first, rank 0's, of a tensor-parallel run's), or 0 when none is.
// Throws Error naming the cause for several devices without as many tensor-parallel ranks, or
// an index with no device behind it.
int single_gpu_device(const ModelOptions& options);

enum class LayerKind { Lightning, Softmax };

// The model families the engine runs, told apart once, by config.json's model_type; the rest of
// the program asks the family, never the string.
enum class ModelFamily {
  MiniMaxText01,  // "minimax_text_01" (the released remote-code checkpoint)
  MiniMaxM1,      // "minimax_m1": Text-01's architecture, its own chat template
  MiniMaxNative,  // "minimax": transformers' MiniMaxForCausalLM (Text-01's -hf checkpoint)
  MiniMaxVL01,    // "minimax_vl_01": a Text-01 language model behind a vision tower
};
// The family of a model_type, or nullopt for one the engine does not run.
std::optional<ModelFamily> parse_model_family(std::string_view model_type);
// The model_type config.json gives the family.
const char* model_type_name(ModelFamily family);
// The model_types the engine runs, for error messages ("minimax_text_01, minimax_m1, ...").
std::string supported_model_types();

// The model's architecture as its config.json describes it.
struct ModelShape {
  ModelFamily family = ModelFamily::MiniMaxText01;
  std::string model_type;    // as config.json names it
  std::string architecture;  // first entry of "architectures"
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  std::vector<LayerKind> layer_kinds;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;  // rotated dims per softmax head actually used (0 = no RoPE)
  int num_experts = 0;
  int experts_per_token = 0;
  int expert_width = 0;  // intermediate_size
  std::int64_t max_context = 0;
  std::optional<TokenId> eos_token_id;

  int num_lightning_layers() const;
  int num_softmax_layers() const;
};

struct ModelInfo : ModelShape {
  std::filesystem::path directory;
  BackendKind backend = BackendKind::Cpu;

  std::uint64_t parameter_count = 0;
  // Bytes of the language model's tensors by their dtype on disk ("F32", "BF16", "F16"); empty
  // with synthetic weights.
  std::map<std::string, std::uint64_t> bytes_per_dtype;
  // Bytes on disk of the checkpoint's other tensors: MiniMax-VL-01's vision tower, projector
  // and image newline (loaded beside the language model by the vision library).
  std::uint64_t other_weight_bytes = 0;
  // False when inspect found only config.json and model.safetensors.index.json (the shards not
  // downloaded yet): names and shapes were checked against the index, dtypes inferred from its
  // total size (see Model::inspect), and the fingerprint is empty.
  bool weights_present = true;
  // Bytes the loaded weights occupy on the backend.
  std::uint64_t weight_bytes = 0;
  // A session's fixed part: all lightning states (float32).
  std::uint64_t lightning_state_bytes = 0;
  // A session's growing part: softmax K and V of one position, all softmax layers, in the
  // backend's cache dtype (float32 on the CPU, bf16 on CUDA unless cuda_float32).
  std::uint64_t kv_bytes_per_token = 0;
  // Hex digest of config.json and the safetensors headers: identifies the model a saved
  // session state belongs to without reading the weights.
  std::string fingerprint;
  // The experts' format the model computes with: a saved state holds its results, so it belongs
  // to the fingerprint and this format together.
  ExpertFormat expert_format = ExpertFormat::Bf16;
  // Quantized experts: bytes read from the quantized cache (0 when they were quantized from the
  // checkpoint at this load), and the cache file (empty without one).
  std::uint64_t expert_cache_bytes_read = 0;
  std::filesystem::path expert_cache_file;
  // The experts the model was opened with (ModelOptions::experts): a state computed with one
  // selection is not the state of another.
  ExpertSelection experts;
  ModelPurpose purpose = ModelPurpose::Sessions;  // ModelOptions::purpose
  // Exact mode (ModelOptions::host_expert_store): the cache per layer, and the host store's
  // bytes (weight_bytes counts the caches). Its results are those of every expert resident in
  // the same format, so its states are theirs: state_identity() leaves the mode out, and a
  // state saved in one mode restores in the other.
  int cached_experts_per_layer = 0;  // 0: every expert resident
  std::uint64_t expert_store_bytes = 0;

  // State memory of one session holding `tokens` positions.
  std::uint64_t session_bytes(std::int64_t tokens) const;
  // What a saved session state belongs to: the fingerprint, and with quantized experts their
  // format ("<fingerprint>/int8"). A state computed with other experts' values is another
  // model's: refused, and recomputed from its tokens.
  std::string state_identity() const;
};

// Sampling: temperature <= 0 means greedy (the lowest id among equal maxima). Otherwise the
// logits are divided by temperature, cut to the top_k best (0 = all), then to the smallest set
// whose probability reaches top_p (1 = all), and a token is drawn with the session's generator,
// which set_seed() restarts.
struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
};

struct FeedProgress {
  std::int64_t tokens_done = 0;   // of this feed call
  std::int64_t tokens_total = 0;  // of this feed call
  double seconds = 0.0;           // since the call began
};

struct FeedOptions {
  // Tokens per forward pass; a long feed is cut into chunks of this size. Any size gives the
  // same result as one pass (up to float rounding). 0: the backend's own size (512 on the CPU,
  // 8192 on a GPU), and at most 512 with all_logits (every row's logits sit on the backend).
  std::int64_t chunk_tokens = 0;
  // Keep the logits of every fed token, not just the last one.
  bool all_logits = false;
  // Called after each chunk; return false to cancel (the feed then throws Cancelled, keeping
  // the chunks already processed).
  std::function<bool(const FeedProgress&)> progress;
  // Debugging and reference checks: called with the hidden states of each chunk, rows x
  // hidden_size row-major. index 0 is the embedding output, i (1..num_layers) the output of
  // layer i-1, num_layers+1 the final normed state that goes into the LM head.
  std::function<void(int index, std::span<const float> hidden, std::int64_t rows)> hidden_states;
  // Multimodal input (image features in place of "<image>" placeholders): empty, or one entry
  // per fed token, each either nullptr (the token's own embedding row) or hidden_size floats
  // that replace that row. The pointed-to rows must stay valid during the call.
  std::span<const float* const> embedding_overrides;
  // Called per layer with the router's float32 logits [rows, experts] of each chunk (before a
  // pruned model's mask): router statistics (lightdesk/expert_patterns.h). Unset costs nothing.
  std::function<void(int layer, std::span<const float> logits, std::int64_t rows)> router_logits;
};

// Where a model's routing went: per token and layer the router's probability mass (softmax over
// every expert, before any mask) that fell on experts not resident: in the pruned mode those it
// does not hold (mass lost), in exact mode those not cached when the layer's step began (misses,
// copied in; nothing is lost).
struct RoutingTally {
  std::int64_t token_layers = 0;  // tokens × layers routed
  double lost_mass = 0.0;         // summed over them
  // The mean share of the mass lost (0 with nothing routed).
  double lost_share() const { return token_layers > 0 ? lost_mass / static_cast<double>(token_layers) : 0.0; }
  // What was routed after `earlier` (a tally of the same session): one turn's.
  RoutingTally since(const RoutingTally& earlier) const {
    return {token_layers - earlier.token_layers, lost_mass - earlier.lost_mass};
  }
};

// One piece of an exported session state. A state is a stream of parts: first one
// LightningState part per lightning layer, then for each softmax layer its SoftmaxKeys and
// SoftmaxValues for consecutive ranges of positions. Every part carries the position the state
// belongs to (the number of tokens the session had consumed), the layout version and its
// element type, so parts can be stored separately and checked when they come back.
enum class StatePartKind : std::uint8_t { LightningState = 1, SoftmaxKeys = 2, SoftmaxValues = 3 };

// Element types of state parts: lightning states are always F32; softmax K/V come in the
// backend's cache type (BF16 on CUDA, F32 on the CPU). An import takes either and converts.
enum class StateDType : std::uint8_t { F32 = 1, BF16 = 2 };
const char* state_dtype_name(StateDType dtype);  // "f32", "bf16"
std::optional<StateDType> parse_state_dtype(std::string_view name);
std::int64_t state_dtype_bytes(StateDType dtype);

struct StatePart {
  // Version 2 parts carry their dtype. Version 1 (float32 throughout) is read as version 2 F32.
  static constexpr std::uint32_t kLayoutVersion = 2;
  std::uint32_t layout_version = kLayoutVersion;
  StatePartKind kind = StatePartKind::LightningState;
  int layer = 0;               // model layer index
  std::int64_t position = 0;   // tokens consumed by the session this state belongs to
  std::int64_t first_token = 0;  // softmax parts: first position covered
  std::int64_t token_count = 0;  // softmax parts: positions covered
  StateDType dtype = StateDType::F32;
  // LightningState: [heads, head_dim (key), head_dim (value)].
  // SoftmaxKeys / SoftmaxValues: [kv_heads, token_count, head_dim]; keys after RoPE.
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;  // the shape's elements in `dtype`, row-major

  std::int64_t numel() const;
  std::int64_t bytes() const { return numel() * state_dtype_bytes(dtype); }
  // The data of an F32 part as floats; throws Error for another dtype.
  std::span<const float> f32() const;
};

// The parts, in export order and without data, of the state of a model of `shape` after
// `position` tokens, with softmax ranges of at most `kv_chunk_tokens` positions from `kv_first`
// on and K/V in `kv_dtype`: what Session::export_state streams, for code that stores or
// synthesises states.
std::vector<StatePart> state_layout(const ModelShape& shape, std::int64_t position,
                                    std::int64_t kv_chunk_tokens = 4096, std::int64_t kv_first = 0,
                                    StateDType kv_dtype = StateDType::F32);

class Model;

class Session {
 public:
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model& model() const;
  // Tokens consumed so far (the next token's position).
  std::int64_t position() const;
  // The consumed tokens, in order.
  const std::vector<TokenId>& tokens() const;

  // Runs the model over `tokens`, continuing from the current state.
  void feed(std::span<const TokenId> tokens, const FeedOptions& options = {});
  // Logits of the last feed: all fed tokens' rows if FeedOptions::all_logits, else one row.
  // Row-major [logits_rows(), vocab_size]. The one row is copied from the backend's device on
  // the first call after a feed (sample() does not need it).
  std::span<const float> logits() const;
  std::int64_t logits_rows() const;

  // Draws the next token from the last row of logits(), where the backend keeps them (on the
  // GPU for CUDA: only the id comes back). A seed gives the same tokens again on the same
  // backend; the CPU and CUDA backends draw with different random numbers.
  TokenId sample(const SamplingParams& params);
  void set_seed(std::uint64_t seed);

  // A pruned or exact-mode model's routing over every token fed since the session was created
  // (reset() and an import keep it): a caller takes the difference across a turn. Zero with
  // every expert resident.
  RoutingTally routing_tally() const;

  // Forgets every token.
  void reset();

  // The element type of the softmax K/V parts export_state streams (the backend's cache type).
  StateDType kv_dtype() const;
  // Streams the state to `sink` in parts of at most `kv_chunk_tokens` positions per softmax
  // part. The spans are valid only during the call. Softmax parts start at position `kv_first`:
  // whoever already keeps the K/V of the earlier positions (a store continuing a checkpoint)
  // reads only the new ones, which for a long session is nearly all of the state's bytes.
  void export_state(const std::function<void(const StatePart&)>& sink, std::int64_t kv_chunk_tokens = 4096,
                    std::int64_t kv_first = 0) const;

  // Replaces the state with one fed back part by part. Parts may come in any order; commit
  // checks that every layer and position is covered, then swaps the new state in. On any
  // error the session keeps its previous state.
  class Import {
   public:
    ~Import();
    Import(Import&&) noexcept;
    void add(const StatePart& part);
    // `tokens` are the ids the state covers (their count must equal the parts' position).
    void commit(std::span<const TokenId> tokens);

   private:
    friend class Session;
    struct Impl;
    explicit Import(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
  };
  Import begin_import(std::int64_t position);

 private:
  friend class Model;
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Model {
 public:
  // Reads and validates config.json and the safetensors files of `directory`, and loads the
  // weights onto the chosen backend. `progress`, if given, is called with (bytes loaded, total)
  // and returns false to stop: open then throws Cancelled, and nothing stays loaded. Under
  // tensor parallel the ranks load at once: it is called from their threads, one call at a time.
  static std::unique_ptr<Model> open(
      const std::filesystem::path& directory, const ModelOptions& options = {},
      const std::function<bool(std::uint64_t, std::uint64_t)>& progress = {});

  // Reads and validates the directory (config and tensor headers) without loading weights:
  // what the model needs before committing memory to it. Without the shards, config.json and
  // model.safetensors.index.json suffice: every tensor name the config asks for must be in the
  // index (and no other under the language model's prefix); shapes follow from the config; the
  // dtypes are the config's torch_dtype, with the routers in F32 where the index's total size
  // says so (the released MiniMax checkpoints store them so); what the total size holds beyond
  // the language model is other_weight_bytes.
  static ModelInfo inspect(const std::filesystem::path& directory, const ModelOptions& options = {});

  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelInfo& info() const;
  // Throws Error for a model opened for ModelPurpose::FirstLayerRouter.
  std::unique_ptr<Session> create_session() const;
  // The first layer's router logits, float32 [tokens, experts], from the embedding and that
  // layer's attention alone (the rest of the model does not run): TAER's query statistic. Needs
  // no session; the tokens must fit the context. Any model computes it; one opened for
  // ModelPurpose::FirstLayerRouter loads only what it needs.
  std::vector<float> first_layer_router_logits(std::span<const TokenId> tokens) const;
  // Exact mode: puts each layer's experts of `experts` (a pattern's keep(cached_experts_per_layer))
  // in its cache, evicting the least recently used others. Changes only what is cached, never a
  // result: a later turn matching another pattern re-seeds. Throws Error without a host store.
  void seed_expert_cache(const ExpertSelection& experts);

  struct Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// Memory planning: where a model's weights, session state and workspace would go on a set of
// GPUs, this machine's or hypothetical ones, and what would fit when nothing does. One policy
// for every front end (CLI, desktop app, server); it needs only Model::inspect's ModelInfo.

// A device to plan for: a GPU, real or hypothetical, or host memory for the CPU backend.
struct PlanDevice {
  std::string name;  // "GPU 0 (NVIDIA H100 80GB HBM3)", "80 GiB" for a hypothetical GPU, "host memory"
  std::uint64_t memory_bytes = 0;
  // The GPU's index in gpu_devices() (local_gpus sets it); -1 for a hypothetical GPU or host memory.
  int gpu = -1;
};
// "4x80GB", "8x141GB", "2x24GB,1x48GB", "80GB" (sizes in GB or GiB, both read as GiB: a GPU
// sold as "80GB" has 80 GiB, of which it reports 79.6). Throws Error naming a malformed entry.
std::vector<PlanDevice> parse_gpu_list(const std::string& text);
// This machine's CUDA devices (gpu_devices) as plan targets, by their total memory.
std::vector<PlanDevice> local_gpus();


// One rank's share of a tensor-parallel layout of N ranks, one GPU each: what a TP-N run holds.
struct RankLayout {
  int rank = 0;
  int first_head = 0, heads = 0;        // query heads, and the lightning heads and their states
  int first_kv_head = 0, kv_heads = 0;  // softmax K/V heads: split, or one replicated on N / kv ranks
  int first_expert = 0, experts = 0;    // experts held (all of them under MoeParallel::Tensor)
  int first_expert_column = 0, expert_width = 0;  // the slice of each held expert's intermediate width
  std::int64_t first_vocab_row = 0, vocab_rows = 0;  // embedding and LM-head rows (the last rank may hold fewer)
};
// Throws Error naming the count that does not divide: the query heads by N, the K/V heads by N or
// N by them, the expert width by N under MoeParallel::Tensor; or N below 1 or above the vocabulary.
std::vector<RankLayout> tensor_parallel_layout(const ModelShape& shape, int ranks, MoeParallel moe);

// What this build's backend can run. The planner plans every candidate, so a front end can say
// what would fit once a format lands, but chooses only among these.
struct EngineCapabilities {
  bool tensor_parallel = false;  // one model over several GPUs
  bool int8_experts = false;
  bool int4_experts = false;
  bool host_expert_store = false;
  bool pruned_experts = false;
};
// The host expert store: the CPU backend (its reference); CUDA not yet.
EngineCapabilities engine_capabilities(BackendKind backend = BackendKind::Cuda);

// One entry of the planning policy.
struct PlanCandidate {
  ExpertFormat experts = ExpertFormat::Bf16;
  // Every expert in host memory; each GPU keeps the rest of its share and a cache of experts
  // per layer (at least the top-k a token needs, then as many as memory allows).
  bool host_expert_store = false;
  int experts_kept = 0;  // pruned: the experts kept per layer (0: all of them)
};
// The policy, in order: the exact choices first (bf16 weights on the GPUs; then int8, then int4
// experts; then the host-memory expert store in the same three formats); pruned experts
// (`experts_kept` per layer, bf16 / int8 / int4) only when the user asks for them (kept > 0).
std::vector<PlanCandidate> plan_candidates(int experts_kept = 0);
std::string describe_candidate(const PlanCandidate& candidate);

struct PlanRequest {
  // The GPUs (any number) for the CUDA backend; for the CPU backend one device, host memory.
  std::vector<PlanDevice> devices;
  BackendKind backend = BackendKind::Cuda;
  bool cuda_float32 = false;  // ModelOptions::cuda_float32: float32 weights, K/V and activations
  std::int64_t context_tokens = 0;  // the session's context
  std::uint64_t host_memory_bytes = 0;  // for the host expert store (0: no store)
  int experts_kept = 0;                 // > 0: the user asks for pruned experts
  MoeParallel moe = MoeParallel::Expert;
  // > 0: plan at this degree only (ModelOptions::tensor_parallel), over that many of the devices;
  // for the CPU backend that many simulated ranks, each given an equal share of the one device.
  int tensor_parallel = 0;
  std::int64_t chunk_tokens = 0;  // prefill tokens per pass, sizing the activations (0: the backend's)
  // What the request's backend runs: engine_capabilities(backend).
  EngineCapabilities capabilities = engine_capabilities();
};

// One device's part of a plan. Values as the backend keeps them: the CUDA backend bf16 weights,
// K/V and activations (float32 with cuda_float32), the CPU backend float32; norms, routers,
// slopes and lightning states float32 everywhere.
struct RankMemory {
  RankLayout layout;
  PlanDevice device;
  // Everything but the experts: attention, embedding and LM-head rows, norms and routers
  // (float32), and on rank 0 a VL-01 checkpoint's vision tower.
  std::uint64_t weight_bytes = 0;
  std::uint64_t expert_bytes = 0;     // experts on this GPU (the cache, with a host store)
  int cached_experts_per_layer = 0;   // host store: experts per layer the cache holds
  std::uint64_t lightning_state_bytes = 0;
  std::uint64_t kv_bytes_per_token = 0;
  std::uint64_t kv_bytes = 0;         // for the request's context
  // A prefill chunk's activations and expert buffers, the logits, and on a GPU the runtime's
  // own reserve (CUDA context, library workspaces, allocator slack).
  std::uint64_t workspace_bytes = 0;
  std::uint64_t total_bytes() const;
  bool fits() const { return total_bytes() <= device.memory_bytes; }
};

struct MemoryPlan {
  PlanCandidate candidate;
  int tensor_parallel = 1;
  MoeParallel moe = MoeParallel::Expert;
  std::vector<RankMemory> ranks;  // the devices used (the largest of the request's), rank order
  std::uint64_t host_bytes = 0;   // host memory held: the expert store
  bool fits = false;              // every rank fits, and the host holds the store
  bool runnable = false;          // this build runs it (PlanRequest::capabilities)
  BackendKind backend = BackendKind::Cuda;  // Cpu: the one device is host memory
  bool float32_values = false;    // weights and K/V in float32 (the CPU backend, cuda_float32)
  std::string summary() const;    // "bf16 weights, tensor parallel over 8 GPUs", "float32 weights in host memory"
};

struct PlanReport {
  std::int64_t context_tokens = 0;
  // One plan per candidate, in policy order (the host-store ones only when the request gives
  // host memory), each at the tensor-parallel degree chosen for it: the largest that fits and
  // runs, else the largest that fits, else the largest possible.
  std::vector<MemoryPlan> plans;
  std::optional<std::size_t> chosen;  // the first plan that fits and runs
  // When none is chosen: what would fit (a format to come, more GPUs for each format on the
  // GPUs that does not fit, a shorter context for the first that fits at some).
  std::vector<std::string> advice;
};
PlanReport plan_memory(const ModelInfo& info, const PlanRequest& request);
// The longest context, up to request.context_tokens, at which plan_memory chooses a plan (0:
// none at any context).
std::int64_t longest_fitting_context(const ModelInfo& info, const PlanRequest& request);

// The request for running `info` as `options` ask on this machine at `context_tokens`: for the
// CUDA backend its GPUs (local_gpus; those of options.devices when named), for the CPU backend
// its physical memory as one device; options.tensor_parallel > 1 fixes the degree, a pruned
// options.experts asks for the pruned candidates of its size, and the host memory is offered to
// the host expert store.
PlanRequest local_plan_request(const ModelInfo& info, const ModelOptions& options, std::int64_t context_tokens);
// The plan plan_memory chooses for local_plan_request (with a pruned options.experts, the first
// pruned plan that fits and runs: the user asked for that mode); throws Error with the planner's
// advice when none fits.
MemoryPlan choose_local_plan(const ModelInfo& info, const ModelOptions& options, std::int64_t context_tokens);

struct ExpertPattern;  // lightdesk/expert_patterns.h

// The load options of a plan (the chosen one of a PlanReport, or another of its plans that the
// user picked), over `base`, which keeps the front end's other choices (threads, the quantized
// experts' cache): the plan's backend, expert format, tensor-parallel degree and MoE split, the
// GPUs its ranks are on (when they are this machine's: PlanDevice::gpu), and the experts held:
// all of them, or a pruned plan's experts_kept per layer, which are base.experts when it keeps
// that many (a pruned conversation keeps its experts), else `pattern`'s best. The one mapping
// every front end (CLI, desktop app, server) loads a plan with. Throws Error naming the cause for
// a plan this build does not run, or a pruned one with neither a selection of its size nor a
// pattern.
ModelOptions apply_plan(const MemoryPlan& plan, ModelOptions base, const ExpertPattern* pattern = nullptr);

// What a front end's "the memory planner's choice" (--expert-dtype auto) loads: the model in
// `directory` inspected as `options` ask, planned on this machine at its full context
// (choose_local_plan), and the options of that plan (apply_plan).
struct LocalLoad {
  ModelOptions options;
  MemoryPlan plan;
};
LocalLoad plan_local_load(const std::filesystem::path& directory, const ModelOptions& options);

}  // namespace lightdesk
